"""FLOPs of a model's current architecture, counted by `torch.utils.flop_counter.FlopCounterMode`.

`FlopMeter(model, (inputs, targets)).profile()` gives per-sample FLOPs (one sample
is one image, or one sequence for a language model) of:

- inference: an eval-mode forward without grad (what serving the model costs; an
  incubating seed is skipped there, a blended one counts),
- a training step: a train-mode forward plus the backward of the task loss (an
  incubating seed runs and learns, so it counts),
- validation: an eval forward, which is the inference forward,
- counterfactuals: the extra passes that measure each blended seed's contribution,
  both the fast path the trainer takes for a `StagedHost` (the stages after the
  slot, from the features recorded entering it) and the naive one (a full forward
  with the slot's alpha forced to 0).

Why meta tensors: the model is run through `torch.func.functional_call` with every
parameter and buffer swapped for a meta tensor (shape and dtype, no storage, no
arithmetic). So measuring never touches the real model: its BatchNorm running
statistics, gradients and weights, the global RNG (meta dropout draws nothing)
all stay as they were; only the train/eval flags are switched, and restored. It
costs milliseconds whatever the model's size and needs no accelerator memory. It
also counts attention on CPU: PyTorch's fused CPU attention kernel is not in
FlopCounterMode's registry and would count 0, while on meta SDPA decomposes into
the matmuls FlopCounterMode counts (the same number its formula gives on GPU).
One library formula is corrected (see `_conv_backward_flop`): a grouped
convolution's weight gradient, which it overcounts by the number of groups.

Counted once, composed after: the host with nothing grown is counted once per
process (whole, on meta tensors), each blueprint's module once per (width, options,
input shape), and a profile is their sum (a seed keeps its input's shape and leaves
the host's operations as they are, so the counts add up exactly;
tests/tolaria/test_flops.py checks the sums against whole-model counts). A profile is
cached on a signature of the slots (their stacks of fossils; the live seed's stage
class, blueprint, identity and isolation), so calling `profile()` every epoch costs a
dictionary lookup, and a new architecture a few additions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import StagedHost
from esper.kasmina.slot import SeedSlot
from esper.kasmina.width import KINDS, WidthSeed, WidthSite, site_of
from esper.leyline import MEASURED_STAGES, SeedStage
from esper.tolaria.trainer import loss_and_correct

__all__ = [
    "EpochFlops",
    "FlopMeter",
    "FlopProfile",
    "ModelCall",
    "ModuleCost",
    "architecture_signature",
    "flop_counter",
    "module_cost",
]


_CONV_BACKWARD = torch.ops.aten.convolution_backward
_LIBRARY_CONV_BACKWARD = flop_registry[_CONV_BACKWARD]


def _conv_backward_flop(*args: Any, out_val: Any = None) -> int:
    """PyTorch's own convolution-backward formula, with its weight-gradient term divided by
    `groups`.

    Why this is not left to the library: its weight-gradient term ignores `groups`,
    so a depthwise convolution's weight gradient is counted once per channel
    (C times too many; the input-gradient term is right). The exact count is the
    library's term over `groups`, so both terms still come from the library.
    Arguments are convolution_backward's, positional, as the library takes them.
    """
    *head, groups, output_mask = args
    grad_input = _LIBRARY_CONV_BACKWARD(*head, groups, [output_mask[0], False], out_val=out_val)
    grad_weight = _LIBRARY_CONV_BACKWARD(*head, groups, [False, output_mask[1]], out_val=out_val)
    return grad_input + grad_weight // groups


_conv_backward_flop._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes tensors


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode with the grouped-convolution backward count corrected."""
    return FlopCounterMode(display=False, custom_mapping={_CONV_BACKWARD: _conv_backward_flop})


@dataclass(frozen=True, slots=True)
class EpochFlops:
    """FLOPs spent in one epoch (or, summed, a run), split by what they were spent on."""

    training: float = 0.0
    validation: float = 0.0
    counterfactual: float = 0.0

    @property
    def total(self) -> float:
        return self.training + self.validation + self.counterfactual

    def __add__(self, other: EpochFlops) -> EpochFlops:
        return EpochFlops(
            self.training + other.training,
            self.validation + other.validation,
            self.counterfactual + other.counterfactual,
        )


