"""Host networks with injection points, and the model that plants slots in them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.slot import QualityGates, SeedSlot
from esper.leyline import TaskConfig, TelemetryEvent


class _SlottedHost(nn.Module):
    """Shared slot bookkeeping: a slot is an `nn.Module` applied at an injection point."""

    topology: str
    injection_points: dict[str, int]

    def __init__(self) -> None:
        super().__init__()
        self.slots = nn.ModuleDict()

    def register_slot(self, slot_id: str, slot: nn.Module) -> None:
        if slot_id not in self.injection_points:
            raise ValueError(
                f"Unknown injection point '{slot_id}'. Available: {', '.join(self.injection_points)}"
            )
        self.slots[slot_id] = slot

    def unregister_slot(self, slot_id: str) -> None:
        if slot_id not in self.slots:
            raise ValueError(f"No slot registered at '{slot_id}'")
        del self.slots[slot_id]

    def _apply_slot(self, key: str | None, x: Tensor) -> Tensor:
        # One dict lookup (not ModuleDict's `in` then `[]`): this runs per stage per step.
        slot = self.slots._modules.get(key) if key is not None else None
        return x if slot is None else slot(x)

    def host_parameters(self) -> Iterator[nn.Parameter]:
        """The host's own parameters, excluding anything planted in its slots."""
        for name, param in self.named_parameters():
            if not name.startswith("slots."):
                yield param


class StagedHost(_SlottedHost):
    """A host that is a stem, a trunk of stages each followed by an optional slot, and a head.

    `forward(x) == run(stem(x))` (a subclass must keep that true). `run` can start
    at any stage and record the features entering chosen slots, so a
    counterfactual for one slot (alpha forced to 0: the slot passes its input
    through) resumes from the recorded features instead of recomputing the trunk
    before it (`tolaria.trainer.validate_with_counterfactuals`).
    """

    _slot_keys: tuple[str | None, ...]  # one per trunk stage; None: no injection point there

    @property
    def trunk(self) -> nn.ModuleList:
        raise NotImplementedError

    def stem(self, x: Tensor) -> Tensor:
        return x

    def head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.run(self.stem(x))

    def stage_index(self, slot_id: str) -> int:
        """Position in the trunk of the stage whose output `slot_id` receives."""
        return self._slot_keys.index(slot_id)

    def run(self, x: Tensor, start: int = 0, taps: dict[str, Tensor] | None = None) -> Tensor:
        """Stages `start..` (slots included) and the head, from the stem's output or a stage's.

        For each key already in `taps`, the features entering that slot are stored
        there: `run(taps[key], stage_index(key) + 1)` is then the output with that
        slot passing its input through, computed without the stages before it.
        """
        for i in range(start, len(self._slot_keys)):
            key = self._slot_keys[i]
            x = self.trunk[i](x)
            if taps is not None and key in taps:
                taps[key] = x
            x = self._apply_slot(key, x)
        return self.head(x)


class ConvBlock(nn.Module):
    """conv3x3 (no bias) -> BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class CNNHost(StagedHost):
    """Conv blocks doubling the channels; a slot after every block but the first."""

    topology = "cnn"

    def __init__(
        self,
        num_classes: int = 10,
        n_blocks: int = 3,
        base_channels: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"CNNHost needs n_blocks >= 1, got {n_blocks}")
        widths = [base_channels * 2**i for i in range(n_blocks)]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.classifier = nn.Linear(widths[-1], num_classes)
        # Precomputed so forward never formats strings (compile-friendly, cheap).
        self._slot_keys: tuple[str | None, ...] = (None,) + tuple(
            f"block{i + 1}" for i in range(1, n_blocks)
        )
        self.injection_points = {
            key: width for key, width in zip(self._slot_keys, widths) if key is not None
        }

    @property
    def trunk(self) -> nn.ModuleList:
        return self.blocks

    def head(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean(dim=(2, 3)))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class TransformerBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerHost(StagedHost):
    """GPT-style decoder (nanoGPT shape) with a slot after every layer."""

    topology = "transformer"

    def __init__(
        self,
        vocab_size: int,
        n_embd: int,
        n_head: int,
        n_layer: int,
        block_size: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerBlock(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        self._slot_keys: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(n_layer))
        self.injection_points = {key: n_embd for key in self._slot_keys}
        self.register_buffer("_positions", torch.arange(block_size), persistent=False)

    @property
    def trunk(self) -> nn.ModuleList:
        return self.layers

    def stem(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"Sequence length {T} exceeds block_size {self.block_size}")
        return self.drop(self.tok_emb(idx) + self.pos_emb(self._positions[:T]))

    def head(self, x: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(x))


class MorphogeneticModel(nn.Module):
    """A host with one `SeedSlot` at each chosen injection point."""

    def __init__(
        self,
        host: CNNHost | TransformerHost,
        slot_ids: Iterable[str] | None = None,
        device: str | torch.device = "cpu",
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
    ) -> None:
        super().__init__()
        self.host = host.to(device)
        chosen = list(host.injection_points) if slot_ids is None else list(slot_ids)
        if not chosen:
            raise ValueError("MorphogeneticModel needs at least one slot")
        unknown = [s for s in chosen if s not in host.injection_points]
        if unknown:
            raise ValueError(
                f"Unknown slot(s) {unknown}. Available: {', '.join(host.injection_points)}"
            )
        config = task_config or TaskConfig(topology=host.topology)
        for slot_id in chosen:
            slot = SeedSlot(
                slot_id,
                channels=host.injection_points[slot_id],
                device=device,
                gates=gates,
                on_telemetry=on_telemetry,
                fast_mode=fast_mode,
                task_config=config,
            )
            host.register_slot(slot_id, slot)

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        return dict(self.host.slots.items())

    def forward(self, x: Tensor) -> Tensor:
        return self.host(x)

    def germinate(self, slot_id: str, blueprint_id: str, seed_id: str | None = None):
        return self.seed_slots[slot_id].germinate(blueprint_id, seed_id, host_module=self.host)

    def host_parameters(self) -> list[nn.Parameter]:
        return list(self.host.host_parameters())

    def seed_parameters(self, slot_id: str | None = None) -> list[nn.Parameter]:
        slots = self.seed_slots if slot_id is None else {slot_id: self.seed_slots[slot_id]}
        return [p for slot in slots.values() if slot.seed is not None for p in slot.seed.parameters()]

    def host_param_count(self) -> int:
        return sum(p.numel() for p in self.host_parameters())

    def seed_param_count(self) -> int:
        return sum(p.numel() for p in self.seed_parameters())
