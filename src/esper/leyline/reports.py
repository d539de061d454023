"""Plain-data summaries of seeds and of their moves, for summaries, telemetry and rewards."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from esper.leyline.stages import SeedStage


@dataclass(slots=True)
class SeedReport:
    seed_id: str
    blueprint_id: str
    slot_id: str
    stage: SeedStage
    epochs_total: int
    params: int
    alpha: float
    counterfactual_contribution: float | None
    seed_gradient_norm_ratio: float
    is_healthy: bool
    # What the seed's metrics record besides the gate inputs.
    best_val_accuracy: float
    accuracy_at_blending_start: float
    gradient_norm_avg: float

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["stage"] = self.stage.name
        return record


@dataclass(frozen=True, slots=True)
class FlopsReport:
    """FLOPs an epoch spent, what the run has spent up to and including it, and what the
    network costs to run.

    `training` is the epoch's train steps (forward + backward, every sample trained);
    `validation` its validation passes and `counterfactual` the extra passes that
    measured each blended seed (both counted again after a rollback, when the epoch
    is measured twice). `inference_per_sample` is one sample's eval forward through
    the architecture the epoch was validated with. All are FLOPs, as counted by
    `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2).
    """

    training: float = 0.0
    validation: float = 0.0
    counterfactual: float = 0.0
    cumulative_training: float = 0.0
    cumulative_validation: float = 0.0
    cumulative_counterfactual: float = 0.0
    inference_per_sample: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FossilReport:
    """A fossilized seed: part of its slot's stack for good, applied before any live seed there.

    `params` is its size, `counterfactual_contribution` what it was kept for (measured
    while it was on probation), `epoch` the slot's lifecycle epoch when it fossilized.
    """

    seed_id: str
    blueprint_id: str
    slot_id: str
    params: int
    counterfactual_contribution: float | None
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StageTransition:
    """One move of one seed through the lifecycle, as it happened.

    Slots record every move (germination, gate passes, culls and why, the
    embargo clock), fast mode or not; the trainer hands them out per epoch, so
    whoever counts outcomes or pays for them reads this list instead of
    diffing stage snapshots. `reason` says why, where the lifecycle's own
    clock or a passed gate does not: the cull reason (the controller's, the
    governor's, an expiry), or "stage assigned directly"; else it is empty.
    `epoch` is the slot's lifecycle epoch when it moved.
    """

    slot_id: str
    seed_id: str
    blueprint_id: str
    from_stage: SeedStage
    to_stage: SeedStage
    reason: str
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["from_stage"] = self.from_stage.name
        record["to_stage"] = self.to_stage.name
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> StageTransition:
        """Inverse of `to_dict` (checkpoints and logs hold plain data)."""
        return cls(
            **{
                **record,
                "from_stage": SeedStage[record["from_stage"]],
                "to_stage": SeedStage[record["to_stage"]],
            }
        )
