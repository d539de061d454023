"""Esper: morphogenetic training for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esper.kasmina.graft import GraftedModel, graft

if TYPE_CHECKING:
    from esper.grower import Grower

__version__ = "0.1.0"

__all__ = ["GraftedModel", "Grower", "__version__", "graft"]


def __getattr__(name: str) -> Any:
    # The Grower brings the controllers, telemetry and run folders along: imported when
    # first asked for, so `import esper` stays as light as `esper.graft` needs.
    if name == "Grower":
        from esper.grower import Grower

        return Grower
    raise AttributeError(f"module 'esper' has no attribute '{name}'")
