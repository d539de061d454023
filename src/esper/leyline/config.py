"""Per-task lifecycle timings handed to every seed slot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TaskConfig:
    """How a slot runs its seeds' lifecycle (in epochs) for one task.

    Gate thresholds live in `QualityGates`; this holds the clock: how long the
    alpha ramp lasts, how long a seed may stall before it is culled, and how
    long a culled slot stays embargoed.
    """

    topology: str = "cnn"
    blending_epochs: int = 5
    max_training_epochs: int = 12
    max_probation_epochs: int = 8
    embargo_epochs: int = 3
    blueprint_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("blending_epochs", "max_training_epochs", "max_probation_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaskConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embargo_epochs < 0:
            raise ValueError(f"TaskConfig.embargo_epochs must be >= 0, got {self.embargo_epochs}")
