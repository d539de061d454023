"""Width seeds: new units for a host layer, grown behind it as a seed and merged into it when kept.

A width seed sits in a `SeedSlot` like any other seed and passes through the same
stages and gates, but it does not act on the slot's features. It adds `units` new
units to the layer that produces them (`WidthSite.layer`, with its BatchNorm
entries) and feeds them into the layer that consumes them (`WidthSite.consumer`):

    n     = activation(norm_new(layer_new(x)))     x: the layer's input (a pre-hook)
    delta = consumer_new(n) [+ split(z[idx])]      z: the consumer's input (host units)

and hands `consumer_out + delta` to the slot's stage logic (`SeedSlot.run_seed`) as the
seed's features, from a forward hook on the consumer. At a site without an `activation`
(an `esper.graft`ed model's layer, whose own code runs between the layer and its consumer)
the new units travel with the layer's output instead: appended to it after the norm, carried
by the model's code (element-wise ops, pooling: they act on each unit alone) and split off
again before the consumer, which gets exactly the host's input. So alpha 0 (TRAINING, or the
counterfactual) gives the host's output bitwise, TRAINING gives the new weights the
task gradient (straight-through) and the host its own, and BLENDING scales exactly the
new units' outgoing contribution. On FOSSILIZED the seed is merged (`WidthSeed.merge`):
the layer, its norm and the consumer get new, wider parameters, and no seed is left.

Initialisations (`init`), both O(parameters) to build, with no data, gradient
statistics or extra forward passes (so a growth step spends no FLOPs beyond training):

- "net2wider" (the default): each new unit copies a randomly chosen host unit
  (incoming weights, bias, norm entries and running statistics) plus Gaussian noise of
  `noise` times the layer's weight std, to break the symmetry; the copied unit's
  outgoing weights are split between it and its copies (Net2WiderNet): the seed's
  `out_weight` takes W[:, j] / (copies + 1) and `split` (folded into the host's own
  column on merge) takes away the same from the original, so at alpha 1 the function
  is preserved up to the noise (exactly with noise 0). Default because the new units
  start as trained features that the task gradient moves apart, where zero-outgoing
  units start as random features whose incoming weights get no gradient until their
  outgoing weights have moved (the field's function-preserving baseline: Net2Net, LEMON).
- "zero": random incoming weights (the layer's default initialisation), zero outgoing
  weights: the function is preserved at every alpha, exactly.

A slot's layer may offer more than one site (`kind`): "units" (the layer's own units: a
CNN block's channels, an MLP layer's or a transformer MLP's hidden units) and "heads" (a
transformer layer's attention heads). A unit may span several rows of the layer and columns
of the consumer (`WidthSite.unit_size`: a head's head_dim) and the layer's output may hold
`parts` blocks of every unit's rows (attention's queries | keys | values); everything here
(copying, merging, the optimiser's state) works on units in that layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from esper.leyline import FossilReport

INITS = ("net2wider", "zero")
KINDS = ("units", "heads")


@dataclass(frozen=True)
class WidthSite:
    """Where a width seed at a slot grows: the modules that change with the layer's width.

    `layer` produces the units (output channels or features), `norm` (optional, with
    `unit_size` 1) has an entry per unit, `activation` maps the normalised units to what
    `consumer` takes (e.g. ReLU and pooling, or attention: it must act on each unit alone).
    `at_slot`: the slot's features are these units (so they widen too), not a width inside
    the stage. A unit is `unit_size` consecutive rows in each of the `parts` equal blocks of
    the layer's output, and `unit_size` consecutive inputs of the consumer (an attention
    head: head_dim rows of each of q, k and v, head_dim columns of the output projection).
    `activation` None: the model's own code does, on the units appended to the norm's output
    (`esper.graft`'s sites, found by `kasmina.width_group`). A group (a residual network's
    layers whose outputs are added together) has more producers, each with its norm (`tied`:
    they grow the same units, which the additions then sum), and more consumers
    (`more_consumers`); only at a site without `activation`, where the model's code adds.
    """

    layer: nn.Conv2d | nn.Linear
    norm: nn.BatchNorm2d | nn.BatchNorm1d | None
    activation: Callable[[Tensor], Tensor] | None
    consumer: nn.Conv2d | nn.Linear
    at_slot: bool = True
    parts: int = 1
    unit_size: int = 1
    tied: tuple[tuple[nn.Conv2d | nn.Linear, nn.BatchNorm2d | nn.BatchNorm1d | None], ...] = ()
    more_consumers: tuple[nn.Conv2d | nn.Linear, ...] = ()

    @property
    def units(self) -> int:
        return self.layer.weight.shape[0] // (self.parts * self.unit_size)

    def rows(self, tensor: Tensor, idx: Tensor) -> Tensor:
        """The layer rows (of its weight, bias or their state) of units `idx`, in the layer's
        layout: each part's rows of those units, part after part."""
        blocks = tensor.reshape(self.parts, -1, self.unit_size, *tensor.shape[1:])
        return blocks[:, idx].reshape(-1, *tensor.shape[1:])

    def columns(self, idx: Tensor) -> Tensor:
        """The consumer's inputs that units `idx` feed."""
        size = self.unit_size
        return (idx[:, None] * size + torch.arange(size, device=idx.device)).flatten()


