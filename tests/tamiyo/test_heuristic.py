"""Tamiyo: plateau tracking, blueprint rotation, and the heuristic's decisions."""

from __future__ import annotations

import pytest
from conftest import epoch_signals, seed_report, stage_move

from esper.leyline import (
    ActionKind,
    EpochSignals,
    FossilReport,
    SeedReport,
    SeedStage,
    StageTransition,
)
from esper.tamiyo import (
    BlueprintRotation,
    HeuristicConfig,
    HeuristicController,
    SignalTracker,
    TrackerConfig,
)


def _signals(epoch: int, acc: float, loss: float = 0.1, slots=None, total: int = 40, moves=()) -> EpochSignals:
    return epoch_signals(epoch, total_epochs=total, train_loss=loss, train_accuracy=acc, val_loss=loss, val_accuracy=acc,
                         host_params=1000, slots=slots if slots is not None else {"a": None, "b": None},
                         transitions=list(moves))  # fmt: skip


def _move(to: SeedStage, seed_id: str = "a-seed1", frm: SeedStage = SeedStage.DORMANT, reason: str = "") -> StageTransition:
    return stage_move(to, frm=frm, seed_id=seed_id, reason=reason)


def _report(stage: SeedStage, contribution: float | None, seed_id: str = "a-seed1", blueprint: str = "norm") -> SeedReport:
    return seed_report(stage, seed_id=seed_id, blueprint_id=blueprint, epochs_total=5, contribution=contribution)


def test_tracker_detects_plateau_after_patience() -> None:
    tracker = SignalTracker(TrackerConfig(plateau_patience=2, min_delta=0.01, warmup_epochs=1))
    for epoch, acc in enumerate([0.5, 0.7, 0.705, 0.7]):
        tracker.update(_signals(epoch, acc))
    assert tracker.on_plateau and tracker.plateau_count == 1
    tracker.update(_signals(4, 0.8))
    assert not tracker.on_plateau


def test_rotation_cycles_and_penalises_culled_blueprints() -> None:
    rotation = BlueprintRotation(["a", "b", "c"], cull_penalty=2)
    assert [rotation.select_blueprint() for _ in range(3)] == ["a", "b", "c"]
    rotation.record_outcome("a", success=False, reward=-0.1)
    assert rotation.select_blueprint() == "b"  # "a" sits out
    assert rotation.select_blueprint() == "c"
    assert rotation.select_blueprint() == "a"  # penalty served
    with pytest.raises(ValueError, match="Known"):
        rotation.record_outcome("zzz", success=True, reward=0.0)


def _controller(**overrides) -> HeuristicController:
    tracker = TrackerConfig(plateau_patience=1, warmup_epochs=1, min_delta=0.01)
    return HeuristicController(BlueprintRotation(["norm", "attention"]), HeuristicConfig(tracker=tracker, **overrides))


def test_germinates_on_plateau_into_a_free_slot() -> None:
    controller = _controller(min_epochs_left=0)
    assert controller.decide(_signals(0, 0.5)) == []
    actions = controller.decide(_signals(1, 0.5))
    assert [(a.kind, a.slot_id, a.blueprint_id) for a in actions] == [(ActionKind.GERMINATE, "a", "norm")]


def test_no_germination_without_time_left() -> None:
    controller = _controller(min_epochs_left=10)
    controller.decide(_signals(30, 0.5))
    assert controller.decide(_signals(31, 0.5)) == []


def test_fossilizes_helpful_and_culls_harmful_seeds() -> None:
    controller = _controller(fossilize_above=0.01, cull_below=-0.01)
    good = controller.decide(_signals(5, 0.9, slots={"a": _report(SeedStage.PROBATIONARY, 0.05), "b": None}))
    assert any(a.kind == ActionKind.FOSSILIZE and a.slot_id == "a" for a in good)
    bad = controller.decide(
        _signals(6, 0.9, slots={"a": _report(SeedStage.BLENDING, -0.05, seed_id="a-seed2"), "b": None})
    )
    assert any(a.kind == ActionKind.CULL and a.slot_id == "a" for a in bad)


