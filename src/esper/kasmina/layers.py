"""The built-in hosts' layers, in a module of their own so seeds can build the same layers.

A depth seed that stacks a copy of a trained block (`kasmina.blueprints.depth`) builds a
`TransformerBlock` exactly like the host's, so the copy computes what the original does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def relu_pool(x: Tensor) -> Tensor:
    """What follows a ConvBlock's norm; it acts on each channel alone (a width seed's new
    channels go through it too)."""
    return F.max_pool2d(F.relu(x), 2)


def relu_pool_mean(x: Tensor) -> Tensor:
    """The last ConvBlock's tail and the CNN head's global mean pooling: what its classifier takes."""
    return relu_pool(x).mean(dim=(2, 3))


class ConvBlock(nn.Module):
    """conv3x3 (no bias) -> BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return relu_pool(self.norm(self.conv(x)))


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention, GPT-2's: `qkv` holds every head's query rows, then
    every head's key rows, then every head's value rows; `proj` takes the heads' outputs
    side by side. The head count is read from `qkv`'s width (`n_head`), so a width seed that
    merges new heads into `qkv` and `proj` (`kasmina.width`, kind "heads") makes the layer
    wider with nothing else to update; the heads then span more than the residual width."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.head_dim = n_embd // n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    @property
    def n_head(self) -> int:
        return self.qkv.weight.shape[0] // (3 * self.head_dim)

    def attend(self, qkv: Tensor) -> Tensor:
        """Heads of `head_dim` from (B, T, 3 * heads * head_dim) queries|keys|values (as `qkv`
        lays them out) to their outputs side by side, (B, T, heads * head_dim); each head alone."""
        B, T, width = qkv.shape
        d = self.head_dim
        q, k, v = (t.view(B, T, -1, d).transpose(1, 2) for t in qkv.split(width // 3, dim=2))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return y.transpose(1, 2).reshape(B, T, width // 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.resid_dropout(self.proj(self.attend(self.qkv(x))))


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2's initialisation, as nanoGPT's `_init_weights`: N(0, 0.02) weights, zero biases.

    PyTorch's defaults would give the tied embedding N(0, 1), so the first logits have a std
    of ~9 and the first loss is ~43 nats instead of ln(vocab); deeper hosts then train
    erratically. LayerNorms keep their default (weight 1, bias 0).
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class TransformerBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def residual_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The layers writing into the residual stream (GPT-2 scales their init by depth)."""
        return self.attn.proj, self.mlp[2]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