def site_of(host: nn.Module, slot: nn.Module, kind: str = "units") -> WidthSite:
    """The layer a width seed of `kind` at `slot` widens: the slot's own site (`esper.graft`'s
    `widen` fixes its units when the slot is made), else the one the host names
    (`width_site(slot_id, kind)`); a `ValueError` saying why when there is none."""
    if kind == "units" and getattr(slot, "width_site", None) is not None:
        return slot.width_site
    width_site = getattr(host, "width_site", None)
    if width_site is None:
        raise ValueError(
            f"slot '{slot.slot_id}': {type(host).__name__} has no layers Esper can widen there "
            "(width seeds grow the built-in hosts' layers and those named in esper.graft(..., widen=[...]))"
        )
    return width_site(slot.slot_id, kind)


@dataclass(frozen=True, slots=True)
class WidthReport(FossilReport):
    """A fossilized width seed, merged into its slot's layer: `units_added` units of `kind`,
    making it `width` wide (`params`: the parameters that added). Kept by the slot in
    `widenings`, not in its stack, so a checkpoint can widen a fresh host the same way before
    its weights load; a kept seed like any fossil for whoever reads what growth kept
    (`EpochSignals.fossils`)."""

    units_added: int
    width: int
    kind: str = "units"


def width_key(slot_id: str, kind: str) -> str:
    """How a run's summary and a compare's static arms name the site of `kind` at `slot_id`:
    the slot id for its units (as before there were kinds), "heads@layer1" for the rest."""
    return slot_id if kind == "units" else f"{kind}@{slot_id}"


def parse_width_key(key: str) -> tuple[str, str]:
    """(slot_id, kind) from a `width_key`."""
    kind, at, slot_id = key.rpartition("@")
    return (slot_id, kind) if at else (key, "units")


@dataclass(frozen=True)
class Merge:
    """What a merge replaced, for the optimiser: each old parameter (the host's, or a
    neighbouring live width seed's), its wider successor, the seed parameter that became the
    new part (None: zeros, with no state), the axis it was joined along and in how many
    parts (`join`)."""

    widened: list[tuple[nn.Parameter, nn.Parameter, nn.Parameter | None, int, int]]


def join(old: Tensor, new: Tensor, axis: int, parts: int = 1) -> Tensor:
    """`old` with `new` appended along `axis`, both read as `parts` equal blocks there: each of
    old's blocks followed by the matching block of new (parts 1: a plain concatenation). How
    merged units enter a layer laid out in parts (attention's q | k | v), and their state."""
    old, new = old.movedim(axis, 0), new.movedim(axis, 0)
    blocks = [t.reshape(parts, -1, *t.shape[1:]) for t in (old, new)]
    return torch.cat(blocks, dim=1).reshape(-1, *old.shape[1:]).movedim(0, axis)


def _unit_axis(layer: nn.Module) -> int:
    """The axis of a layer's input that holds the units: channels of a conv, features of a Linear."""
    return 1 if isinstance(layer, nn.Conv2d) else -1


def _consume(consumer: nn.Conv2d | nn.Linear, units: Tensor, weight: Tensor) -> Tensor:
    """The consumer's operation on `units` with `weight` in its place, no bias."""
    if isinstance(consumer, nn.Conv2d):
        return F.conv2d(
            units,
            weight,
            None,
            consumer.stride,
            consumer.padding,
            consumer.dilation,
            consumer.groups,
        )
    return F.linear(units, weight)


