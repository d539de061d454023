"""Plain-data summaries of seeds, for summaries, telemetry and rewards."""

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

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["stage"] = self.stage.name
        return record
