"""Esper: morphogenetic training for PyTorch."""

from esper.kasmina.graft import GraftedModel, graft

__version__ = "0.1.0"

__all__ = ["GraftedModel", "__version__", "graft"]