def _produce(
    layer: nn.Conv2d | nn.Linear, x: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight, bias)


class _Units(nn.Module):
    """The new units of one more producer of a group (`WidthSite.tied`): its `weight`, `bias`
    and `norm`, as `WidthSeed` holds them for the site's own layer."""

    def __init__(self) -> None:
        super().__init__()
        self._x: Tensor | None = None


class _Outputs(nn.Module):
    """The new units' weights into one more consumer of a group (`WidthSite.more_consumers`):
    `out_weight` and `split`, as `WidthSeed` holds them for the site's own consumer."""

    def __init__(self) -> None:
        super().__init__()
        self._in_flight: Tensor | None = None


class WidthSeed(nn.Module):
    """`units` new units for the layer at a slot (see the module docstring).

    Built without parameters (the blueprint factory knows only the slot's width);
    `attach(host, slot)` (called by `SeedSlot.germinate`) finds the slot's `WidthSite`,
    builds the new weights and places the hooks; `release()` removes them. Its own
    forward, on the slot's features, is the identity: it acts at the consumer. The site's
    own layer and consumer have their weights here (`weight`, `bias`, `norm`, `out_weight`,
    `split`); a group's further producers and consumers in `tied_units` and `more_outputs`.
    """

    def __init__(
        self,
        units: int | None = None,
        init: str = "net2wider",
        noise: float = 0.01,
        fraction: float = 1.0,
        *,
        kind: str = "units",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"width seeds widen one of {', '.join(KINDS)}, got kind={kind!r}")
        if init not in INITS:
            raise ValueError(
                f"width seeds initialise by one of {', '.join(INITS)}, got init={init!r}"
            )
        if units is not None and units < 1:
            raise ValueError(f"a width seed adds at least one unit, got units={units}")
        if noise < 0:
            raise ValueError(f"a width seed's noise must be >= 0, got {noise}")
        if not fraction > 0:
            raise ValueError(f"a width seed adds a fraction > 0 of its layer's units, got fraction={fraction}")
        self.units, self.init, self.noise, self.fraction, self.kind = units, init, noise, fraction, kind
        self.site: WidthSite | None = None
        self.tied_units = nn.ModuleList()
        self.more_outputs = nn.ModuleList()
        self._handles: list[RemovableHandle] = []
        self._x: Tensor | None = None
        self._in_flight: Tensor | None = None  # the new units as they reached the consumer

    def forward(self, features: Tensor) -> Tensor:
        return features

    def producers(self) -> list[tuple[nn.Module, nn.Conv2d | nn.Linear, nn.Module | None]]:
        """(where its new units' weights are, the layer, its norm) for every producer."""
        site = self.site
        tied = [(part, layer, norm) for part, (layer, norm) in zip(self.tied_units, site.tied)]
        return [(self, site.layer, site.norm), *tied]

    def consumers(self) -> list[tuple[nn.Module, nn.Conv2d | nn.Linear]]:
        """(where the new units' weights into it are, the consumer) for every consumer."""
        site = self.site
        return [(self, site.consumer), *zip(self.more_outputs, site.more_consumers)]

    # ------------------------------------------------------------------ building
    def attach(self, host: nn.Module, slot: nn.Module) -> None:
        """Build the new units for `slot`'s layer in `host` and place the hooks.

        `site_of(host, slot, kind)` names the layer; a slot whose layer cannot be widened
        that way raises `ValueError` saying why.
        """
        refused = self.refusal(host, slot)
        if refused is not None:
            raise ValueError(refused)
        site = site_of(host, slot, self.kind)
        units = self.build(site, site.layer.weight.device)
        with torch.no_grad():
            if self.init == "net2wider":
                self._net2wider(site, units)
            else:
                for part, layer, _ in self.producers():
                    like = layer.weight
                    scratch = type(layer)(
                        *_layer_args(layer, part.weight.shape[0]), device=like.device, dtype=like.dtype
                    )
                    part.weight.copy_(scratch.weight)
                    if part.bias is not None:
                        part.bias.copy_(scratch.bias)
        self._handles = []
        for part, layer, norm in self.producers():
            self._handles.append(layer.register_forward_pre_hook(_Capture(self, part)))
            if site.activation is None:  # the units travel through the model's own code
                self._handles.append((norm or layer).register_forward_hook(_Append(slot, self, part)))
        for part, consumer in self.consumers():
            if site.activation is None:
                # First: the consumer's other hooks (another seed's capture) see the host's input.
                self._handles.append(consumer.register_forward_pre_hook(_Split(self, part), prepend=True))
            # First: a hook that follows on the consumer's output (its own slot, or its own width
            # seed appending units) sees the output with these units' contribution in.
            self._handles.append(consumer.register_forward_hook(_AtConsumer(slot, self, part), prepend=True))

    def refusal(self, host: nn.Module, slot: nn.Module) -> str | None:
        """Why this width seed cannot grow at `slot` in `host` now; None when it can."""
        try:
            site = site_of(host, slot, self.kind)
        except ValueError as err:
            return str(err)
        if site.at_slot and len(slot.fossils):
            return (
                f"slot '{slot.slot_id}': a width seed cannot widen a layer whose output goes "
                f"through {len(slot.fossils)} fossilized seed(s) of its width; widen another slot"
            )
        return None

    def units_for(self, site: WidthSite) -> int:
        """The units this seed adds at `site`: `units`, else `fraction` of the layer's (default all: doubling)."""
        return self.units or max(1, round(self.fraction * site.units))

    def build(self, site: WidthSite, device: torch.device | str) -> int:
        """The new units' parameters for `site` on `device` (zeros; `attach` initialises them)."""
        units = self.units_for(site)
        dtype = site.layer.weight.dtype
        self.site = site
        self.tied_units = nn.ModuleList(_Units() for _ in site.tied)
        self.more_outputs = nn.ModuleList(_Outputs() for _ in site.more_consumers)
        rows = site.parts * units * site.unit_size
        for part, layer, norm in self.producers():
            part.weight = nn.Parameter(
                torch.zeros((rows, *layer.weight.shape[1:]), device=device, dtype=dtype)
            )
            part.bias = (
                None
                if layer.bias is None
                else nn.Parameter(torch.zeros(rows, device=device, dtype=dtype))
            )
            part.norm = None
            if norm is not None:
                part.norm = type(norm)(units, norm.eps, norm.momentum, device=device, dtype=dtype)
        for part, consumer in self.consumers():
            out_shape = list(consumer.weight.shape)
            out_shape[1] = units * site.unit_size
            part.out_weight = nn.Parameter(torch.zeros(out_shape, device=device, dtype=dtype))
            part.split = None
            if self.init == "net2wider":
                part.split = nn.Parameter(torch.zeros_like(part.out_weight))
        if self.init == "net2wider":
            self.register_buffer("idx", torch.zeros(units, device=device, dtype=torch.long))
        return units

    def _net2wider(self, site: WidthSite, units: int) -> None:
        """Every producer's new units copy the same host units (`idx`: the group's units are
        added together) and every consumer takes the copies' share of their outgoing weights."""
        width = site.units
        generator_device = site.layer.weight.device
        idx = torch.randperm(width, device=generator_device)[: min(units, width)]
        if units > width:  # more new units than host units: some are copied more than once
            idx = torch.cat([idx, torch.randint(width, (units - width,), device=generator_device)])
        self.idx.copy_(idx)
        copies = torch.bincount(idx, minlength=width)
        for part, layer, norm in self.producers():
            std = layer.weight.std() if layer.weight.numel() > 1 else layer.weight.new_ones(())
            part.weight.copy_(
                site.rows(layer.weight, idx) + self.noise * std * torch.randn_like(part.weight)
            )
            if part.bias is not None:
                part.bias.copy_(site.rows(layer.bias, idx))
            if part.norm is not None:
                part.norm.weight.copy_(norm.weight[idx])
                part.norm.bias.copy_(norm.bias[idx])
                part.norm.running_mean.copy_(norm.running_mean[idx])
                part.norm.running_var.copy_(norm.running_var[idx])
        shares = (copies[idx] + 1).repeat_interleave(site.unit_size)
        for part, consumer in self.consumers():
            shape = [1] * consumer.weight.dim()
            shape[1] = units * site.unit_size
            share = consumer.weight.index_select(1, site.columns(idx)) / shares.to(consumer.weight.dtype).view(shape)
            part.out_weight.copy_(share)
            part.split.copy_(-share)

    def release(self) -> None:
        """Remove the hooks (the seed was culled, merged or replaced)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for part, _, _ in self.producers() if self.site is not None else ():
            part._x = None
        for part, _ in self.consumers() if self.site is not None else ():
            part._in_flight = None

    # ------------------------------------------------------------------ forward
    def produced(self, x: Tensor, part: nn.Module | None = None) -> Tensor:
        """The new units out of a producer (the site's layer, or `part`'s) and its norm, from
        that layer's input `x`."""
        part = part or self
        layer = next(layer for held, layer, _ in self.producers() if held is part)
        units = _produce(layer, x, part.weight, part.bias)
        return units if part.norm is None else part.norm(units)

    def new_units(self, x: Tensor | None, consumed: Tensor, part: nn.Module | None = None) -> Tensor:
        """The new units as a consumer (the site's, or `part`'s) takes them: from the layer's
        input `x` through the site's activation, or as they reached it through the model's own
        code. (Priced on meta tensors, `flops.width_cost`, nothing has travelled: zeros of the
        consumer's input shape stand in, the code in between uncounted as the host's
        activations are.)"""
        site, part = self.site, part or self
        if site.activation is not None:
            return site.activation(self.produced(x))
        units, part._in_flight = part._in_flight, None
        if units is None:
            shape = list(consumed.shape)
            shape[_unit_axis(site.consumer)] = part.out_weight.shape[1]
            units = consumed.new_zeros(shape)
        return units

    def consumer_features(
        self, base: Tensor, x: Tensor | None, consumed: Tensor, isolate: bool, part: nn.Module | None = None
    ) -> Tensor:
        """A consumer's output (the site's, or `part`'s) with the new units in: `base` (its
        output, detached when isolating) plus their contribution; `x` is the layer's input
        (None where the units travel with the model's own code), `consumed` the consumer's
        (both detached when isolating)."""
        if isolate:
            x = None if x is None else x.detach()
            consumed = consumed.detach()
        part = part or self
        consumer = next(consumer for held, consumer in self.consumers() if held is part)
        delta = _consume(consumer, self.new_units(x, consumed, part), part.out_weight)
        if part.split is not None:
            delta = delta + _consume(
                consumer, consumed.index_select(_unit_axis(consumer), self.site.columns(self.idx)), part.split
            )
        return base + delta

    # ------------------------------------------------------------------ merging
    @property
    def units_added(self) -> int:
        """How many units the seed adds (built: `units`, or the layer's width by default)."""
        return self.weight.shape[0] // (self.site.parts * self.site.unit_size)

    def added_params(self) -> int:
        """Parameters the merged units add to the host (`split` folds into existing weights)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.endswith("split"))

    def merge(self) -> Merge:
        """Make every producer, its norm and every consumer wider by the new units (the seed's
        weights at full strength), in place of their old parameters; releases the hooks.

        A live width seed next to this one (its consumer is one of these producers, or its
        layer one of these consumers) follows: its weights get zero rows or columns for the
        new units, so it computes what it did and stays in step with the layers it reads and
        writes.
        """
        site = self.site
        widened: list[tuple[nn.Parameter, nn.Parameter, nn.Parameter | None, int, int]] = []
        rows, columns = self.weight.shape[0], self.out_weight.shape[1]
        with torch.no_grad():
            for _, layer, _ in self.producers():
                for hook in layer._forward_hooks.values():  # seeds adding to this layer's output
                    if isinstance(hook, _AtConsumer) and hook.seed is not self:
                        _pad(hook.part, "out_weight", 0, rows, site.parts, widened)
                        if hook.part.split is not None:
                            _pad(hook.part, "split", 0, rows, site.parts, widened)
            for _, consumer in self.consumers():
                for hook in consumer._forward_pre_hooks.values():  # seeds widening the consumer
                    if isinstance(hook, _Capture) and hook.seed is not self:
                        _pad(hook.part, "weight", 1, columns, 1, widened)

        def grow(
            module: nn.Module,
            name: str,
            extra: nn.Parameter,
            axis: int,
            parts: int = 1,
            base: Tensor | None = None,
        ) -> None:
            old = getattr(module, name)
            kept = old.detach() if base is None else base
            new = nn.Parameter(join(kept, extra.detach(), axis, parts))
            setattr(module, name, new)
            widened.append((old, new, extra, axis, parts))

        with torch.no_grad():
            for part, layer, norm in self.producers():
                grow(layer, "weight", part.weight, 0, site.parts)
                if part.bias is not None:
                    grow(layer, "bias", part.bias, 0, site.parts)
                if norm is not None:
                    grow(norm, "weight", part.norm.weight, 0)
                    grow(norm, "bias", part.norm.bias, 0)
                    norm.running_mean = torch.cat([norm.running_mean, part.norm.running_mean])
                    norm.running_var = torch.cat([norm.running_var, part.norm.running_var])
                    norm.num_features += part.norm.num_features
                sync_size(layer)
            for part, consumer in self.consumers():
                kept = consumer.weight.detach()
                if part.split is not None:
                    kept = kept.index_add(1, site.columns(self.idx), part.split.detach())
                grow(consumer, "weight", part.out_weight, 1, base=kept)
                sync_size(consumer)
        self.release()
        return Merge(widened)


def _pad(part: nn.Module, name: str, axis: int, count: int, parts: int, widened: list) -> None:
    """Join `count` zero entries to `part`'s parameter `name` along `axis` in `parts` (a
    neighbour merged)."""
    old = getattr(part, name)
    shape = list(old.shape)
    shape[axis] = count
    new = nn.Parameter(join(old.detach(), old.new_zeros(shape), axis, parts))
    setattr(part, name, new)
    widened.append((old, new, None, axis, parts))


class _Capture:
    """Forward pre-hook on a producer: its input is what its new units read."""

    __slots__ = ("part", "seed")

    def __init__(self, seed: WidthSeed, part: nn.Module) -> None:
        self.seed, self.part = seed, part

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.part._x = args[0]


class _Append:
    """Forward hook on a producer's norm (or the producer): its output with its new units
    appended, for the model's own code to carry to the consumers (a site without an
    `activation`). Their input is detached while the slot isolates the seed, as at the consumer."""

    __slots__ = ("part", "seed", "slot")

    def __init__(self, slot: nn.Module, seed: WidthSeed, part: nn.Module) -> None:
        self.slot, self.seed, self.part = slot, seed, part

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        part = self.part
        x, part._x = part._x, None
        if self.slot.isolate_gradients:
            x = x.detach()
        units = self.seed.produced(x, part).to(output.dtype)
        return torch.cat([output, units], dim=_unit_axis(self.seed.site.layer))


class _Split:
    """Forward pre-hook on a consumer: the appended new units come off its input (kept for
    `WidthSeed.new_units`), so it computes exactly what the host's does."""

    __slots__ = ("part", "seed")

    def __init__(self, seed: WidthSeed, part: nn.Module) -> None:
        self.seed, self.part = seed, part

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        consumed = args[0]
        axis, units = _unit_axis(module), self.part.out_weight.shape[1]
        host = consumed.shape[axis] - units
        self.part._in_flight = consumed.narrow(axis, host, units)
        # contiguous: the consumer then computes on the very layout the host's input has (a
        # strided view may take another kernel, and the host's output would not be bitwise its own).
        return (consumed.narrow(axis, 0, host).contiguous(), *args[1:])


