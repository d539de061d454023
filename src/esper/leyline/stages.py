"""Seed lifecycle stages and the legal transitions between them."""

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


_CULLABLE = frozenset(
    {
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
    }
)

VALID_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.UNKNOWN: frozenset(),
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
    SeedStage.BLENDING: frozenset({SeedStage.SHADOWING, SeedStage.CULLED}),
    SeedStage.SHADOWING: frozenset({SeedStage.PROBATIONARY, SeedStage.CULLED}),
    SeedStage.PROBATIONARY: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset({SeedStage.EMBARGOED}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}

# Stages in which a seed module exists and takes part in the forward pass.
ACTIVE_STAGES = _CULLABLE
# Stages in which the seed's output is blended into the host (alpha matters).
BLENDED_STAGES = frozenset(
    {SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED}
)
FAILURE_STAGES = frozenset({SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING})


def is_valid_transition(current: SeedStage, target: SeedStage) -> bool:
    return target in VALID_TRANSITIONS[current]


def is_terminal(stage: SeedStage) -> bool:
    """A stage that never changes again (only FOSSILIZED)."""
    return stage == SeedStage.FOSSILIZED


def is_active(stage: SeedStage) -> bool:
    """The seed is alive and undecided: it can still be culled."""
    return stage in ACTIVE_STAGES


def is_failure(stage: SeedStage) -> bool:
    return stage in FAILURE_STAGES


def can_germinate(stage: SeedStage) -> bool:
    return stage == SeedStage.DORMANT