@dataclass(frozen=True, slots=True)
class FlopProfile:
    """Per-sample FLOPs of one architecture.

    `counterfactual_fast` is None when the host is not a `StagedHost` (the trainer
    then takes the naive path); both dicts map each measured slot (a seed in
    BLENDING, SHADOWING or PROBATIONARY) to the extra FLOPs its counterfactual costs.
    """

    inference: float
    training: float
    counterfactual_fast: dict[str, float] | None
    counterfactual_naive: dict[str, float]

    @property
    def validation(self) -> float:
        """A validation pass is an eval forward: the inference cost."""
        return self.inference

    @property
    def counterfactual(self) -> float:
        """Extra per-sample FLOPs of all counterfactuals, on the path the trainer takes."""
        per_slot = (
            self.counterfactual_naive
            if self.counterfactual_fast is None
            else self.counterfactual_fast
        )
        return sum(per_slot.values())

    def epoch(self, train_samples: int, val_samples: int, validations: int = 1) -> EpochFlops:
        """FLOPs of an epoch that trained on `train_samples` and validated `validations` times
        (the governor validates again after a rollback) on `val_samples`, with counterfactuals."""
        return EpochFlops(
            training=self.training * train_samples,
            validation=self.validation * val_samples * validations,
            counterfactual=self.counterfactual * val_samples * validations,
        )


def _stage_class(slot: Any) -> str:
    """What a slot's live seed costs, coarsely: the stages within one class run the same ops.

    Conservative on purpose: every move out of a class changes the signature, so a
    new profile is composed whenever the slot's cost might have changed.
    """
    if slot.state is None or slot.seed is None:
        return "empty"
    stage = slot.stage
    if stage in MEASURED_STAGES:
        return "measured"  # runs at its alpha, train and eval; counterfactual measured
    if stage == SeedStage.TRAINING:
        return "incubating" if slot.state.alpha == 0.0 else "blended"
    return "idle"  # GERMINATED: planted, not run yet


def _slot_signature(slot: Any) -> tuple[Hashable, ...]:
    stack = (tuple(report.seed_id for report in slot.fossil_reports), _widths(slot))
    stage_class = _stage_class(slot)
    if stage_class == "empty":
        return (stack, stage_class)
    return (stack, stage_class, slot.state.blueprint_id, slot.state.seed_id, bool(slot.isolate_gradients))


def _widths(slot: Any) -> tuple[tuple[str, int], ...]:
    """The widths the slot's merged width seeds made its layers: part of the host's structure."""
    return tuple((report.kind, report.width) for report in slot.widenings)


def architecture_signature(model: nn.Module) -> tuple[Hashable, ...]:
    """A key that changes whenever the FLOPs of `model`'s passes may change.

    Per slot: its merged widths and stack of fossils (part of the host: they run in every pass, at
    full strength), and its live seed's stage class, blueprint, seed identity and
    whether its input is detached (isolation spares the backward through the
    host's features). A module without `seed_slots` has a fixed architecture: the
    empty key.
    """
    slots = getattr(model, "seed_slots", {})
    return tuple((slot_id, *_slot_signature(slot)) for slot_id, slot in slots.items())


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode; every module's own train/eval flag is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True, slots=True)
class ModuleCost:
    """One seed module on one sample of its slot's features: its parameters and FLOPs.

    `training` is a train-mode forward and the backward to its parameters (an
    incubating seed: its input is detached); `training_through` also propagates
    the gradient to its input (a blended seed or a fossil: the host learns through it).
    """

    params: int
    inference: float
    training: float
    training_through: float


# A blueprint's cost depends on its factory, width, options and input shape alone: kept for
# the whole process (PPO environments and repeated runs plant the same blueprints again).
_MODULE_COSTS: dict[Hashable, ModuleCost] = {}
_PAIR = 2


def module_cost(
    topology: str, blueprint: str, channels: int, options: dict[str, Any], sample_shape: tuple[int, ...]
) -> ModuleCost:
    """The cost of a `blueprint` seed on features of `sample_shape` (one sample), measured once.

    The module is built on the meta device, so neither building it nor counting
    computes anything or draws a random number: checking a candidate before
    planting it never changes a run.
    """
    factory = BlueprintRegistry.get(topology, blueprint).factory
    key = (factory, channels, repr(sorted(options.items())), sample_shape)
    cost = _MODULE_COSTS.get(key)
    if cost is None:
        with torch.device("meta"):
            module = factory(channels, **options)
        # Two samples, not one: a BatchNorm in train mode needs more than one value per channel.
        features = torch.empty((_PAIR, *sample_shape), device="meta")
        with _eval_mode(module):
            with torch.no_grad(), flop_counter() as counter:
                module(features)
            inference = counter.get_total_flops() / _PAIR
            module.train()
            training = _train_flops(module, features) / _PAIR
            training_through = _train_flops(module, features.requires_grad_()) / _PAIR
        params = sum(p.numel() for p in module.parameters())
        cost = _MODULE_COSTS[key] = ModuleCost(params, inference, training, training_through)
    return cost


