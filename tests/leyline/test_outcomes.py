"""The one outcome ledger: moves and their telemetry events count the same."""

from esper.leyline import SeedLedger, SeedStage, StageTransition, TelemetryEvent, TelemetryEventType

S = SeedStage


def _move(seed: str, to: SeedStage, frm: SeedStage = S.TRAINING, blueprint: str = "norm", slot: str = "a") -> StageTransition:
    return StageTransition(slot, seed, blueprint, frm, to, "", epoch=3)


MOVES = [
    _move("a-seed1", S.GERMINATED, S.DORMANT),
    _move("a-seed1", S.TRAINING, S.GERMINATED),  # not an outcome
    _move("b-seed1", S.GERMINATED, S.DORMANT, "lora", "b"),
    _move("a-seed1", S.FOSSILIZED, S.PROBATIONARY),
    _move("a-seed2", S.GERMINATED, S.DORMANT),
    _move("a-seed2", S.CULLED),
    _move("a-seed2", S.EMBARGOED, S.CULLED),  # the slot clearing: not an outcome
]


def test_moves_are_counted_in_total_per_blueprint_and_followed_to_each_seeds_fate() -> None:
    ledger = SeedLedger()
    decided = ledger.record_moves(MOVES)
    assert [(s.seed_id, s.fate) for s in decided] == [("a-seed1", "fossilized"), ("a-seed2", "culled")]
    assert ledger.totals == {"germinated": 3, "fossilized": 1, "culled": 1}
    assert ledger.by_blueprint == {"norm": {"germinated": 2, "fossilized": 1, "culled": 1},
                                   "lora": {"germinated": 1, "fossilized": 0, "culled": 0}}  # fmt: skip
    assert [s.seed_id for s in ledger.undecided()] == ["b-seed1"]


def test_the_events_of_the_moves_count_the_same_and_attribute_by_germination() -> None:
    events = {S.GERMINATED: TelemetryEventType.SEED_GERMINATED, S.FOSSILIZED: TelemetryEventType.SEED_FOSSILIZED,
              S.CULLED: TelemetryEventType.SEED_CULLED, S.TRAINING: TelemetryEventType.SEED_STAGE_CHANGED,
              S.EMBARGOED: TelemetryEventType.SEED_STAGE_CHANGED}  # fmt: skip
    from_events = SeedLedger()
    for m in MOVES:
        # A fate's event may lack the blueprint: the seed's germination names it.
        blueprint = m.blueprint_id if m.to_stage == S.GERMINATED else None
        from_events.record_event(TelemetryEvent(events[m.to_stage], epoch=m.epoch, slot_id=m.slot_id,
                                                seed_id=m.seed_id, blueprint_id=blueprint).to_dict())  # fmt: skip
    from_moves = SeedLedger()
    from_moves.record_moves(MOVES)
    assert from_events.state_dict() == from_moves.state_dict()


def test_a_fate_without_its_germination_counts_but_follows_no_seed() -> None:
    ledger = SeedLedger()
    assert ledger.record_moves([_move("x", S.CULLED)]) == []
    assert ledger.totals["culled"] == 1 and ledger.by_blueprint["norm"]["culled"] == 1
    assert ledger.record_event(TelemetryEvent(TelemetryEventType.SEED_CULLED, seed_id="y")) is None
    assert ledger.totals["culled"] == 2 and set(ledger.by_blueprint) == {"norm"}  # unattributable


def test_state_round_trips() -> None:
    ledger = SeedLedger()
    ledger.record_moves(MOVES[:3])
    restored = SeedLedger()
    restored.load_state_dict(ledger.state_dict())
    restored.record_moves(MOVES[3:])
    whole = SeedLedger()
    whole.record_moves(MOVES)
    assert restored.state_dict() == whole.state_dict()
