"""Depth seeds that start from the host's function instead of from a zero branch.

`stack` (transformer) inserts a copy of the trained block below the slot, as StackBERT and
G_stack grow depth by copying trained layers. The slot's alpha is MSG's mask ramp:
lerp(x, block(x), alpha) is the identity at alpha 0 and the full copy at alpha 1.

`deepen` (cnn, mlp) inserts a layer initialised as the identity (Net2DeeperNet): a 3x3
conv with a Dirac kernel (a Linear with the identity matrix), then ReLU. That is exactly
the identity on non-negative features, which is what the built-in hosts' blocks emit
(their outputs are post-ReLU), so the new layer changes nothing until it learns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.blueprints.registry import BlueprintRegistry, Operator
from esper.kasmina.blueprints.transformer import default_n_head
from esper.kasmina.layers import CausalSelfAttention, TransformerBlock, init_gpt_weights
from esper.kasmina.placement import injected_module
from esper.kasmina.width import sync_size


class StackedBlockSeed(nn.Module):
    """A copy of the trained transformer block below the slot (the host's, or the top fossil)."""

    def __init__(self, dim: int, n_head: int | None = None) -> None:
        super().__init__()
        self.block = TransformerBlock(dim, n_head or default_n_head(dim), dropout=0.0)
        # Planted, it copies the block below (`attach`); built as a static layer (compare's
        # static arms), it is a fresh GPT layer, initialised as the host's layers are.
        self.block.apply(init_gpt_weights)

    @staticmethod
    def _source(host: nn.Module, slot: nn.Module) -> nn.Module:
        """The block a stack at `slot` copies: the slot's top fossil, else the host's layer."""
        below = slot.fossils[-1] if len(slot.fossils) else injected_module(host, slot.slot_id)
        return below.block if isinstance(below, StackedBlockSeed) else below

    @classmethod
    def refusal(cls, host: nn.Module, slot: nn.Module) -> str | None:
        """Why no block can be stacked at `slot` now (nothing below it to copy); None when one can."""
        source = cls._source(host, slot)
        if isinstance(source, TransformerBlock):
            return None
        return (
            f"blueprint 'stack' copies the transformer block below slot '{slot.slot_id}', but "
            f"that is a {type(source).__name__}: stack it on a slot after a TransformerBlock, "
            "or grow with 'block' (a zero-initialised block)"
        )

    def attach(self, host: nn.Module, slot: nn.Module) -> None:
        """Copy the block this seed is stacked on: the slot's top fossil, else the host's layer."""
        refused = self.refusal(host, slot)
        if refused is not None:
            raise ValueError(refused)
        source = self._source(host, slot)
        # Neither the head size nor the dropout is in the weights' shapes: take both from the
        # source, so the copy computes exactly what the original does; a layer a merged width
        # seed widened (MLP units, attention heads) takes the source's shape. (Not
        # copy.deepcopy: the host's layer carries the slot's forward hook, which the copy must not.)
        for mine, theirs in zip(self.block.modules(), source.modules(), strict=True):
            if isinstance(mine, CausalSelfAttention):
                mine.head_dim, mine.dropout = theirs.head_dim, theirs.dropout
            elif isinstance(mine, nn.Dropout):
                mine.p = theirs.p
            elif isinstance(mine, nn.Linear) and mine.weight.shape != theirs.weight.shape:
                for name, param in theirs.named_parameters(recurse=False):
                    setattr(mine, name, nn.Parameter(torch.empty_like(param)))
                sync_size(mine)
        self.block.load_state_dict(source.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class IdentityConvSeed(nn.Module):
    """relu(conv3x3(x)) with a Dirac kernel: the identity on non-negative feature maps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        nn.init.dirac_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class IdentityLinearSeed(nn.Module):
    """relu(Linear(x)) with the identity matrix and zero bias: the identity on x >= 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.eye_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(x))


# param_estimate: exact parameter counts at dim=64 with default options.


@BlueprintRegistry.register(
    "stack", "transformer", 49_984, "A copy of the trained block below (adds a layer, stacking)",
    from_host=True, operator=Operator("depth"),
)
def stack(dim: int, n_head: int | None = None) -> nn.Module:
    return StackedBlockSeed(dim, n_head)


@BlueprintRegistry.register(
    "deepen", "cnn", 36_864, "A 3x3 conv + ReLU starting as the identity", from_host=True,
    operator=Operator("depth"),
)
def deepen_cnn(dim: int) -> nn.Module:
    return IdentityConvSeed(dim)


@BlueprintRegistry.register(
    "deepen", "mlp", 4_160, "A Linear + ReLU starting as the identity", from_host=True,
    operator=Operator("depth"),
)
def deepen_mlp(dim: int) -> nn.Module:
    return IdentityLinearSeed(dim)