# Per sample, as a width seed's cost needs them: each producer's input shape, each consumer's
# input and output shapes.
WidthShapes = tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


def width_cost(seed: WidthSeed, site: WidthSite, shapes: WidthShapes) -> ModuleCost:
    """The cost of a width seed like `seed` at `site`: its parameters and one sample's FLOPs
    (`shapes`: each producer's input, each consumer's input and output, per sample) of the new
    units and their contribution to the consumers, counted on meta tensors. Its merge adds the
    same units to the host (which is then measured as it is)."""
    probe = WidthSeed(seed.units, seed.init, seed.noise, seed.fraction, kind=seed.kind)
    probe.build(site, "meta")
    xs, zs, outs = ([torch.empty((_PAIR, *shape), device="meta") for shape in group] for group in shapes)
    counts = []
    for train, through in ((False, False), (True, False), (True, True)):
        probe.train(train)
        with torch.set_grad_enabled(train), flop_counter() as counter:
            for x in (*xs, *zs):
                x.requires_grad_(through)
            features = [
                probe.consumer_features(out, xs[0], z, isolate=not through, part=part)
                for (part, _), z, out in zip(probe.consumers(), zs, outs)
            ]
            if site.activation is None:  # the units travel: each producer makes its own
                features += [probe.produced(x, part) for (part, _, _), x in zip(probe.producers(), xs)]
            if train:
                sum(f.sum() for f in features).backward()
        counts.append(counter.get_total_flops() / _PAIR)
    return ModuleCost(sum(p.numel() for p in probe.parameters()), *counts)


def _train_flops(module: nn.Module, features: Tensor) -> int:
    with flop_counter() as counter:
        module(features).sum().backward()  # the sum's backward is an expand: no FLOPs counted
    return counter.get_total_flops()


@dataclass(frozen=True, slots=True)
class _HostCosts:
    """Per-sample FLOPs of the host with nothing grown (every slot bare), and what the
    composition needs of it: each slot's counterfactual tail and the features' shape there."""

    inference: float
    training: float
    tails: dict[str, float] | None  # None: not a StagedHost (counterfactuals take the naive path)
    # Per slot, its stage alone (a counterfactual resuming at the stage runs it again); None as tails.
    stages: dict[str, float] | None
    shapes: dict[str, tuple[int, ...]]
    # Per (slot, kind) whose layer can widen: one sample's producer inputs, consumer inputs and outputs.
    width_shapes: dict[tuple[str, str], WidthShapes]


# The host's costs depend only on its structure and the input's shape: kept for the process.
_HOST_COSTS: dict[Hashable, _HostCosts] = {}


def _host_key(model: nn.Module, call: ModelCall, targets: Tensor | None) -> Hashable:
    """The model's structure outside its slots (module types, their configuration and
    parameter shapes), where its slots are, and the shapes of a batch: what the host's
    costs depend on."""
    slots = [name + "." for name, module in model.named_modules() if isinstance(module, SeedSlot)]
    parts = [
        (name, type(module).__qualname__, module.extra_repr(),
         tuple((n, tuple(t.shape)) for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]))
        for name, module in model.named_modules()
        if not any(name.startswith(prefix) or name + "." == prefix for prefix in slots)
    ]  # fmt: skip
    placed = tuple(getattr(model, "seed_slots", {}))  # a slot's key names where it acts
    shapes = tuple((tuple(t.shape), t.dtype) for t in call.tensors())
    return (tuple(parts), placed, call.keys(), shapes, None if targets is None else tuple(targets.shape))


@contextmanager
def _bare(slots: Iterable[Any]) -> Iterator[None]:
    """Every slot as if nothing had grown: no fossils, no live seed. For meta passes only
    (inside `functional_call`, where every tensor is a stand-in); restored afterwards."""
    stacks = [(slot, slot.fossils) for slot in slots]
    with ExitStack() as off:
        for slot, _ in stacks:
            slot.fossils = nn.ModuleList()
            off.enter_context(slot.force_alpha(0.0))
        try:
            yield
        finally:
            for slot, fossils in stacks:
                slot.fossils = fossils


