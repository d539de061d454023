"""A seed's record: its lifecycle state and the metrics the gates judge."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from esper.leyline import SeedStage, is_valid_transition

STAGE_HISTORY_LEN = 32
_GRADIENT_EMA = 0.9


@dataclass(slots=True)
class SeedMetrics:
    epochs_total: int = 0
    epochs_in_current_stage: int = 0
    initial_val_accuracy: float = 0.0
    current_val_accuracy: float = 0.0
    best_val_accuracy: float = 0.0
    accuracy_at_stage_start: float = 0.0
    accuracy_at_blending_start: float = 0.0
    isolation_violations: int = 0
    gradient_norm_avg: float = 0.0
    current_alpha: float = 0.0
    alpha_ramp_step: int = 0
    counterfactual_contribution: float | None = None
    seed_gradient_norm_ratio: float = 0.0
    accuracy_samples: int = 0
    gradient_samples: int = 0

    @property
    def improvement_since_stage_start(self) -> float:
        return self.current_val_accuracy - self.accuracy_at_stage_start

    @improvement_since_stage_start.setter
    def improvement_since_stage_start(self, value: float) -> None:
        # Keep the derived quantity consistent: move the reference point, not a copy.
        self.accuracy_at_stage_start = self.current_val_accuracy - value

    @property
    def total_improvement(self) -> float:
        return self.current_val_accuracy - self.initial_val_accuracy

    @total_improvement.setter
    def total_improvement(self, value: float) -> None:
        self.initial_val_accuracy = self.current_val_accuracy - value

    def record_accuracy(self, accuracy: float) -> None:
        if self.accuracy_samples == 0:
            self.initial_val_accuracy = accuracy
            self.accuracy_at_stage_start = accuracy
            self.accuracy_at_blending_start = accuracy
            self.best_val_accuracy = accuracy
        self.current_val_accuracy = accuracy
        self.best_val_accuracy = max(self.best_val_accuracy, accuracy)
        self.accuracy_samples += 1

    def record_gradient_norms(self, host_norm: float, seed_norm: float) -> None:
        """Exponential moving average of the seed's gradient norm and its ratio to the host's."""
        ratio = seed_norm / max(host_norm, 1e-12)
        if self.gradient_samples == 0:
            self.gradient_norm_avg, self.seed_gradient_norm_ratio = seed_norm, ratio
        else:
            keep = _GRADIENT_EMA
            self.gradient_norm_avg = keep * self.gradient_norm_avg + (1 - keep) * seed_norm
            self.seed_gradient_norm_ratio = keep * self.seed_gradient_norm_ratio + (1 - keep) * ratio
        self.gradient_samples += 1


@dataclass(slots=True, kw_only=True)
class SeedState:
    seed_id: str
    blueprint_id: str
    slot_id: str = ""
    stage: SeedStage = SeedStage.DORMANT
    previous_stage: SeedStage = SeedStage.UNKNOWN
    alpha: float = 0.0
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    blending_steps_total: int = 0
    is_healthy: bool = True
    # The feature shape a probe fed the seed and the shape it gave back (None: never probed):
    # gate G0 lets a seed germinate only when they are equal.
    probe_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    # (stage value, epochs_total) of every move, the latest STAGE_HISTORY_LEN: a decided seed's
    # telemetry event carries it, so events.jsonl says how long the seed spent in each stage.
    stage_history: deque[tuple[int, int]] = field(
        default_factory=lambda: deque(maxlen=STAGE_HISTORY_LEN)
    )

    @property
    def blending_progress(self) -> float:
        """How far the alpha ramp has gone, 0 to 1 (gate G3 reports it)."""
        if self.blending_steps_total == 0:
            return 0.0
        return min(self.metrics.alpha_ramp_step / self.blending_steps_total, 1.0)

    def can_transition_to(self, stage: SeedStage) -> bool:
        return is_valid_transition(self.stage, stage)

    def transition(self, stage: SeedStage) -> bool:
        """Move to `stage` if the lifecycle allows it; returns whether it moved."""
        if not self.can_transition_to(stage):
            return False
        metrics = self.metrics
        self.stage_history.append((int(stage), metrics.epochs_total))
        self.previous_stage, self.stage = self.stage, stage
        metrics.epochs_in_current_stage = 0
        metrics.accuracy_at_stage_start = metrics.current_val_accuracy
        if stage == SeedStage.BLENDING:
            metrics.accuracy_at_blending_start = metrics.current_val_accuracy
        return True
