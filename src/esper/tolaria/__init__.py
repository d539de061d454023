"""Execution: epochs, validation with counterfactuals, the governor, the epoch engine and loop."""

from esper.tolaria.engine import (
    EpochLoop,
    EpochRecord,
    EpochResult,
    MorphogeneticTrainer,
    TrainingFailed,
    run_epochs,
)
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.trainer import (
    OptimConfig,
    Optimizers,
    train_epoch,
    validate,
    validate_with_counterfactuals,
)

__all__ = [
    "EpochLoop",
    "EpochRecord",
    "EpochResult",
    "Governor",
    "GovernorConfig",
    "MorphogeneticTrainer",
    "OptimConfig",
    "Optimizers",
    "TrainingFailed",
    "run_epochs",
    "train_epoch",
    "validate",
    "validate_with_counterfactuals",
]