class _Call(nn.Module):
    """Lets `functional_call` run any function of `model` (not only its forward)."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def _meta(tensor: Tensor) -> Tensor:
    return torch.empty_like(tensor, device="meta").requires_grad_(tensor.requires_grad)


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What a model is called with, as meta stand-ins: positional and keyword arguments.

    From the model's input as `esper.graft` takes it: a tensor, a tuple of positional
    arguments or a dict of keyword arguments, or a `ModelCall` of both (tensors in them
    become meta tensors of the same shape and dtype; other values are passed as they are).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @classmethod
    def of(cls, inputs: Any) -> ModelCall:
        def meta(value: Any) -> Any:
            return torch.empty_like(value, device="meta") if isinstance(value, Tensor) else value

        if isinstance(inputs, ModelCall):
            return cls(tuple(meta(v) for v in inputs.args), {k: meta(v) for k, v in inputs.kwargs.items()})
        if isinstance(inputs, dict):
            return cls((), {key: meta(value) for key, value in inputs.items()})
        if isinstance(inputs, tuple):
            return cls(tuple(meta(value) for value in inputs), {})
        return cls((meta(inputs),), {})

    def tensors(self) -> list[Tensor]:
        return [v for v in (*self.args, *self.kwargs.values()) if isinstance(v, Tensor)]

    def keys(self) -> tuple[str, ...]:
        return tuple(self.kwargs)

    @property
    def batch(self) -> int:
        """Samples in the call: the leading size of its first tensor (0 without one)."""
        first = next((t for t in self.tensors() if t.ndim > 0), None)
        return 0 if first is None else first.shape[0]

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)


def _scalar(output: Any) -> Tensor:
    """A loss stand-in for a model whose loss the meter does not know: the sum of its
    floating-point outputs. Its backward is the same as any loss's up to the output (a sum's
    backward is an expand, and FlopCounterMode counts no loss function)."""
    if isinstance(output, Tensor):
        return output.float().sum() if output.is_floating_point() else torch.zeros((), device=output.device)
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    parts = [_scalar(item) for item in items]
    if not parts:
        raise TypeError(f"no floating-point tensor in the model's output ({type(output).__name__})")
    return torch.stack(parts).sum()


class FlopMeter:
    """Per-sample FLOPs of a model's current architecture; see the module docstring.

    `model` is a `MorphogeneticModel`, `esper.graft`'s model or any module;
    `example_batch` is one (inputs, targets) batch of the task (only its shapes and
    dtypes are kept). `inputs` is what the model is called with, as `esper.graft`'s
    `example_input`: a tensor, a tuple of positional arguments or a dict of keyword
    arguments; its first tensor's leading size is the batch's samples. `targets` may
    be None for a model whose loss is not the task's cross-entropy (a user's model in
    their own loop): a training step then backpropagates the sum of its outputs, which
    costs the same (see `_scalar`).

    Measured once, composed after: the host with nothing grown is counted once
    (whole, on meta tensors: inference, a training step, each slot's counterfactual
    tail); each seed and fossil adds its own module's cost (`module_cost`: a seed
    keeps its input's shape and leaves the host's operations as they are, so the
    costs add up exactly). So a growing run pays for one count of its host, not
    one per architecture: a profile is a sum, cached per `architecture_signature`.
    """

    def __init__(self, model: nn.Module, example_batch: tuple[Tensor, Tensor]) -> None:
        inputs, targets = example_batch
        self._call = ModelCall.of(inputs)
        if self._call.batch == 0:
            shapes = [tuple(t.shape) for t in self._call.tensors()]
            raise ValueError(f"FlopMeter needs a batch of at least one sample, got inputs of shapes {shapes}")
        self.model = model
        self._targets = None if targets is None else torch.empty_like(targets, device="meta")
        self._cache: dict[tuple[Hashable, ...], FlopProfile] = {}
        self._host_costs: _HostCosts | None = None
        self._host_widths: tuple[tuple[tuple[str, int], ...], ...] = ()  # the merged widths it was measured at
        self.measurements = 0  # profiles composed (not served from the cache)

    @property
    def slots(self) -> dict[str, Any]:
        return getattr(self.model, "seed_slots", {})

    def slot_input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per slot, the per-sample shape of the features entering its live seed (seeds keep
        the shape, so a stack never changes it)."""
        return self._host().shapes

    def seed_cost(self, slot_id: str, blueprint: str) -> ModuleCost:
        """What a seed of `blueprint` in slot `slot_id` costs (and adds: its parameters)."""
        slot = self.slots[slot_id]
        host = self._host()
        options = slot.blueprint_kwargs(blueprint)
        factory = BlueprintRegistry.get(slot.task_config.topology, blueprint).factory
        with torch.device("meta"):
            seed = factory(slot.channels, **options)
        if isinstance(seed, WidthSeed):
            key = (slot_id, seed.kind)
            if key not in host.width_shapes:
                raise ValueError(f"slot '{slot_id}': '{blueprint}' finds no layer to widen there")
            return width_cost(seed, site_of(self.model.host, slot, seed.kind), host.width_shapes[key])
        shape = host.shapes[slot_id]
        return module_cost(slot.task_config.topology, blueprint, slot.channels, slot.blueprint_kwargs(blueprint), shape)

    def committed_inference(self) -> float:
        """Inference FLOPs per sample of the host with its fossils, every live seed left out:
        what growth has kept so far."""
        return self._host().inference + sum(
            self.seed_cost(slot_id, fossil.blueprint_id).inference
            for slot_id, slot in self.slots.items()
            for fossil in slot.fossil_reports
        )

    def profile(self) -> FlopProfile:
        """The current architecture's profile, composed now only if it is new."""
        key = architecture_signature(self.model)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._compose()
            self.measurements += 1
        return cached

    # ------------------------------------------------------------------ composing
    def _compose(self) -> FlopProfile:
        host = self._host()
        inference, training = host.inference, host.training
        at: dict[str, float] = {}  # what each slot adds to an eval pass: its fossils, a blended seed
        live: dict[str, float] = {}  # of that, its live seed's share
        for slot_id, slot in self.slots.items():
            fossils = [self.seed_cost(slot_id, f.blueprint_id) for f in slot.fossil_reports]
            training += sum(cost.training_through for cost in fossils)
            live[slot_id] = 0.0
            stage_class = _stage_class(slot)
            if stage_class in ("incubating", "blended", "measured"):
                cost = self.seed_cost(slot_id, slot.state.blueprint_id)
                training += cost.training if slot.isolate_gradients else cost.training_through
                if stage_class != "incubating":  # an incubating seed is skipped in eval
                    live[slot_id] = cost.inference
            at[slot_id] = sum(cost.inference for cost in fossils) + live[slot_id]
            inference += at[slot_id]
        measured = [slot_id for slot_id, slot in self.slots.items() if slot.stage in MEASURED_STAGES]
        naive = {slot_id: inference - live[slot_id] for slot_id in measured}
        fast = None
        if host.tails is not None:
            stage = self.model.host.stage_index
            fast = {}
            for slot_id in measured:
                fast[slot_id] = host.tails[slot_id] + sum(at[j] for j in self.slots if stage(j) > stage(slot_id))
                if self.slots[slot_id].seed_acts_in_stage:  # resumed at its stage: it and the fossils run
                    fast[slot_id] += host.stages[slot_id] + at[slot_id] - live[slot_id]
        return FlopProfile(inference, training, fast, naive)

    def _host(self) -> _HostCosts:
        widths = tuple(_widths(slot) for slot in self.slots.values())
        if self._host_costs is None or widths != self._host_widths:
            self._host_widths = widths
            key = _host_key(self.model, self._call, self._targets)
            if key not in _HOST_COSTS:
                _HOST_COSTS[key] = self._measure_host()
            self._host_costs = _HOST_COSTS[key]
        return self._host_costs

    # ------------------------------------------------------------------ measuring
    def _measure_host(self) -> _HostCosts:
        """Inference, a training step and each slot's counterfactual tail of the bare host, and
        the features' shape at each slot; per sample."""
        model, slots = self.model, self.slots
        shapes: dict[str, tuple[int, ...]] = {}
        tails: dict[str, float] | None = None
        stages: dict[str, float] | None = None
        host = getattr(model, "host", None)
        sites = _width_sites(host, slots)
        width_shapes = {
            key: ([()] * (1 + len(site.tied)), [()] * (1 + len(site.more_consumers)), [()] * (1 + len(site.more_consumers)))
            for key, site in sites.items()
        }

        call, targets = self._call, self._targets

        def inference_pass() -> None:
            with _bare(slots.values()), ExitStack() as recording:
                for key, slot in slots.items():
                    recording.enter_context(slot.recording_seed_input(functools.partial(_record_shape, shapes, key)))
                for key, site in sites.items():
                    recording.enter_context(_recording_site(site, width_shapes[key]))
                call(model)

        def tails_pass() -> None:
            with _bare(slots.values()):
                taps: dict[str, Tensor | None] = dict.fromkeys(slots)
                entering: dict[str, Tensor] = {}
                with ExitStack() as recording:
                    for key in slots:
                        stage = host.trunk[host.stage_index(key)]
                        hook = functools.partial(_record_entry, entering, key)
                        recording.callback(stage.register_forward_pre_hook(hook).remove)
                    host.run(host.stem(*call.args), taps=taps)  # the shared pass: validation, not extra
                for key, features in taps.items():
                    with flop_counter() as counter:
                        host.run(features, host.stage_index(key) + 1)
                    tails[key] = counter.get_total_flops() / batch
                    with flop_counter() as counter:
                        host.trunk[host.stage_index(key)](entering[key])
                    stages[key] = counter.get_total_flops() / batch

        def train_step() -> None:
            with _bare(slots.values()):
                output = call(model)
                loss = _scalar(output) if targets is None else loss_and_correct(output, targets)[0]
                loss.backward()  # into the meta stand-ins' .grad: the real parameters are untouched

        batch = call.batch
        with _eval_mode(model):  # every module's flag is restored afterwards
            with torch.no_grad():
                inference = self._count(inference_pass)
                if isinstance(host, StagedHost) and slots:
                    tails, stages = {}, {}
                    self._run_on_meta(tails_pass)
            model.train()
            with torch.enable_grad():
                training = self._count(train_step)
        widths = {key: tuple(tuple(group) for group in found) for key, found in width_shapes.items()}
        return _HostCosts(inference / batch, training / batch, tails, stages, shapes, widths)

    def _count(self, fn: Callable[[], None]) -> int:
        with flop_counter() as counter:
            self._run_on_meta(fn)
        return counter.get_total_flops()

    def _run_on_meta(self, fn: Callable[[], None]) -> None:
        """`fn()` with every parameter and buffer of the model swapped for a meta stand-in.

        Any failure is one `RuntimeError` saying why: the forward is the user's code
        when the model is theirs (`esper.graft`, `--model`), and it may do anything
        that needs real values.
        """
        model = self.model
        tensors = {f"model.{name}": _meta(p) for name, p in model.named_parameters()}
        tensors.update({f"model.{name}": _meta(b) for name, b in model.named_buffers()})
        try:
            torch.func.functional_call(_Call(model, fn), tensors, ())
        except Exception as err:
            first = (str(err).splitlines() or [""])[0]
            name = type(getattr(model, "host", model)).__name__  # the user's model, when grafted
            raise RuntimeError(
                f"cannot count the FLOPs of {name}: its forward failed on meta "
                f"tensors ({type(err).__name__}: {first}); FLOPs are measured without data, so the "
                "forward must not read tensor values (e.g. .item() or data-dependent branches)"
            ) from err


