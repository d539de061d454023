"""Test-wide settings and builders.

One intra-op thread (the test models are tiny; threads only add overhead). The
builders make the plain data a controller, reward, observer or recorder test
feeds in (`from conftest import epoch_signals`): defaults for what a test does
not care about, every field by name.
"""

from __future__ import annotations

from typing import Any

import torch

from esper.leyline import EpochSignals, SeedReport, SeedStage, StageTransition

torch.set_num_threads(1)


def epoch_signals(epoch: int = 0, *, total_epochs: int = 10, train_loss: float = 1.0, train_accuracy: float = 0.5,
                  val_loss: float = 1.0, val_accuracy: float = 0.5, host_params: int = 500, seed_params: int = 0,
                  slots: dict[str, SeedReport | None] | None = None, **fields: Any) -> EpochSignals:  # fmt: skip
    """One epoch's signals; `fields` are the optional ones (transitions, fossils, affordable, ...)."""
    return EpochSignals(epoch=epoch, total_epochs=total_epochs, train_loss=train_loss, train_accuracy=train_accuracy,
                        val_loss=val_loss, val_accuracy=val_accuracy, host_params=host_params, seed_params=seed_params,
                        slots={} if slots is None else slots, **fields)  # fmt: skip


def seed_report(stage: SeedStage, *, seed_id: str = "a-seed1", blueprint_id: str = "norm", slot_id: str = "a",
                epochs_total: int = 3, params: int = 10, alpha: float = 1.0, contribution: float | None = None,
                gradient_ratio: float = 0.2, healthy: bool = True) -> SeedReport:  # fmt: skip
    """A live seed's report in `stage`."""
    return SeedReport(seed_id=seed_id, blueprint_id=blueprint_id, slot_id=slot_id, stage=stage,
                      epochs_total=epochs_total, params=params, alpha=alpha, counterfactual_contribution=contribution,
                      seed_gradient_norm_ratio=gradient_ratio, is_healthy=healthy, best_val_accuracy=0.5,
                      accuracy_at_blending_start=0.5, gradient_norm_avg=0.1)  # fmt: skip


def stage_move(to: SeedStage, *, frm: SeedStage = SeedStage.DORMANT, seed_id: str = "a-seed1", slot_id: str = "a",
               blueprint_id: str = "norm", reason: str = "", epoch: int = 0) -> StageTransition:  # fmt: skip
    """One lifecycle move of one seed."""
    return StageTransition(slot_id, seed_id, blueprint_id, frm, to, reason, epoch)
