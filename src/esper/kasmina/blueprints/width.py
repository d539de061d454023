"""Width blueprints: "widen" seeds that add units to the host's layer at their slot.

One factory for every topology (`kasmina.width.WidthSeed`; the host names the layer:
`StagedHost.width_site`). `units` defaults to the layer's current width, i.e. doubling
it: the field's width-growth steps (Net2WiderNet, the 4 -> 8 -> 16 channel plans toward
a reference) double, and a fixed number would be a different fraction of every layer.
`init` is "net2wider" (default) or "zero"; `noise` the Net2Wider symmetry breaking
(see `kasmina.width`). Built unattached, the module has no parameters yet, so the
parameter counts here are estimates at a 64-unit layer, doubled.
"""

from __future__ import annotations

from torch import nn

from esper.kasmina.blueprints.registry import BlueprintRegistry
from esper.kasmina.width import WidthSeed


def widen(
    dim: int, units: int | None = None, init: str = "net2wider", noise: float = 0.01
) -> nn.Module:
    return WidthSeed(units, init, noise)


_ESTIMATES = {
    "cnn": 64 * 64 * 9 * 2 + 2 * 64,
    "mlp": 64 * 64 * 2 + 64,
    "transformer": 256 * 64 * 2 + 256,
}
for _topology, _estimate in _ESTIMATES.items():
    BlueprintRegistry.register(
        "widen",
        _topology,
        _estimate,
        "Widen the slot's layer: new units (the host layer's size: doubling), merged when kept",
        from_host=True,
    )(widen)