def _record_entry(entering: dict[str, Tensor], key: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    entering[key] = args[0]


def _record_shape(shapes: dict[str, tuple[int, ...]], key: str, features: Tensor) -> None:
    shapes[key] = tuple(features.shape[1:])


def _width_sites(host: Any, slots: dict[str, Any]) -> dict[tuple[str, str], WidthSite]:
    """The (slot, kind) sites a width seed can widen (`width.site_of`; others have none, as a
    stage the host no longer finds its layers in, e.g. one a built-in seed replaced)."""
    sites = {}
    for key, slot in slots.items():
        for kind in KINDS:
            try:
                sites[key, kind] = site_of(host, slot, kind)
            except (AttributeError, ValueError):
                continue
    return sites


@contextmanager
def _recording_site(site: WidthSite, found: tuple[list[tuple[int, ...]], ...]) -> Iterator[None]:
    """Record one sample's shape of the input of each of `site`'s producers, and of the input and
    output of each of its consumers (`found`: three lists, one entry per producer or consumer)."""

    def layer(i: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        found[0][i] = tuple(args[0].shape[1:])

    def consumer(i: int, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        found[1][i], found[2][i] = tuple(args[0].shape[1:]), tuple(output.shape[1:])

    producers = [site.layer, *(tied for tied, _ in site.tied)]
    handles = [module.register_forward_pre_hook(functools.partial(layer, i)) for i, module in enumerate(producers)]
    handles += [
        module.register_forward_hook(functools.partial(consumer, i))
        for i, module in enumerate([site.consumer, *site.more_consumers])
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
