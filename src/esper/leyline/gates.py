"""Quality gate levels and results. Each gate guards entry into one stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class GateLevel(IntEnum):
    G0 = 0  # -> GERMINATED
    G1 = 1  # -> TRAINING
    G2 = 2  # -> BLENDING
    G3 = 3  # -> SHADOWING
    G4 = 4  # -> PROBATIONARY
    G5 = 5  # -> FOSSILIZED


@dataclass(slots=True)
class GateResult:
    gate: GateLevel | None
    passed: bool
    score: float = 0.0
    checks_passed: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    message: str = ""
