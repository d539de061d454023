"""`esper.graft`: seed slots on the modules of any PyTorch model, chosen by name.

    grown = esper.graft(model, targets=["layer2", "blocks.*"], example_input=x)

In place or wrapped? Both, deliberately: the model object itself is changed in place
only in that each target module gets a forward hook that passes its output through
a slot (`placement.SlotMount`, the one way Esper places a slot). Its parameters,
buffers, module names and `state_dict` keys stay as they were, so a pretrained
checkpoint still loads into it and `model.layer2` is still your module. The
returned `GraftedModel` wraps it: it owns the slots (`grown.slots`, so `.to()`,
`state_dict()` and `parameters()` of `grown` include them; the model's own entries
appear under `host.`), calls the model with the model's own arguments and returns
what the model returns. Calling `model(...)` directly also runs the slots. A model
is grafted once, on all its targets: a second graft of it is refused.

`grown.state_dict()` also holds every slot's lifecycle (its stack of fossils and its
live seed: blueprint, stage, alpha) as the module's extra state, so
`grown.load_state_dict(sd)` on a fresh graft of the same model rebuilds them and loads
their weights, with outputs equal (a slot whose lifecycle is already the saved one, as
after a trainer checkpoint restored it, is left as it is).

Topology and width of every slot come from one probe forward of `example_input`
(in eval mode, without gradients; training flags are restored afterwards, so e.g.
BatchNorm statistics are untouched): a 4-D target output is "cnn" (B, C, H, W), 3-D
"transformer" (B, T, C), 2-D "mlp" (B, C). A 3-D output is always read as
(B, T, C): a Conv1d's (B, C, L) output would get a slot over its last axis. Seeds
are created on the device and in the dtype of the features the probe saw.

`widen` names layers whose output width may grow: each gets a slot of its own (keyed by
its name) for width seeds (`widen`, `widen_zero`), and what must grow with it is found once,
here (`kasmina.width_group`, with torch-pruning): its BatchNorm, the ops after it, the
layers consuming it, and the layers its output is added to (a residual group) with theirs.
A layer Esper cannot widen is refused, naming what stands in the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.blueprints.registry import infer_topology
from esper.kasmina.host import SeededModel
from esper.kasmina.placement import SlotMount, holds_slot, record_output
from esper.kasmina.slot import QualityGates, SeedSlot
from esper.kasmina.width import WidthSite
from esper.kasmina.width_group import check_carried, dependency_graph, width_site
from esper.leyline import TaskConfig, TelemetryEvent

_PATTERN_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True, slots=True)
class _Point:
    """What the probe saw at one target: the slot it needs."""

    topology: str
    channels: int
    device: torch.device
    dtype: torch.dtype


class GraftedModel(SlotMount, SeededModel):
    """A model with a `SeedSlot` on the output of each target module (see `esper.graft`).

    `seed_slots` is keyed by target name in the model's module order; the model
    itself is `host`. Offers what the trainer, governor and controllers use of a
    `MorphogeneticModel`: `germinate`, `host_parameters`, `seed_parameters`, and the
    parameter counts.
    """

    def __init__(
        self,
        model: nn.Module,
        points: dict[str, _Point],
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
        sites: dict[str, WidthSite] | None = None,
    ) -> None:
        super().__init__()
        self.host = model
        self.injection_points = {target: point.channels for target, point in points.items()}
        config = task_config or TaskConfig()
        for target, point in points.items():
            slot = SeedSlot(
                target,
                channels=point.channels,
                device=point.device,
                gates=gates,
                on_telemetry=on_telemetry,
                fast_mode=fast_mode,
                task_config=dataclasses.replace(config, topology=point.topology),
                dtype=point.dtype,
            )
            slot.width_site = (sites or {}).get(target)
            self.register_slot(target, slot)

    def injection_module(self, key: str) -> nn.Module:
        return self.host.get_submodule(key)

    def replace_injection_module(self, key: str, module: nn.Module) -> None:
        self.host.set_submodule(key, module)

    @property
    def mount(self) -> SlotMount:
        return self

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        return self.placed_slots()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.host(*args, **kwargs)

    def get_extra_state(self) -> dict[str, Any]:
        """Every slot's lifecycle (plain data: `SeedSlot.lifecycle_state`), saved with the weights."""
        return {target: slot.lifecycle_state() for target, slot in self.seed_slots.items()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Rebuild each slot's fossils and live seed from `state` before their weights load."""
        slots = self.seed_slots
        if not isinstance(state, dict) or set(state) != set(slots):
            saved = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"this state was saved from a graft with slots on {saved}, not on {sorted(slots)}: "
                             "load it into a graft of the same model on the same targets")  # fmt: skip
        for target, slot in slots.items():
            if slot.lifecycle_state() != state[target]:
                slot.load_lifecycle_state(state[target], host_module=self.host)


