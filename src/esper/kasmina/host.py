"""Host networks with injection points, and the model that plants seed slots in them."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.layers import (
    ConvBlock,
    TransformerBlock,
    init_gpt_weights,
    relu_pool,
    relu_pool_mean,
)
from esper.kasmina.placement import SlotMount
from esper.kasmina.slot import QualityGates, SeedSlot, SeedState
from esper.kasmina.width import WidthSite
from esper.leyline import TaskConfig, TelemetryEvent


class StagedHost(SlotMount):
    """A host that is a stem, a trunk of stages, and a head; slots sit on stage outputs.

    `_slot_keys` is the tuple of injection-point keys in trunk order and
    `_slot_stage` maps each key to the index of the trunk stage whose output it
    receives (a subclass sets both). A slot is placed like any other (`SlotMount`:
    a hook on that stage), so the forward pass is just the trunk loop.

    `forward(x) == run(stem(x))` (a subclass must keep that true). `run` can start
    at any stage and record the features entering chosen slots' live seeds, so a
    counterfactual for one slot (alpha forced to 0: the slot passes the features
    through its fossils only) resumes from the recorded features instead of
    recomputing the trunk before it (`tolaria.trainer.validate_with_counterfactuals`).
    """

    topology: str
    _slot_keys: tuple[str, ...]
    _slot_stage: dict[str, int]

    @property
    def trunk(self) -> nn.ModuleList:
        raise NotImplementedError

    def stem(self, x: Tensor) -> Tensor:
        return x

    def head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.run(self.stem(x))

    def _set_injection_points(self, points: dict[str, tuple[int, int]]) -> None:
        """Declare the injection points, in trunk order: key -> (stage index, channels).

        Precomputed once, so the forward pass never formats or looks up a key.
        """
        self._slot_keys = tuple(points)
        self._slot_stage = {key: stage for key, (stage, _) in points.items()}
        self.injection_points = {key: channels for key, (_, channels) in points.items()}

    def injection_module(self, key: str) -> nn.Module:
        return self.trunk[self._slot_stage[key]]

    def replace_injection_module(self, key: str, module: nn.Module) -> None:
        self.trunk[self._slot_stage[key]] = module

    def stage_index(self, slot_id: str) -> int:
        """Position in the trunk of the stage whose output `slot_id` receives."""
        return self._slot_stage[slot_id]

    def width_site(self, slot_id: str, kind: str = "units") -> WidthSite:
        """The layer a width seed of `kind` at `slot_id` widens and the layer consuming its
        units; a `ValueError` saying why when there is none (a subclass that can widen
        overrides this)."""
        raise ValueError(f"slot '{slot_id}': {type(self).__name__} has no layer Esper can widen there")

    def _only_units(self, slot_id: str, kind: str) -> None:
        """Refuse a width seed of another kind than "units" at `slot_id` (a host without heads)."""
        if kind != "units":
            raise ValueError(
                f"slot '{slot_id}': {type(self).__name__} has no {kind} to widen; "
                "widen its units ('widen', 'widen_zero')"
            )

    def init_layers(self, modules: Iterable[nn.Module]) -> None:
        """Initialise `modules` (layers of this host) as the host initialises its own: PyTorch's
        defaults here; a host with its own scheme overrides this."""
        for module in modules:
            module.reset_parameters()

    def resume_stage(self, slot_id: str) -> int:
        """The stage a counterfactual for `slot_id`'s live seed resumes at (see `run`): the one
        after the slot's, or the slot's own where the live seed acts inside it (a width seed
        in a transformer layer's MLP or attention changes the stage's own output)."""
        return self._slot_stage[slot_id] + (0 if self.placed_slots()[slot_id].seed_acts_in_stage else 1)

    def run(self, x: Tensor, start: int = 0, taps: dict[str, Tensor] | None = None) -> Tensor:
        """Stages `start..` (slots included) and the head, from the stem's output or a stage's.

        For each key already in `taps` (a placed slot), the features a counterfactual for that
        slot resumes from are stored there: those entering its live seed (the stage's output
        through the slot's fossils), or, where the seed acts inside the stage, the stage's
        input. With that slot's alpha forced to 0, `run(taps[key], resume_stage(key))` is then
        the output with its live seed switched off, computed without the stages before it.
        """
        if taps:
            slots = self.placed_slots()
            with contextlib.ExitStack() as recording:
                for key in taps:
                    sink = functools.partial(taps.__setitem__, key)
                    if slots[key].seed_acts_in_stage:
                        stage = self.trunk[self._slot_stage[key]]
                        handle = stage.register_forward_pre_hook(functools.partial(_record_input, sink))
                        recording.callback(handle.remove)
                    else:
                        recording.enter_context(slots[key].recording_seed_input(sink))
                return self.run(x, start)
        for i in range(start, len(self.trunk)):
            x = self.trunk[i](x)
        return self.head(x)


def _record_input(sink: Callable[[Tensor], object], module: nn.Module, args: tuple[Tensor, ...]) -> None:
    sink(args[0])


class CNNHost(StagedHost):
    """Conv blocks doubling the channels; a slot after every block but the first.

    `first_block_slot=True` adds one after the first block too (`block1`): where a width seed
    widens the first conv, so a schedule can grow the whole network into a wider one
    (mnist5k-tiny's host has it; its heuristic and policies still act at `block2`/`block3`).
    """

    topology = "cnn"

    def __init__(
        self,
        num_classes: int = 10,
        n_blocks: int = 3,
        base_channels: int = 32,
        in_channels: int = 3,
        first_block_slot: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"CNNHost needs n_blocks >= 1, got {n_blocks}")
        widths = [base_channels * 2**i for i in range(n_blocks)]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.classifier = nn.Linear(widths[-1], num_classes)
        first = 0 if first_block_slot else 1
        self._set_injection_points(
            {f"block{i + 1}": (i, widths[i]) for i in range(first, n_blocks)}
        )

    @property
    def trunk(self) -> nn.ModuleList:
        return self.blocks

    def head(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean(dim=(2, 3)))

    def width_site(self, slot_id: str, kind: str = "units") -> WidthSite:
        """Block i's conv output channels (and BatchNorm entries), consumed by the next block's
        conv, or by the classifier after global mean pooling for the last block."""
        self._only_units(slot_id, kind)
        i = self.stage_index(slot_id)
        block = self.blocks[i]
        last = i + 1 == len(self.blocks)
        consumer = self.classifier if last else self.blocks[i + 1].conv
        return WidthSite(block.conv, block.norm, relu_pool_mean if last else relu_pool, consumer)


class TransformerHost(StagedHost):
    """GPT-style decoder (nanoGPT shape and initialisation) with a slot after every layer."""

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
        self._set_injection_points({f"layer{i + 1}": (i, n_embd) for i in range(n_layer)})
        self.register_buffer("_positions", torch.arange(block_size), persistent=False)
        built: list[nn.Module] = []
        self.apply(built.append)  # children before their parents, as `apply` initialises
        self.init_layers(built)

    def init_layers(self, modules: Iterable[nn.Module]) -> None:
        """GPT-2's initialisation (`init_gpt_weights`), and the projections that write into the
        residual stream scaled down by depth: N(0, 0.02 / sqrt(2 n_layer))."""
        modules = list(modules)
        for module in modules:
            init_gpt_weights(module)
        residual = {id(projection) for layer in self.layers for projection in layer.residual_projections()}
        for module in modules:
            if id(module) in residual:
                nn.init.normal_(module.weight, std=0.02 / math.sqrt(2 * len(self.layers)))

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

    def width_site(self, slot_id: str, kind: str = "units") -> WidthSite:
        """Kind "units": the hidden units of layer i's MLP, mlp[0]'s outputs, consumed by mlp[2].
        Kind "heads": its attention heads, their rows of q, k and v in `attn.qkv` (three parts,
        head_dim rows each), consumed by `attn.proj` (head_dim columns each). (The layer's
        output width is the residual stream's, which every layer shares: it cannot widen alone.)"""
        layer = self.layers[self.stage_index(slot_id)]
        if kind == "heads":
            attn = layer.attn
            return WidthSite(
                attn.qkv, None, attn.attend, attn.proj, at_slot=False, parts=3, unit_size=attn.head_dim
            )
        self._only_units(slot_id, kind)
        return WidthSite(layer.mlp[0], None, F.gelu, layer.mlp[2], at_slot=False)


class MLPHost(StagedHost):
    """Hidden Linear -> ReLU layers of equal width, a slot after every one, a linear head.

    Features at every slot are (B, hidden): the "mlp" topology.
    """

    topology = "mlp"

    def __init__(
        self, in_features: int, num_classes: int = 10, hidden: int = 64, n_layers: int = 2
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"MLPHost needs n_layers >= 1, got {n_layers}")
        widths = [in_features] + [hidden] * n_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU()) for c_in, c_out in itertools.pairwise(widths)
        )
        self.classifier = nn.Linear(hidden, num_classes)
        self._set_injection_points({f"layer{i + 1}": (i, hidden) for i in range(n_layers)})

    @property
    def trunk(self) -> nn.ModuleList:
        return self.layers

    def head(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    def width_site(self, slot_id: str, kind: str = "units") -> WidthSite:
        """Hidden layer i's units, consumed by the next hidden Linear or the classifier."""
        self._only_units(slot_id, kind)
        i = self.stage_index(slot_id)
        consumer = self.classifier if i + 1 == len(self.layers) else self.layers[i + 1][0]
        return WidthSite(self.layers[i][0], None, F.relu, consumer)


class SeededModel(nn.Module):
    """What the trainer, governor and controllers use of a model with seed slots.

    `MorphogeneticModel` (a built-in host) and `esper.graft`'s `GraftedModel` (any
    model) both provide it: `seed_slots`, `host` (the network the slots sit in; its
    `host_parameters()`, or else its `parameters()`, are the host's), `germinate`,
    and the host/seed parameter split. Fossils (the seeds each slot's stack has kept)
    are in neither `host_parameters()` nor `seed_parameters()` but in
    `fossil_parameters()`: they are reported as parameters added by growth
    (`seed_param_count`) and optimised with the host.
    """

    host: nn.Module

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        raise NotImplementedError

    def host_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def germinate(self, slot_id: str, blueprint_id: str, seed_id: str | None = None) -> SeedState:
        """Plant a seed from `blueprint_id` in slot `slot_id` (see `SeedSlot.germinate`)."""
        slots = self.seed_slots
        if slot_id not in slots:
            raise ValueError(f"Unknown slot '{slot_id}'. Available: {', '.join(slots)}")
        return slots[slot_id].germinate(blueprint_id, seed_id, host_module=self.host)

    @property
    def mount(self) -> SlotMount:
        """The module that places the slots (the built-in host, or the graft itself)."""
        raise NotImplementedError

    def export(self) -> nn.Module:
        """The grown network as a plain model: a copy of the host with every slot's fossils
        built in after the module they sit on, and no slots or hooks left in its forward.

        Its outputs equal this model's with every live seed switched off (alpha 0): a seed
        still on trial is not part of the network yet. The copy is independent of this model.
        """
        plain = copy.deepcopy(self)
        plain.mount.fuse_slots()
        return plain.host

    def seed_parameters(self, slot_id: str | None = None) -> list[nn.Parameter]:
        """The live seeds' parameters (of every slot, or of `slot_id`'s)."""
        slots = self.seed_slots if slot_id is None else {slot_id: self.seed_slots[slot_id]}
        return [p for slot in slots.values() if slot.seed is not None for p in slot.seed.parameters()]

    def slot_topology(self) -> str:
        """The one seed topology of every slot; a `ValueError` naming them when they differ.

        Controllers plant the same blueprints in every slot, so they need slots of one kind.
        """
        topologies = {slot_id: slot.task_config.topology for slot_id, slot in self.seed_slots.items()}
        if not topologies:
            raise ValueError("the model has no seed slots to grow")
        if len(set(topologies.values())) > 1:
            found = ", ".join(f"{slot_id}: {topology}" for slot_id, topology in topologies.items())
            raise ValueError(
                f"a controller plants the same blueprints in every slot, so the slots must share "
                f"one topology; these are {found}: choose targets of one kind"
            )
        return next(iter(topologies.values()))

    def fossil_parameters(self) -> list[nn.Parameter]:
        """The fossilized seeds' parameters: grown, and trained as host from their fossilization."""
        return [p for slot in self.seed_slots.values() for p in slot.fossils.parameters()]

    def merged_param_count(self) -> int:
        """Parameters that fossilized width seeds merged into the host's own layers."""
        return sum(report.params for slot in self.seed_slots.values() for report in slot.widenings)

    def host_param_count(self) -> int:
        """The host as it was built: fossils and merged width are not in it (they are added)."""
        return sum(p.numel() for p in self.host_parameters()) - self.merged_param_count()

    def seed_param_count(self) -> int:
        """Parameters added by growth: the live seeds', the fossils' and the merged width's."""
        return (
            sum(p.numel() for p in self.seed_parameters())
            + sum(p.numel() for p in self.fossil_parameters())
            + self.merged_param_count()
        )


def _floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a host computes its features in: that of its floating-point parameters."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype())


class MorphogeneticModel(SeededModel):
    """A built-in host (a `StagedHost`) with one `SeedSlot` at each chosen injection point.

    For a model of your own, use `esper.graft(model, targets, example_input)`.
    """

    def __init__(
        self,
        host: StagedHost,
        slot_ids: Iterable[str] | None = None,
        device: str | torch.device = "cpu",
        gates: QualityGates | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(host, SlotMount):
            raise TypeError(
                f"MorphogeneticModel needs a host with injection points (CNNHost, TransformerHost, "
                f"MLPHost or another StagedHost), got {type(host).__name__}. To grow any other "
                "model, graft slots onto its modules: esper.graft(model, targets, example_input)"
            )
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
        dtype = _floating_dtype(host)
        for slot_id in chosen:
            slot = SeedSlot(
                slot_id,
                channels=host.injection_points[slot_id],
                device=device,
                gates=gates,
                on_telemetry=on_telemetry,
                fast_mode=fast_mode,
                task_config=config,
                dtype=dtype,
            )
            host.register_slot(slot_id, slot)

    @property
    def seed_slots(self) -> dict[str, SeedSlot]:
        return self.host.placed_slots()

    @property
    def mount(self) -> SlotMount:
        return self.host

    def forward(self, x: Tensor) -> Tensor:
        return self.host(x)

    def host_parameters(self) -> list[nn.Parameter]:
        return self.host.host_parameters()
