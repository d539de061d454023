"""Blueprint registry: named seed-module factories, grouped by host topology.

A blueprint is a factory ``f(dim, **kwargs) -> nn.Module`` for a seed that preserves
its input shape: (B, C, H, W) with C=dim for "cnn", (B, T, C) with C=dim for
"transformer", (B, C) with C=dim for "mlp". Blueprints register themselves at import
time via the decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from esper.leyline import Operator

TOPOLOGIES: tuple[str, ...] = ("cnn", "transformer", "mlp")

# The features each topology's seeds take and return: (rank, channel axis). The one
# definition of what a topology's features look like: shape probes and `esper.graft`'s
# topology inference both read it.
_LAYOUTS: dict[str, tuple[int, int]] = {"cnn": (4, 1), "transformer": (3, 2), "mlp": (2, 1)}


def feature_shape(topology: str, channels: int, batch: int = 2, extent: int = 8) -> tuple[int, ...]:
    """A small feature shape of `topology`: (B, C, H, W), (B, T, C) or (B, C)."""
    rank, channel_axis = _LAYOUTS[topology]
    shape = [batch] + [extent] * (rank - 1)
    shape[channel_axis] = channels
    return tuple(shape)


def infer_topology(shape: tuple[int, ...]) -> tuple[str, int] | None:
    """(topology, channels) of features with this shape, by rank; None if no topology fits.

    4-D is "cnn" (B, C, H, W), 3-D "transformer" (B, T, C), 2-D "mlp" (B, C).
    """
    for topology, (rank, channel_axis) in _LAYOUTS.items():
        if len(shape) == rank:
            return topology, shape[channel_axis]
    return None

BlueprintFactory = Callable[..., nn.Module]
BRANCH = Operator()  # what a blueprint grows unless it says otherwise: a module beside the host's features


@dataclass(frozen=True)
class BlueprintSpec:
    name: str
    topology: str
    factory: BlueprintFactory
    param_estimate: int  # rough count at a representative dim (64); orders blueprints by cost
    description: str = ""
    # Starts from the host's own layers (a copy of the block below, an identity layer on
    # post-ReLU features) rather than as a zero branch: planted only where asked for by name,
    # since not every model has the layers it starts from.
    from_host: bool = False
    # What it grows (a branch, the layer's width, depth) and by how much: for controllers.
    operator: Operator = BRANCH

    def actual_param_count(self, dim: int) -> int:
        """Build the module with default options and count its parameters."""
        return sum(p.numel() for p in self.factory(dim).parameters())


class BlueprintRegistry:
    """Class-level registry; all methods are classmethods, no instances needed."""

    _specs: ClassVar[dict[str, dict[str, BlueprintSpec]]] = {t: {} for t in TOPOLOGIES}

    @classmethod
    def _topology(cls, topology: str) -> dict[str, BlueprintSpec]:
        if topology not in cls._specs:
            available = ", ".join(sorted(cls._specs))
            raise ValueError(f"Unknown topology '{topology}'. Available: {available}")
        return cls._specs[topology]

    @classmethod
    def register(
        cls,
        name: str,
        topology: str,
        param_estimate: int,
        description: str = "",
        *,
        from_host: bool = False,
        operator: Operator | None = None,
    ) -> Callable[[BlueprintFactory], BlueprintFactory]:
        """Decorator registering a factory; returns the factory unchanged."""
        specs = cls._topology(topology)

        def decorator(factory: BlueprintFactory) -> BlueprintFactory:
            if name in specs:
                raise ValueError(f"Blueprint '{name}' already registered for topology '{topology}'")
            specs[name] = BlueprintSpec(
                name, topology, factory, param_estimate, description, from_host, operator or BRANCH
            )
            return factory

        return decorator

    @classmethod
    def get(cls, topology: str, name: str) -> BlueprintSpec:
        specs = cls._topology(topology)
        if name not in specs:
            available = ", ".join(sorted(specs))
            raise ValueError(
                f"Unknown blueprint '{name}' for topology '{topology}'. Available: {available}"
            )
        return specs[name]

    @classmethod
    def unregister(cls, topology: str, name: str) -> None:
        cls.get(topology, name)  # raises with a helpful message if absent
        del cls._specs[topology][name]

    @classmethod
    def list_specs(cls, topology: str) -> list[BlueprintSpec]:
        """All blueprints for a topology, cheapest (by param_estimate) first."""
        return sorted(cls._topology(topology).values(), key=lambda s: s.param_estimate)

    @classmethod
    def create(cls, topology: str, name: str, dim: int, **kwargs: object) -> nn.Module:
        """Instantiate a blueprint; keyword options go straight to its factory."""
        return cls.get(topology, name).factory(dim, **kwargs)
