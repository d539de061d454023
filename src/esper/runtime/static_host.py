"""Static networks with seeds built in: the architecture a growth run ends with, trained from scratch.

A fossilized seed at full strength computes `seed(stage(x))` at its slot. Here
the same blueprint modules are made part of the host's trunk instead (the stage
becomes `Sequential(stage, seed, ...)`), so the network is a plain static one:
its seeds are host parameters from the first step, trained with the host's
optimiser and learning rate, and the slots stay free. This is how a growth run is
compared with "the same final network, trained statically".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import StagedHost
from esper.kasmina.width import parse_width_key, widen_static
from esper.runtime.data import TaskData
from esper.runtime.tasks import TaskSpec, list_tasks


def plant_static(host: nn.Module, slot_id: str, blueprint: str, **kwargs: Any) -> nn.Module:
    """Build `blueprint` fresh and make it run after the trunk stage feeding `slot_id`, as a
    host layer; returns the new module."""
    if not isinstance(host, StagedHost):
        raise TypeError(
            f"{type(host).__name__} is not a StagedHost: it has no trunk stage to build a seed into"
        )
    if slot_id not in host.injection_points:
        raise ValueError(
            f"Unknown injection point '{slot_id}'. Available: {', '.join(host.injection_points)}"
        )
    width = host.injection_points[slot_id]
    module = BlueprintRegistry.create(host.topology, blueprint, width, **kwargs)
    host.replace_injection_module(slot_id, nn.Sequential(host.injection_module(slot_id), module))
    return module


@dataclass(frozen=True)
class StaticSeedsHostFactory:
    """Builds `build_host(data)` with fresh blueprint modules fused after the named slots.

    `seeds` lists (slot_id, blueprint) pairs in planting order; a slot named twice
    gets both, one after the other. `blueprint_kwargs` are the task's options per
    blueprint (as `TaskConfig.blueprint_kwargs`), so each module is built as a slot
    of that task would build it.
    """

    build_host: Callable[[TaskData], nn.Module]
    seeds: tuple[tuple[str, str], ...]
    blueprint_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # (width_key, width): the layer a width seed at the slot widens, built that wide (first).
    widths: tuple[tuple[str, int], ...] = ()

    def __call__(self, data: TaskData) -> nn.Module:
        host = self.build_host(data)
        for key, width in self.widths:
            slot_id, kind = parse_width_key(key)
            widen_static(host, slot_id, width, kind)
        for slot_id, blueprint in self.seeds:
            plant_static(host, slot_id, blueprint, **self.blueprint_kwargs.get(blueprint, {}))
        return host

    def __str__(self) -> str:
        planted = ", ".join(f"{blueprint}@{slot_id}" for slot_id, blueprint in self.seeds)
        wider = "".join(f", {slot_id} {width} wide" for slot_id, width in self.widths)
        return f"{self.build_host} + {planted or 'no seeds'}{wider}"


def every_slot(slots: Sequence[str], blueprint: str) -> tuple[tuple[str, str], ...]:
    """The plan that plants `blueprint` once in each of `slots`."""
    return tuple((slot_id, blueprint) for slot_id in slots)


def host_variant(
    spec: TaskSpec, host: str, built_in: Mapping[str, Sequence[str]], widths: Mapping[str, int] | None = None
) -> TaskSpec:
    """`spec` with the host a run asks for: the task's own ("task") or its static reference
    ("reference"), with the `built_in` blueprints (slot -> blueprints, in order) fused into
    its trunk, and the layers width seeds at the `widths` slots widen built that wide (a
    grown run's merged widths). The task unchanged when nothing differs.

    Bad names fail here, before any run folder exists: a task without a reference host, a
    slot the host lacks, a blueprint its topology does not have.
    """
    if host == "reference":
        if spec.reference_host is None:
            raise ValueError(
                f"task '{spec.name}' has no static reference host; tasks with one: "
                f"{', '.join(t.name for t in list_tasks() if t.reference_host is not None)}"
            )
        spec = replace(spec, build_host=spec.reference_host)
    elif host != "task":
        raise ValueError(f"host must be 'task' or 'reference', got '{host}'")
    plan = tuple((slot_id, blueprint) for slot_id, blueprints in built_in.items() for blueprint in blueprints)
    wider = tuple((widths or {}).items())
    if not plan and not wider:
        return spec
    known = {s.name for s in BlueprintRegistry.list_specs(spec.topology)}
    unknown = sorted({blueprint for _, blueprint in plan} - known)
    if unknown:
        raise ValueError(
            f"Unknown blueprint(s) {unknown} for {spec.topology}. Available: {', '.join(sorted(known))}"
        )
    factory = StaticSeedsHostFactory(spec.build_host, plan, spec.task_config.blueprint_kwargs, wider)
    return replace(spec, build_host=factory)
