"""Execution: epochs, validation with counterfactuals, the governor, the epoch engine."""

from esper.tolaria.engine import EpochRecord, MorphogeneticTrainer
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.trainer import (
    OptimConfig,
    Optimizers,
    train_epoch,
    validate,
    validate_with_counterfactuals,
)

__all__ = [
    "EpochRecord",
    "Governor",
    "GovernorConfig",
    "MorphogeneticTrainer",
    "OptimConfig",
    "Optimizers",
    "train_epoch",
    "validate",
    "validate_with_counterfactuals",
]