def test_one_action_per_epoch_most_urgent_first() -> None:
    # Slot a wants fossilizing, slot b culling, and the run is on a plateau with no free slot issue:
    # only the cull is issued now; the fossilization follows at the next epoch.
    controller = _controller(fossilize_above=0.01, cull_below=-0.01, min_epochs_left=0)
    slots = {
        "a": _report(SeedStage.PROBATIONARY, 0.05),
        "b": _report(SeedStage.BLENDING, -0.05, seed_id="b-seed1"),
    }
    first = controller.decide(_signals(5, 0.9, slots=slots))
    assert [(a.kind, a.slot_id) for a in first] == [(ActionKind.CULL, "b")]
    second = controller.decide(_signals(6, 0.9, slots={"a": slots["a"], "b": None}))
    assert [(a.kind, a.slot_id) for a in second] == [(ActionKind.FOSSILIZE, "a")]


class _ToldChooser(BlueprintRotation):
    """A rotation that also keeps every outcome it is told."""

    def __init__(self) -> None:
        super().__init__(["norm", "attention"])
        self.told: list[tuple[str, bool, float]] = []

    def record_outcome(self, blueprint: str, success: bool, reward: float) -> None:
        self.told.append((blueprint, success, reward))
        super().record_outcome(blueprint, success, reward)


def test_each_seed_outcome_reaches_the_chooser_once_from_the_lifecycle_moves() -> None:
    chooser = _ToldChooser()
    controller = HeuristicController(chooser, HeuristicConfig(rent_weight=0.0))
    controller.decide(_signals(1, 0.9, slots={"a": _report(SeedStage.TRAINING, None), "b": None}, moves=[_move(SeedStage.GERMINATED)]))
    controller.decide(_signals(2, 0.9, slots={"a": _report(SeedStage.PROBATIONARY, 0.03), "b": None}))
    # Fossilized: the seed joined slot a's stack and left its report at once.
    fossil = FossilReport("a-seed1", "norm", "a", params=10, counterfactual_contribution=0.03, epoch=2)
    moved = _signals(3, 0.9, moves=[_move(SeedStage.FOSSILIZED, frm=SeedStage.PROBATIONARY)])
    moved.fossils = {"a": [fossil], "b": []}
    controller.decide(moved)
    later = _signals(4, 0.9)
    later.fossils = moved.fossils
    controller.decide(later)  # still in the stack: told once
    assert chooser.told == [("norm", True, pytest.approx(100 * 0.03))]
    controller.decide(_signals(5, 0.9, slots={"a": None, "b": _report(SeedStage.TRAINING, None, "b-seed1")},
                               moves=[_move(SeedStage.GERMINATED, "b-seed1")]))  # fmt: skip
    culled = _move(SeedStage.CULLED, "b-seed1", SeedStage.TRAINING, reason="stalled")
    controller.decide(_signals(6, 0.9, slots={"a": None, "b": _report(SeedStage.CULLED, None, "b-seed1")}, moves=[culled]))
    assert chooser.told[1] == ("norm", False, 0.0) and chooser.penalty["norm"] > 0
    assert controller.ledger.undecided() == []


def test_a_seed_leaving_the_reports_without_a_move_is_not_judged() -> None:
    chooser = _ToldChooser()
    controller = HeuristicController(chooser)
    controller.decide(_signals(1, 0.9, slots={"a": _report(SeedStage.BLENDING, 0.0), "b": None}, moves=[_move(SeedStage.GERMINATED)]))
    controller.decide(_signals(2, 0.9))  # no CULLED move: nobody culled it (e.g. a rollback restored)
    assert chooser.told == [] and [s.seed_id for s in controller.ledger.undecided()] == ["a-seed1"]


def test_outcomes_reach_the_chooser_and_state_round_trips() -> None:
    controller = _controller()
    controller.decide(_signals(1, 0.9, slots={"a": _report(SeedStage.BLENDING, 0.0), "b": None}, moves=[_move(SeedStage.GERMINATED)]))
    controller.decide(_signals(2, 0.9, slots={"a": _report(SeedStage.EMBARGOED, None), "b": None},
                               moves=[_move(SeedStage.CULLED, frm=SeedStage.BLENDING), _move(SeedStage.EMBARGOED, frm=SeedStage.CULLED)]))  # fmt: skip
    assert controller.chooser.penalty["norm"] > 0  # culled -> penalised
    clone = _controller()
    clone.load_state_dict(controller.state_dict())
    assert clone.state_dict() == controller.state_dict()
