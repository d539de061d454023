"""Per-task lifecycle timings handed to every seed slot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from esper.leyline.ranges import AtLeastOne, PositiveFloat, check_fields


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


@dataclass(slots=True)
class GrowthBudget:
    """How far a run may grow: at most `max_params_added` parameters added by seeds (live and
    fossilized), and at most `max_inference_flops` FLOPs per sample for an eval forward of
    the whole grown network (the host, every fossil and every live seed at full strength).
    None leaves that side unlimited. A germination that would pass either is refused.
    """

    max_params_added: AtLeastOne | None = None
    max_inference_flops: PositiveFloat | None = None

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def limited(self) -> bool:
        return self.max_params_added is not None or self.max_inference_flops is not None

    def describe(self) -> str:
        """"max_params_added 5,000, max_inference_flops 4e+05": the limits that are set."""
        parts = []
        if self.max_params_added is not None:
            parts.append(f"max_params_added {self.max_params_added:,}")
        if self.max_inference_flops is not None:
            parts.append(f"max_inference_flops {self.max_inference_flops:.4g}")
        return ", ".join(parts) or "unlimited"
