"""Build a ready-to-train host with slots for a task (used by every job and by simic's environments)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from esper.kasmina.host import MorphogeneticModel
from esper.kasmina.slot import QualityGates
from esper.leyline import GrowthBudget, TelemetryEvent
from esper.runtime.data import TaskData
from esper.runtime.tasks import TaskSpec
from esper.tolaria import MorphogeneticTrainer, OptimConfig


def build_trainer(
    spec: TaskSpec,
    data: TaskData,
    seed: int,
    slots: Sequence[str] | None = None,
    on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    fast_mode: bool = False,
    budget: GrowthBudget | None = None,
    blueprints: Sequence[str] = (),
) -> MorphogeneticTrainer:
    """Seeded host + slots + loaders + optimisers: the same seed gives the same run. With a
    growth `budget`, germinations of `blueprints` past it are refused."""
    torch.manual_seed(seed)
    model = MorphogeneticModel(
        spec.build_host(data),
        slots or spec.slots,
        gates=QualityGates(**spec.gate_kwargs),
        on_telemetry=on_telemetry,
        task_config=spec.task_config,
        fast_mode=fast_mode,
    )
    train, val = data.loaders(spec.batch_size, seed, spec.max_train_batches, spec.max_val_batches)
    optim = OptimConfig(optimizer=spec.optimizer, host_lr=spec.host_lr, seed_lr=spec.seed_lr)
    example = (data.train_inputs[:2], data.train_targets[:2])  # shapes for the FLOPs meter
    return MorphogeneticTrainer(
        model, train, val, optim, on_telemetry=on_telemetry, example_batch=example, budget=budget, blueprints=blueprints
    )