class _AtConsumer:
    """Forward hook on a consumer: its output through the slot's stage logic, the seed's
    features being that output plus the new units' contribution."""

    __slots__ = ("part", "seed", "slot")

    def __init__(self, slot: nn.Module, seed: WidthSeed, part: nn.Module) -> None:
        self.slot, self.seed, self.part = slot, seed, part

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        seed, part, consumed = self.seed, self.part, args[0]
        carried = seed.site.activation is None  # no layer input needed: the units came along

        def features(base: Tensor, isolate: bool) -> Tensor:
            if seed._x is None and not carried:
                raise RuntimeError(
                    "width seed: the consumer ran without the layer before it (a pass that starts "
                    "between them must force the slot's alpha to 0)"
                )
            return seed.consumer_features(base, None if carried else seed._x, consumed, isolate, part)

        try:
            return self.slot.run_seed(output, features)
        finally:
            part._in_flight = None
            if not carried:
                seed._x = None


def _layer_args(layer: nn.Conv2d | nn.Linear, units: int) -> tuple[Any, ...]:
    """Constructor arguments of a layer like `layer` with `units` outputs (for its default init)."""
    if isinstance(layer, nn.Conv2d):
        return (layer.in_channels, units, layer.kernel_size, layer.stride, layer.padding,
                layer.dilation, layer.groups, layer.bias is not None)  # fmt: skip
    return (layer.in_features, units, layer.bias is not None)


