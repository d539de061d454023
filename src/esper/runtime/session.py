"""Build a ready-to-train host with slots for a task (used by every job and by simic's environments)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import MorphogeneticModel, SeededModel
from esper.kasmina.slot import QualityGates
from esper.leyline import GrowthBudget, Operator, TelemetryEvent
from esper.runtime.data import TaskData
from esper.runtime.tasks import TaskSpec
from esper.runtime.user_model import build_user_model
from esper.tolaria import MorphogeneticTrainer, OptimConfig
from esper.tolaria.distributed import World
from esper.tolaria.precision import Precision, resolve_device


def build_trainer(
    spec: TaskSpec,
    data: TaskData,
    seed: int,
    slots: Sequence[str] | None = None,
    on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    fast_mode: bool = False,
    world: World | None = None,
    *,
    model: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    budget: GrowthBudget | None = None,
    blueprints: Sequence[str] | None = None,
    lr_restarts: Sequence[float] = (),
) -> MorphogeneticTrainer:
    """Seeded host + slots + loaders + optimisers: the same seed gives the same run.

    `model` ("package.module:factory", `runtime.user_model`) replaces the task's host
    with the factory's model, grafted on its targets (`slots` must then be None).
    Model and batches live on `device`; `precision` is "fp32", "bf16" or "fp16-mixed"
    (`tolaria.precision`). An unavailable device is a `ValueError` before any work.
    With a distributed `world` the host is trained data parallel on its ranks: the
    loaders give this rank's share of every global batch. With a growth `budget`,
    germinations past it are refused, and the signals say which of the run's
    `blueprints` (None: the task's, for its model, `resolve_blueprints`) each slot can
    still afford. The trainer counts its FLOPs on the shapes of the task's batches.
    """
    world = world or World.single()
    placement = resolve_device(device)
    computing = Precision.on(precision, placement)
    torch.manual_seed(seed)
    gates = QualityGates(**spec.gate_kwargs)
    grown: SeededModel
    if model is None:
        grown = MorphogeneticModel(
            spec.build_host(data),
            slots or spec.slots,
            device=placement,
            gates=gates,
            on_telemetry=on_telemetry,
            task_config=spec.task_config,
            fast_mode=fast_mode,
        )
    else:
        if slots:
            raise ValueError("--slots does not go with --model: the factory's targets are the slots")
        grown = build_user_model(model, data, placement, gates=gates, on_telemetry=on_telemetry,
                                 task_config=spec.task_config, fast_mode=fast_mode)  # fmt: skip
        spec = spec_for_model(spec, grown)
    candidates = resolve_blueprints(spec, blueprints)
    train, val = data.loaders(
        spec.batch_size, seed, spec.max_train_batches, spec.max_val_batches, placement, world.rank, world.size
    )
    optim = OptimConfig(optimizer=spec.optimizer, host_lr=spec.host_lr, seed_lr=spec.seed_lr, lr_schedule=spec.lr_schedule,
                        lr_restarts=tuple(lr_restarts), lr_warmup=spec.lr_warmup)
    example = (data.train_inputs[:2], data.train_targets[:2])  # shapes for the FLOPs meter
    return MorphogeneticTrainer(
        grown, train, val, optim, on_telemetry=on_telemetry, precision=computing, world=world,
        example_batch=example, budget=budget, blueprints=candidates,
    )  # fmt: skip


def spec_for_model(spec: TaskSpec, model: SeededModel) -> TaskSpec:
    """The task as a model of the user's makes it: its slots, and their topology for the
    blueprints (the task's own choice of blueprints, made for its host, only where the
    topology is the same)."""
    topology = model.slot_topology()
    blueprints = spec.blueprints if topology == spec.topology else None
    return dataclasses.replace(spec, topology=topology, slots=tuple(model.seed_slots), blueprints=blueprints)


def resolve_blueprints(spec: TaskSpec, requested: Sequence[str] | None) -> list[str]:
    """The blueprints a run plants: those requested, else the task's own list, else every one
    of its topology."""
    if requested is None and spec.blueprints is not None:
        return list(spec.blueprints)
    return blueprints_for(spec.topology, requested)


def blueprints_for(topology: str, requested: Sequence[str] | None) -> list[str]:
    """`requested` checked against the registry of `topology`.

    None: every blueprint that grows a branch of its own, cheapest first; those that start from
    the host's own layers (`from_host`) are planted only when named.
    """
    specs = BlueprintRegistry.list_specs(topology)
    available = [s.name for s in specs]
    if requested is None:
        return [s.name for s in specs if not s.from_host]
    unknown = [b for b in requested if b not in available]
    if unknown:
        raise ValueError(f"Unknown blueprint(s) {unknown} for {topology}. Available: {', '.join(available)}")
    return list(requested)


def operators_for(topology: str, blueprints: Sequence[str]) -> dict[str, Operator]:
    """What each of `blueprints` grows (the registry's `Operator`), for the heuristic's choice of
    what and how much to plant."""
    return {name: BlueprintRegistry.get(topology, name).operator for name in blueprints}
