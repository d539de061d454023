"""MLP seed blueprints: modules mapping (B, C) -> (B, C) with C = dim.

The features of an MLP are one vector per sample. The transformer seeds that act on
the last (channel) axis alone, position by position, compute exactly the same
function on a (B, C) batch, so the "mlp" topology registers those same modules
rather than copies of them. Each starts as the exact identity (zero-initialised last
layer or affine scale), so a fresh seed does not change the host's function.
"""

from __future__ import annotations

from torch import nn

from esper.kasmina.blueprints.registry import BlueprintRegistry
from esper.kasmina.blueprints.transformer import LayerNormSeed, LoRASeed, MLPSeed

# param_estimate: exact parameter counts at dim=64 with default options.


@BlueprintRegistry.register("norm", "mlp", 128, "Residual LayerNorm, identity at init")
def norm(dim: int) -> nn.Module:
    return LayerNormSeed(dim)


@BlueprintRegistry.register("lowrank", "mlp", 1_024, "Low-rank linear residual x + up(down(x))")
def lowrank(dim: int, rank: int = 8) -> nn.Module:
    return LoRASeed(dim, rank)


@BlueprintRegistry.register("mlp", "mlp", 33_216, "Pre-norm residual MLP (expansion 4)")
def mlp(dim: int, expansion: int = 4, checkpoint: bool = False) -> nn.Module:
    return MLPSeed(dim, expansion, checkpoint)