def sync_size(module: nn.Conv2d | nn.Linear) -> None:
    """Keep the size attributes a Conv2d or Linear keeps beside its weight (its repr and reset
    use them) in line with a weight that was made wider or narrower."""
    out, inp = module.weight.shape[:2]
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = out, inp * module.groups
    else:
        module.out_features, module.in_features = out, inp


def widen_fresh(host: nn.Module, slot: nn.Module, report: WidthReport) -> tuple[WidthSite, Merge | None]:
    """Re-apply a recorded merge structurally (a checkpoint's host, built narrow): the layer
    becomes `report.width` wide with placeholder weights for the state dict to overwrite.
    A layer already that wide is left as it is (no merge). The merge is returned so the
    optimisers, built over the narrow layers, can take the wide ones in their place."""
    site = site_of(host, slot, report.kind)
    if site.units >= report.width:
        return site, None
    seed = WidthSeed(report.width - site.units, init="zero", kind=report.kind)
    seed.attach(host, slot)
    return site, seed.merge()


def carry_optimizer_state(
    optimizers: tuple[torch.optim.Optimizer, ...] | list[torch.optim.Optimizer], merge: Merge
) -> None:
    """Put each merged parameter's successor in its place in the optimiser that held the old one.

    Per-parameter state carries over: tensors shaped like the parameter (SGD's
    momentum_buffer, Adam's exp_avg and exp_avg_sq) become the old state with the seed
    parameter's state (from whichever optimiser held the seed; zeros if none) joined
    along the widened axis as the parameters were (`join`); other entries (Adam's step) are the old parameter's. The
    seed's own param group is left for its owner to remove.
    """
    states = {}
    for optimizer in optimizers:
        states.update({id(p): s for p, s in optimizer.state.items()})
    successors = {id(old): (new, extra, axis, parts) for old, new, extra, axis, parts in merge.widened}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for i, param in enumerate(group["params"]):
                found = successors.get(id(param))
                if found is None:
                    continue
                new, extra, axis, parts = found
                group["params"][i] = new
                old_state = optimizer.state.pop(param, None)
                if not old_state:
                    continue
                extra_state = states.get(id(extra), {})
                tail_shape = list(new.shape)
                tail_shape[axis] -= param.shape[axis]
                carried = {}
                for key, value in old_state.items():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        tail = extra_state.get(key)
                        if not isinstance(tail, Tensor) or list(tail.shape) != tail_shape:
                            tail = value.new_zeros(tail_shape)
                        value = join(value, tail.to(value.dtype), axis, parts)
                    carried[key] = value
                optimizer.state[new] = carried