def graft(
    model: nn.Module,
    targets: str | Sequence[str],
    example_input: Any,
    *,
    gates: QualityGates | None = None,
    on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    task_config: TaskConfig | None = None,
    fast_mode: bool = False,
    widen: str | Sequence[str] = (),
) -> GraftedModel:
    """Put a seed slot on the output of each target module of `model`.

    `targets`: names from `model.named_modules()`, or shell-style patterns in which
    `*`, `?` and `[...]` match within one dotted component (`"blocks.*"` is
    blocks.0, blocks.1, ... and not blocks.0.attn). `example_input`: a tensor, a
    tuple of positional arguments, or a dict of keyword arguments for one forward.
    The keyword options configure every slot as for `MorphogeneticModel`
    (`task_config.topology` is replaced by each slot's inferred topology).
    `widen`: names of layers (nn.Linear, nn.Conv2d) whose output width seeds may grow, each
    with a slot of its own for width blueprints (`widen`, `widen_zero`); with `widen`,
    `targets` may be empty.

    Raises `ValueError` naming the culprit for an unknown target (with the closest
    module names), a pattern matching nothing, a target named twice, a model that
    was grafted before, a target that does not run on `example_input`, or one whose output is
    not a single floating-point tensor of a known topology; for `widen`, an unknown name, a
    name also in `targets`, and a layer that cannot be widened (saying why).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"graft needs a torch.nn.Module, got {type(model).__name__}")
    layers = _widen_names(model, widen)
    names = resolve_targets(model, targets, allow_empty=bool(layers))
    both = sorted(set(names) & set(layers))
    if both:
        raise ValueError(f"'{both[0]}' is in both targets and widen: a layer gets a slot for seeds on its output "
                         "or for width seeds, not both; name it once")  # fmt: skip
    sites = {}
    if layers:
        graph = dependency_graph(model, example_input, _call)
        for name in layers:
            sites[name] = width_site(model, name, graph)
            check_carried(model, name, sites[name], example_input, _call)
    everything = [name for name, _ in model.named_modules(remove_duplicate=False) if name in {*names, *layers}]
    outputs = _probe(model, everything, example_input)
    points = {name: _point(name, model.get_submodule(name), outputs[name]) for name in everything}
    return GraftedModel(model, points, gates, on_telemetry, task_config, fast_mode, sites)


def _widen_names(model: nn.Module, widen: str | Sequence[str]) -> list[str]:
    """The layers `widen` names, each once (exact module names: a width slot is a choice per layer)."""
    layers = [widen] if isinstance(widen, str) else list(widen)
    names = [name for name, _ in model.named_modules() if name]
    for entry in layers:
        if not isinstance(entry, str) or entry not in names:
            raise ValueError(f"Unknown layer to widen {entry!r}: the model has no such module; {_closest(str(entry), names)}")
        if layers.count(entry) > 1:
            raise ValueError(f"Layer '{entry}' is named twice in widen; name each layer once")
    return layers


# ---------------------------------------------------------------------- targets
def _is_pattern(target: str) -> bool:
    return not _PATTERN_CHARS.isdisjoint(target)


def _matches(pattern: str, name: str) -> bool:
    """A glob per dotted component: a `*` never crosses a '.'."""
    parts, name_parts = pattern.split("."), name.split(".")
    return len(parts) == len(name_parts) and all(
        fnmatch.fnmatchcase(part, glob) for glob, part in zip(parts, name_parts)
    )


def _closest(target: str, names: list[str]) -> str:
    if not names:
        return "it has no submodules to target"
    close = difflib.get_close_matches(target, names, n=5, cutoff=0.5)
    if close:
        return f"closest module names: {', '.join(close)}"
    top = [name for name in names if "." not in name]
    return f"top-level modules: {', '.join(top[:12])}" + (", ..." if len(top) > 12 else "")


def resolve_targets(model: nn.Module, targets: str | Sequence[str], allow_empty: bool = False) -> list[str]:
    """The module names `targets` select, each exactly once, in `named_modules()` order
    (none only where `allow_empty`: the graft widens layers instead)."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets and not allow_empty:
        raise ValueError("graft needs at least one target: a module name or pattern (or layers to widen)")
    # remove_duplicate=False: a module registered under two names can be targeted by either.
    names = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    known = set(names)
    chosen: dict[str, str] = {}  # module name -> the target entry that selected it
    for entry in targets:
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"Targets are module names or patterns (non-empty strings), got {entry!r}")
        if _is_pattern(entry):
            matched = [name for name in names if _matches(entry, name)]
            if not matched:
                raise ValueError(
                    f"Target pattern '{entry}' matches no module of the model "
                    f"('*' stays within one dotted component); {_closest(entry, names)}"
                )
        elif entry in known:
            matched = [entry]
        else:
            raise ValueError(f"Unknown target '{entry}': the model has no such module; {_closest(entry, names)}")
        for name in matched:
            if name in chosen:
                by = f"'{chosen[name]}' and '{entry}'" if chosen[name] != entry else f"'{entry}' twice"
                raise ValueError(f"Duplicate target '{name}': named by {by}; name each module once")
            chosen[name] = entry
    grafted = [name for name in names if holds_slot(model.get_submodule(name))]
    if grafted:
        raise ValueError(
            f"The model was grafted before (slots on {', '.join(grafted)}); use that grafted model, "
            "or graft a fresh copy of the model on all its targets at once"
        )
    seen: dict[int, str] = {}
    for name in chosen:
        module = model.get_submodule(name)
        if id(module) in seen:
            raise ValueError(
                f"Duplicate target: '{seen[id(module)]}' and '{name}' are the same module; target one"
            )
        seen[id(module)] = name
    return [name for name in names if name in chosen]


