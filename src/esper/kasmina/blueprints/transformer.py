"""Transformer seed blueprints: modules mapping (B, T, C) -> (B, T, C) with C = dim.

Every seed starts as the exact identity (its last projection is zero-initialised),
so grafting a fresh seed into a host network does not change the host's function.
Attention seeds are causal: position t only ever sees positions <= t.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from esper.kasmina.blueprints.registry import BlueprintRegistry


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias so a residual branch starts at exactly 0."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


def default_n_head(dim: int) -> int:
    """Most heads (up to 8) dividing dim with head_dim >= 16 (the fused flex kernel's minimum)."""
    return next((h for h in (8, 4, 2) if dim % h == 0 and dim // h >= 16), 1)


class LayerNormSeed(nn.Module):
    """x + LayerNorm(x); the affine scale starts at zero, so the seed starts as identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = _zero_(nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(x)


class LoRASeed(nn.Module):
    """x + up(down(x)): a rank-limited linear correction, up starts at zero."""

    def __init__(self, dim: int, rank: int = 8) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = _zero_(nn.Linear(rank, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class CausalSelfAttentionSeed(nn.Module):
    """Pre-norm causal multi-head self-attention residual: x + proj(attn(ln(x)))."""

    def __init__(self, dim: int, n_head: int | None = None) -> None:
        super().__init__()
        self.n_head = n_head or default_n_head(dim)
        if dim % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide dim={dim}")
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = _zero_(nn.Linear(dim, dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention over (B, n_head, T, head_dim) tensors."""
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln(x)).split(C, dim=2)
        q, k, v = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]
        y = self.attend(q, k, v).transpose(1, 2).reshape(B, T, C)
        return x + self.proj(y)


def _causal(
    b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
) -> torch.Tensor:
    return q_idx >= kv_idx


@functools.cache
def _fused_flex_attention() -> Callable[..., torch.Tensor]:
    """Compiled once, lazily: eager flex_attention materialises the full score matrix."""
    return torch.compile(flex_attention)


class FlexAttentionSeed(CausalSelfAttentionSeed):
    """Causal self-attention through FlexAttention with a (sparse) causal BlockMask.

    CUDA runs the fused compiled kernel (needs head_dim >= 16). Elsewhere FlexAttention
    is forward-only in this PyTorch, so it serves inference, and training falls back to
    causal SDPA: the same function of the same weights. Meta tensors (shape-only runs,
    such as counting FLOPs) take SDPA too: FlexAttention has no meta implementation.
    """

    def __init__(self, dim: int, n_head: int | None = None) -> None:
        super().__init__(dim, n_head)
        self._block_masks: dict[tuple[int, torch.device], BlockMask] = {}

    def block_mask(self, T: int, device: torch.device) -> BlockMask:
        """Causal block mask for length T, built once per (T, device)."""
        key = (T, device)
        if key not in self._block_masks:
            self._block_masks[key] = create_block_mask(_causal, None, None, T, T, device=device)
        return self._block_masks[key]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.is_meta or (not q.is_cuda and q.requires_grad):
            return super().attend(q, k, v)
        flex = _fused_flex_attention() if q.is_cuda else flex_attention
        return flex(q, k, v, block_mask=self.block_mask(q.size(-2), q.device))


class MLPSeed(nn.Module):
    """Pre-norm MLP residual x + fc2(gelu(fc1(ln(x)))); optional activation checkpointing."""

    def __init__(self, dim: int, expansion: int = 4, checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.fc2 = _zero_(nn.Linear(expansion * dim, dim))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and self.training:
            # Trade compute for memory: recompute the wide hidden activation in backward.
            return x + torch.utils.checkpoint.checkpoint(self.branch, x, use_reentrant=False)
        return x + self.branch(x)


class TransformerBlockSeed(nn.Module):
    """A whole pre-norm GPT block, x + attn(ln(x)) then + mlp(ln(.)): a GPT grows a layer.

    Both residual branches zero-init their output projection, so the block starts
    as the identity; it is the attention seed followed by the MLP seed.
    """

    def __init__(self, dim: int, n_head: int | None = None, expansion: int = 4) -> None:
        super().__init__()
        self.attn = CausalSelfAttentionSeed(dim, n_head)
        self.mlp = MLPSeed(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


# param_estimate: exact parameter counts at dim=64 with default options.


@BlueprintRegistry.register("norm", "transformer", 128, "Residual LayerNorm, identity at init")
def norm(dim: int) -> nn.Module:
    return LayerNormSeed(dim)


@BlueprintRegistry.register("lora", "transformer", 1_024, "Low-rank linear residual")
def lora(dim: int, rank: int = 8) -> nn.Module:
    return LoRASeed(dim, rank)


@BlueprintRegistry.register("attention", "transformer", 16_768, "Causal self-attention (SDPA)")
def attention(dim: int, n_head: int | None = None) -> nn.Module:
    return CausalSelfAttentionSeed(dim, n_head)


@BlueprintRegistry.register(
    "flex_attention", "transformer", 16_768, "Causal self-attention (FlexAttention)"
)
def flex_attention_seed(dim: int, n_head: int | None = None) -> nn.Module:
    return FlexAttentionSeed(dim, n_head)


@BlueprintRegistry.register("mlp", "transformer", 33_216, "Pre-norm residual MLP")
def mlp(dim: int, expansion: int = 4, checkpoint: bool = False) -> nn.Module:
    return MLPSeed(dim, expansion, checkpoint)


@BlueprintRegistry.register(
    "block", "transformer", 49_984, "Pre-norm GPT block: causal attention + MLP (adds a layer)"
)
def block(dim: int, n_head: int | None = None, expansion: int = 4) -> nn.Module:
    return TransformerBlockSeed(dim, n_head, expansion)
