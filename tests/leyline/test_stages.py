"""Seed stages, the transition table and gate levels, checked against DESIGN.md's lifecycle text."""

from __future__ import annotations

import dataclasses
import itertools
from enum import IntEnum

import pytest

from esper.leyline import (
    GATE_FOR_STAGE,
    GateLevel,
    GateResult,
    SeedStage,
    can_germinate,
    is_active,
    is_failure,
    is_terminal,
    is_valid_transition,
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

# Written out by hand from the lifecycle text, not derived from the code:
#   forward chain DORMANT -> GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY
#   -> FOSSILIZED (terminal); any of GERMINATED..PROBATIONARY -> CULLED;
#   CULLED -> EMBARGOED -> RESETTING -> DORMANT; nothing else.
LEGAL = {
    (S.DORMANT, S.GERMINATED),
    (S.GERMINATED, S.TRAINING),
    (S.TRAINING, S.BLENDING),
    (S.BLENDING, S.SHADOWING),
    (S.SHADOWING, S.PROBATIONARY),
    (S.PROBATIONARY, S.FOSSILIZED),
    (S.GERMINATED, S.CULLED),
    (S.TRAINING, S.CULLED),
    (S.BLENDING, S.CULLED),
    (S.SHADOWING, S.CULLED),
    (S.PROBATIONARY, S.CULLED),
    (S.CULLED, S.EMBARGOED),
    (S.EMBARGOED, S.RESETTING),
    (S.RESETTING, S.DORMANT),
}

ALL_PAIRS = list(itertools.product(list(S), repeat=2))


def test_seed_stage_names_and_values_are_exactly_the_design() -> None:
    assert issubclass(SeedStage, IntEnum)
    assert {s.name: s.value for s in SeedStage} == EXPECTED_STAGES
    assert [s.name for s in SeedStage] == list(EXPECTED_STAGES)  # declaration order too


def test_expected_table_is_what_the_test_thinks_it_is() -> None:
    # Guard the hand-written table itself: 11 x 11 pairs, 14 legal moves.
    assert len(ALL_PAIRS) == 121
    assert len(LEGAL) == 14


@pytest.mark.parametrize(
    ("current", "target"), ALL_PAIRS, ids=[f"{a.name}->{b.name}" for a, b in ALL_PAIRS]
)
def test_every_transition_pair(current: SeedStage, target: SeedStage) -> None:
    assert is_valid_transition(current, target) is ((current, target) in LEGAL)


def test_fossilized_and_unknown_have_no_way_out() -> None:
    for target in SeedStage:
        assert not is_valid_transition(S.FOSSILIZED, target)
        assert not is_valid_transition(S.UNKNOWN, target)


def test_stage_predicates() -> None:
    assert [s for s in S if is_terminal(s)] == [S.FOSSILIZED]
    assert {s for s in S if is_active(s)} == {
        S.GERMINATED,
        S.TRAINING,
        S.BLENDING,
        S.SHADOWING,
        S.PROBATIONARY,
    }
    assert {s for s in S if is_failure(s)} == {S.CULLED, S.EMBARGOED, S.RESETTING}
    assert [s for s in S if can_germinate(s)] == [S.DORMANT]


def test_gate_levels_g0_to_g5() -> None:
    assert issubclass(GateLevel, IntEnum)
    assert [g.name for g in GateLevel] == ["G0", "G1", "G2", "G3", "G4", "G5"]
    assert sorted(GateLevel) == list(GateLevel)  # ordered G0 < G1 < ... < G5


def test_each_gate_guards_the_entry_into_its_stage() -> None:
    # DESIGN: G0..G5 guard entry into GERMINATED, TRAINING, BLENDING, SHADOWING,
    # PROBATIONARY, FOSSILIZED.
    assert GATE_FOR_STAGE == {
        S.GERMINATED: GateLevel.G0,
        S.TRAINING: GateLevel.G1,
        S.BLENDING: GateLevel.G2,
        S.SHADOWING: GateLevel.G3,
        S.PROBATIONARY: GateLevel.G4,
        S.FOSSILIZED: GateLevel.G5,
    }


def test_gate_result_fields() -> None:
    names = [f.name for f in dataclasses.fields(GateResult)]
    assert names[:6] == ["gate", "passed", "score", "checks_passed", "checks_failed", "message"]
    a = GateResult(gate=GateLevel.G2, passed=False)
    b = GateResult(gate=GateLevel.G2, passed=False)
    a.checks_failed.append("x")
    assert b.checks_failed == []  # no shared mutable default
    assert a.checks_passed == [] and a.message == "" and a.score == 0.0