def widen_static(host: nn.Module, slot_id: str, width: int, kind: str = "units") -> None:
    """Make the layer a width seed of `kind` at `slot_id` widens `width` units wide as static
    layers, freshly initialised: the layer, its norm and the consumer get new parameters of the
    new shapes at the host's own initialisation (`host.init_layers`). How compare's static arms
    build a grown run's final widths."""
    site = host.width_site(slot_id, kind)
    if width < site.units:
        raise ValueError(f"slot '{slot_id}' is {site.units} wide already; it cannot be built {width} wide")
    layer, norm, consumer = site.layer, site.norm, site.consumer
    like = layer.weight
    rows = site.parts * width * site.unit_size
    with torch.no_grad():
        layer.weight = nn.Parameter(like.new_empty(rows, *like.shape[1:]))
        if layer.bias is not None:
            layer.bias = nn.Parameter(like.new_empty(rows))
        if norm is not None:
            norm.num_features = width
            norm.weight = nn.Parameter(like.new_empty(width))
            norm.bias = nn.Parameter(like.new_empty(width))
            norm.running_mean = like.new_zeros(width)
            norm.running_var = like.new_ones(width)
        shape = list(consumer.weight.shape)
        shape[1] = width * site.unit_size
        consumer.weight = nn.Parameter(consumer.weight.new_empty(shape))
    sync_size(layer)
    sync_size(consumer)
    host.init_layers([module for module in (layer, norm, consumer) if module is not None])
