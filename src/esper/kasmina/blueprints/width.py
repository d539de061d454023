"""Width blueprints: seeds that add units to the host's layer at their slot.

One factory per initialisation, for every topology (`kasmina.width.WidthSeed`; the host
names the layer: `StagedHost.width_site`): "widen" starts the new units as noisy copies of
host units (Net2WiderNet, the default), "widen_zero" with random incoming and zero
outgoing weights; two names, so a run or a compare can plant either; "widen_half" is
"widen" adding half the layer's units (x1.5), a sized variant a controller picks when the
budget does not afford a doubling. `units` defaults to `fraction` (1) of the layer's current
width, i.e. doubling it: the field's width-growth steps (Net2WiderNet,
the 4 -> 8 -> 16 channel plans toward a reference) double, and a fixed number would be a
different fraction of every layer. `noise` is the Net2Wider symmetry breaking (see
`kasmina.width`). Built unattached, the module has no parameters yet, so the parameter
counts here are estimates at a 64-unit layer, doubled.

"widen_heads" and "widen_heads_zero" (transformer) do the same to the attention heads of the
layer before the slot: new heads of the layer's head size (their rows of q, k and v, their
columns of the output projection); the residual width stays. `units` counts heads there.
"""

from __future__ import annotations

from torch import nn

from esper.kasmina.blueprints.registry import BlueprintRegistry, Operator
from esper.kasmina.width import WidthSeed


def widen(dim: int, units: int | None = None, noise: float = 0.01, fraction: float = 1.0) -> nn.Module:
    return WidthSeed(units, "net2wider", noise, fraction)


def widen_half(dim: int, units: int | None = None, noise: float = 0.01) -> nn.Module:
    return WidthSeed(units, "net2wider", noise, HALF)


def widen_zero(dim: int, units: int | None = None, fraction: float = 1.0) -> nn.Module:
    return WidthSeed(units, "zero", fraction=fraction)


HALF = 0.5  # `widen_half` adds half the layer's units (x1.5): the step a tighter budget still affords


def widen_heads(dim: int, units: int | None = None, noise: float = 0.01) -> nn.Module:
    return WidthSeed(units, "net2wider", noise, kind="heads")


def widen_heads_zero(dim: int, units: int | None = None) -> nn.Module:
    return WidthSeed(units, "zero", kind="heads")


_ESTIMATES = {
    "cnn": 64 * 64 * 9 * 2 + 2 * 64,
    "mlp": 64 * 64 * 2 + 64,
    "transformer": 256 * 64 * 2 + 256,
}
# name: (factory, the new units' start, the fraction of the layer's units added)
_KINDS = {
    "widen": (widen, "copies of host units (Net2WiderNet)", 1.0),
    "widen_half": (widen_half, "copies of host units (Net2WiderNet)", HALF),
    "widen_zero": (widen_zero, "zero outgoing weights", 1.0),
}
for _name, (_factory, _start, _fraction) in _KINDS.items():
    for _topology, _estimate in _ESTIMATES.items():
        BlueprintRegistry.register(
            _name,
            _topology,
            round(_estimate * _fraction),
            f"Widen the slot's layer (x{1 + _fraction:g}): new units from {_start}, merged when kept",
            from_host=True,
            operator=Operator("width", _fraction),
        )(_factory)

for _name, _factory, _start in (
    ("widen_heads", widen_heads, "copies of host heads (Net2WiderNet)"),
    ("widen_heads_zero", widen_heads_zero, "zero outgoing weights"),
):
    BlueprintRegistry.register(
        _name,
        "transformer",
        4 * 64 * 64 + 3 * 64,  # 64 new channels of heads: q, k, v rows and bias, proj columns
        f"Add attention heads to the slot's layer (doubling them): new heads from {_start}, "
        "merged when kept",
        from_host=True,
        operator=Operator("width"),
    )(_factory)
