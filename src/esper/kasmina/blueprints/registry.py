"""Blueprint registry: named seed-module factories, grouped by host topology.

A blueprint is a factory ``f(dim, **kwargs) -> nn.Module`` for a seed that preserves
its input shape: (B, C, H, W) with C=dim for "cnn", (B, T, C) with C=dim for
"transformer". Blueprints register themselves at import time via the decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

TOPOLOGIES: tuple[str, ...] = ("cnn", "transformer")

BlueprintFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BlueprintSpec:
    name: str
    topology: str
    factory: BlueprintFactory
    param_estimate: int  # rough count at a representative dim (64); orders blueprints by cost
    description: str = ""

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
        cls, name: str, topology: str, param_estimate: int, description: str = ""
    ) -> Callable[[BlueprintFactory], BlueprintFactory]:
        """Decorator registering a factory; returns the factory unchanged."""
        specs = cls._topology(topology)

        def decorator(factory: BlueprintFactory) -> BlueprintFactory:
            if name in specs:
                raise ValueError(f"Blueprint '{name}' already registered for topology '{topology}'")
            specs[name] = BlueprintSpec(name, topology, factory, param_estimate, description)
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
