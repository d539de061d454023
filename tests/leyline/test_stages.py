"""Seed stages and the stage sets, checked against DESIGN.md's lifecycle text.

What a slot does with the table (refusing and performing real moves) is tested
in tests/kasmina/test_slot.py; here, the sets every other package reads must
agree with the transition table they are derived from or sit beside.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum

from esper.leyline import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    FAILURE_STAGES,
    GROWING_STAGES,
    MEASURED_STAGES,
    NEXT_STAGE,
    OUTCOME_STAGES,
    SEED_RUNS_STAGES,
    VALID_TRANSITIONS,
    GateLevel,
    GateResult,
    SeedStage,
)

S = SeedStage

# DESIGN.md: "UNKNOWN=0, DORMANT=1, GERMINATED=2, TRAINING=3, BLENDING=4, SHADOWING=5,
# PROBATIONARY=6, FOSSILIZED=7, CULLED=8, EMBARGOED=9, RESETTING=10."
EXPECTED_STAGES = {
    "UNKNOWN": 0,
    "DORMANT": 1,
    "GERMINATED": 2,
    "TRAINING": 3,
    "BLENDING": 4,
    "SHADOWING": 5,
    "PROBATIONARY": 6,
    "FOSSILIZED": 7,
    "CULLED": 8,
    "EMBARGOED": 9,
    "RESETTING": 10,
}


def test_seed_stage_names_and_values_are_exactly_the_design() -> None:
    assert issubclass(SeedStage, IntEnum)
    assert {s.name: s.value for s in SeedStage} == EXPECTED_STAGES
    assert [s.name for s in SeedStage] == list(EXPECTED_STAGES)  # declaration order too


def _walk(start: SeedStage, stop: SeedStage = S.FOSSILIZED) -> list[SeedStage]:
    """`start`, then NEXT_STAGE after NEXT_STAGE until `stop` (included) or a dead end."""
    path = [start]
    while path[-1] != stop and path[-1] in NEXT_STAGE and len(path) <= len(SeedStage):
        path.append(NEXT_STAGE[path[-1]])
    return path


def test_the_happy_path_derived_from_the_table_is_the_designs_forward_chain() -> None:
    # DESIGN.md: DORMANT -> GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY ->
    # FOSSILIZED (terminal); CULLED -> EMBARGOED -> RESETTING -> DORMANT.
    assert _walk(S.DORMANT) == [
        S.DORMANT, S.GERMINATED, S.TRAINING, S.BLENDING, S.SHADOWING, S.PROBATIONARY, S.FOSSILIZED
    ]  # fmt: skip
    assert _walk(S.CULLED, stop=S.DORMANT) == [S.CULLED, S.EMBARGOED, S.RESETTING, S.DORMANT]
    assert S.FOSSILIZED not in NEXT_STAGE and S.UNKNOWN not in NEXT_STAGE


def test_fossilized_and_unknown_have_no_way_out() -> None:
    assert VALID_TRANSITIONS[S.FOSSILIZED] == frozenset()
    assert VALID_TRANSITIONS[S.UNKNOWN] == frozenset()


def test_exactly_the_active_stages_can_be_culled() -> None:
    # DESIGN.md: "Any of GERMINATED..PROBATIONARY may go to CULLED".
    cullable = {s for s, targets in VALID_TRANSITIONS.items() if S.CULLED in targets}
    assert ACTIVE_STAGES == cullable == set(S) & set(range(S.GERMINATED, S.PROBATIONARY + 1))


def test_failure_stages_are_the_road_from_a_cull_back_to_dormant() -> None:
    assert FAILURE_STAGES == set(_walk(S.CULLED, stop=S.DORMANT)[:-1])


def test_the_outcomes_are_the_two_ways_a_seed_leaves_the_active_stages_for_good() -> None:
    # Leaving ACTIVE_STAGES: FOSSILIZED (a dead end) or CULLED (the road back to DORMANT).
    exits = {t for s in ACTIVE_STAGES for t in VALID_TRANSITIONS[s]} - ACTIVE_STAGES
    assert OUTCOME_STAGES == exits


def test_the_seed_runs_from_training_until_it_fails() -> None:
    reachable_after_training = set(_walk(S.TRAINING))
    assert SEED_RUNS_STAGES == reachable_after_training
    assert SEED_RUNS_STAGES.isdisjoint(FAILURE_STAGES | {S.DORMANT, S.GERMINATED})


def test_blended_measured_and_growing_stages_split_the_chain_at_blending() -> None:
    chain = _walk(S.GERMINATED)
    blending = chain.index(S.BLENDING)
    assert BLENDED_STAGES == set(chain[blending:])
    assert MEASURED_STAGES == set(chain[blending:-1])  # blended but not yet fossilized
    assert GROWING_STAGES == set(chain[: blending + 1])  # not yet at full alpha


def test_gate_levels_g0_to_g5() -> None:
    assert issubclass(GateLevel, IntEnum)
    assert [g.name for g in GateLevel] == ["G0", "G1", "G2", "G3", "G4", "G5"]
    assert sorted(GateLevel) == list(GateLevel)  # ordered G0 < G1 < ... < G5


def test_gate_result_fields() -> None:
    names = [f.name for f in dataclasses.fields(GateResult)]
    assert names[:6] == ["gate", "passed", "score", "checks_passed", "checks_failed", "message"]
    a = GateResult(gate=GateLevel.G2, passed=False)
    b = GateResult(gate=GateLevel.G2, passed=False)
    a.checks_failed.append("x")
    assert b.checks_failed == []  # no shared mutable default
    assert a.checks_passed == [] and a.message == "" and a.score == 0.0