# ---------------------------------------------------------------------- probe
def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, tuple):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


@contextlib.contextmanager
def training_modes_kept(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval flag as it is now, put back on exit (whatever ran inside)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _probe(model: nn.Module, names: list[str], example_input: Any) -> dict[str, list[Any]]:
    """Every output of every target during one eval-mode, gradient-free forward."""
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    handles = [record_output(model.get_submodule(name), outputs[name].append) for name in names]
    try:
        with training_modes_kept(model):
            model.eval()
            with torch.no_grad():
                _call(model, example_input)
    except Exception as error:
        raise ValueError(
            f"The probe forward of example_input through {type(model).__name__} failed "
            f"({type(error).__name__}: {error}); example_input must be what the model takes: "
            "a tensor, a tuple of positional arguments, or a dict of keyword arguments"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(_describe(item) for item in value[:4])
        return f"{type(value).__name__} of {len(value)} ({items}{', ...' if len(value) > 4 else ''})"
    if isinstance(value, dict):
        return f"{type(value).__name__} with keys {list(value)[:6]}"
    return type(value).__name__


def _point(name: str, module: nn.Module, calls: list[Any]) -> _Point:
    """The slot a target needs, from its outputs in the probe forward."""
    what = f"Target '{name}' ({type(module).__name__})"
    if not calls:
        raise ValueError(
            f"{what} did not run in the model's (eval-mode) forward on example_input, so a "
            "slot there would never act; target a module the forward calls"
        )
    points = []
    for output in calls:
        if not isinstance(output, Tensor):
            # ValueError (the API's promise): the model is fine, this target choice is not.
            raise ValueError(  # noqa: TRY004
                f"{what} returns {_describe(output)}, not one tensor: a slot acts on a single "
                "tensor output; target a submodule that returns one"
            )
        fit = infer_topology(tuple(output.shape))
        if not output.is_floating_point() or fit is None:
            raise ValueError(
                f"{what} returns a {output.dtype} tensor of shape {tuple(output.shape)}: no seed "
                "topology fits; slots take floating-point (B, C, H, W) 'cnn', (B, T, C) "
                "'transformer' or (B, C) 'mlp' features"
            )
        points.append(_Point(*fit, output.device, output.dtype))
    if any(point != points[0] for point in points[1:]):
        seen = ", ".join(sorted({_describe(output) for output in calls}))
        raise ValueError(
            f"{what} runs {len(calls)} times per forward with different outputs ({seen}); "
            "one slot cannot fit them all: target the modules it calls instead"
        )
    return points[0]
