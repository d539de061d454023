"""Seed lifecycle stages, the legal transitions between them, and every stage set.

This module is the one definition of what a stage means: code elsewhere asks
"is the seed alive?" with `ACTIVE_STAGES`, never with a tuple of its own.
"""

from __future__ import annotations

from enum import IntEnum


class SeedStage(IntEnum):
    """Where a seed is in its life. Values are part of the public contract."""

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    SHADOWING = 5
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10


_S = SeedStage

VALID_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    _S.UNKNOWN: frozenset(),
    _S.DORMANT: frozenset({_S.GERMINATED}),
    _S.GERMINATED: frozenset({_S.TRAINING, _S.CULLED}),
    _S.TRAINING: frozenset({_S.BLENDING, _S.CULLED}),
    _S.BLENDING: frozenset({_S.SHADOWING, _S.CULLED}),
    _S.SHADOWING: frozenset({_S.PROBATIONARY, _S.CULLED}),
    _S.PROBATIONARY: frozenset({_S.FOSSILIZED, _S.CULLED}),
    _S.FOSSILIZED: frozenset(),
    _S.CULLED: frozenset({_S.EMBARGOED}),
    _S.EMBARGOED: frozenset({_S.RESETTING}),
    _S.RESETTING: frozenset({_S.DORMANT}),
}

# The seed is alive and undecided: it has a module, trains, and can still be culled.
ACTIVE_STAGES = frozenset({_S.GERMINATED, _S.TRAINING, _S.BLENDING, _S.SHADOWING, _S.PROBATIONARY})
# The forward pass runs the seed (a GERMINATED seed is not trained yet; a failed one is gone).
SEED_RUNS_STAGES = frozenset({_S.TRAINING, _S.BLENDING, _S.SHADOWING, _S.PROBATIONARY, _S.FOSSILIZED})
# The seed's output is blended into the host's: alpha matters.
BLENDED_STAGES = frozenset({_S.BLENDING, _S.SHADOWING, _S.PROBATIONARY, _S.FOSSILIZED})
# Blended and undecided: the counterfactual contribution is measured every epoch.
MEASURED_STAGES = BLENDED_STAGES & ACTIVE_STAGES
# Still growing toward a verdict: not yet at full alpha (the heuristic limits how many at once).
GROWING_STAGES = frozenset({_S.GERMINATED, _S.TRAINING, _S.BLENDING})
# The slot is clearing a culled seed and cannot germinate yet.
FAILURE_STAGES = frozenset({_S.CULLED, _S.EMBARGOED, _S.RESETTING})
# A move into one of these decides a seed's fate: kept for good, or removed.
OUTCOME_STAGES = frozenset({_S.FOSSILIZED, _S.CULLED})


def _happy_path() -> dict[SeedStage, SeedStage]:
    """Each stage's next stage when nothing goes wrong: its one way out that is not a cull."""
    path = {}
    for stage, targets in VALID_TRANSITIONS.items():
        onward = targets - {_S.CULLED}
        if len(onward) == 1:
            (path[stage],) = onward
    return path


# DORMANT -> GERMINATED -> ... -> FOSSILIZED, and CULLED -> EMBARGOED -> RESETTING -> DORMANT.
NEXT_STAGE: dict[SeedStage, SeedStage] = _happy_path()


def is_valid_transition(current: SeedStage, target: SeedStage) -> bool:
    return target in VALID_TRANSITIONS[current]
