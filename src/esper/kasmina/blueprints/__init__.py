"""Seed blueprints. Importing this package registers every built-in blueprint."""

from esper.kasmina.blueprints import cnn, depth, mlp, transformer, width  # noqa: F401  (registers blueprints)
from esper.kasmina.blueprints.registry import BlueprintRegistry, BlueprintSpec

__all__ = ["BlueprintRegistry", "BlueprintSpec"]
