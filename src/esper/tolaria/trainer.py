"""One epoch of morphogenetic training: host and seed optimisers, validation, counterfactuals.

The host and the seeds have separate optimisers (`Optimizers`, the one optimiser
manager, which keeps a user's single optimiser in step the same way). Seeds share
one optimiser with a param group per live seed, so a new seed is added (and a
culled one removed) without touching the host optimiser or its momentum; a
fossilized seed's group moves to the host optimiser, where it stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.host import MorphogeneticModel, StagedHost
from esper.kasmina.slot import SeedSlot
from esper.leyline import ACTIVE_STAGES, MEASURED_STAGES, SeedStage
from esper.leyline.ranges import Fraction, check_fields
from esper.tolaria.distributed import World
from esper.tolaria.precision import FP32, Precision
from esper.tolaria.pressure import PressureMeter

Batches = Iterable[tuple[Tensor, Tensor]]
# A seed's param group is keyed by (slot id, seed id): seed ids are unique within a slot.
SeedKey = tuple[str, str]


LR_SCHEDULES = ("constant", "cosine", "cosine-restarts")


def lr_scale(schedule: str, progress: float, restarts: Sequence[float] = (), warmup: float = 0.0) -> float:
    """The factor on every learning rate `progress` (0 at the start, 1 at the end) of the way
    through a run's planned training. Hand-written rather than torch's CosineAnnealingLR: a
    scheduler fixes its param groups when made, and seeds come and go during the run.

    "cosine-restarts": from each of `restarts` (fractions of the run: a plan's growth steps) on,
    the cosine starts again at the peak and anneals to 0 by the end, as LEMON does after an
    expansion (the same peak, a faster decay): a network widened late learns at a rate its new
    units can use, not at the tail of the run's cosine.

    With a `warmup` share of the run, the schedule's factor is first ramped linearly from 0
    (at progress 0) to its full value (at progress `warmup`), as nanoGPT and GPT-2 warm up."""
    progress = min(max(progress, 0.0), 1.0)
    factor = 1.0
    if schedule != "constant":
        start = 0.0
        if schedule == "cosine-restarts":
            start = max((point for point in restarts if point <= progress), default=0.0)
        factor = 0.5 * (1.0 + math.cos(math.pi * (progress - start) / (1.0 - start)))
    return factor * progress / warmup if progress < warmup else factor


@dataclass(frozen=True, slots=True)
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    host_lr: float = 0.05
    seed_lr: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    # Seed/host gradient norms are read every N steps (each read syncs with the device).
    grad_stats_every: int = 4
    # "constant", or "cosine": every learning rate follows half a cosine from its value to 0 over
    # the run's planned training (`Optimizers.set_progress`), so a run ends converged rather
    # than at a random point of a noisy trajectory, and its final metric is a fair one to judge;
    # "cosine-restarts": the same, started again from the peak at each of `lr_restarts` (`lr_scale`).
    lr_schedule: str = "constant"
    # Where "cosine-restarts" starts again: fractions of the run in [0, 1) (a schedule run's
    # growth steps after the first); the other schedules ignore them.
    lr_restarts: tuple[float, ...] = ()
    # A linear warmup over this share of the planned training (0: none; `lr_scale`), stepped
    # batch by batch: the first steps of a deep transformer at the peak rate can strand it.
    lr_warmup: Fraction = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got '{self.optimizer}'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if not all(0.0 <= point < 1.0 for point in self.lr_restarts):
            raise ValueError(f"lr_restarts are fractions of the run in [0, 1), got {list(self.lr_restarts)}")
        if self.host_lr <= 0 or self.seed_lr <= 0:
            raise ValueError("learning rates must be > 0")


def _make_optimizer(config: OptimConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def group_key(group: dict[str, Any]) -> SeedKey | None:
    """The seed a param group belongs to; None for a group of the host's own."""
    return (group["slot_id"], group["seed_id"]) if "seed_id" in group else None


def seed_parameters(slots: Mapping[str, SeedSlot], key: SeedKey) -> list[nn.Parameter]:
    """The parameters of seed `key`: its slot's live seed, or one of the fossils in its stack."""
    slot_id, seed_id = key
    slot = slots[slot_id]
    if slot.state is not None and slot.state.seed_id == seed_id and slot.seed is not None:
        return list(slot.seed.parameters())
    fossils = [report.seed_id for report in slot.fossil_reports]
    if seed_id not in fossils:
        raise ValueError(f"slot '{slot_id}' holds no seed {seed_id}, live or fossilized")
    return list(slot.fossils[fossils.index(seed_id)].parameters())


def _has_grads(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class Optimizers:
    """The one optimiser manager: the host's and the seeds' param groups, kept in step with the slots.

    Every seed has a param group of its own, tagged with "slot_id", "seed_id" and
    "fossil" (`group_key`). A live seed's group is in `seeds` at `seed_lr`, so a new
    seed joins (and a culled one leaves, with its optimiser state) without touching
    the host's groups or their momentum. A fossilized seed is host from then on: its
    group moves to `host` (a slot's stack can hold many, each its own group) at
    `fossil_lr`, by default the learning rate of the host's first group at that
    moment. The host's own groups are never touched.

    Esper's jobs build both from an `OptimConfig` (`from_config`: two optimisers,
    and the config's learning-rate schedule, `set_progress`). A user's loop
    (`esper.Grower`) gives its one optimiser as both: the seeds' groups join it, and
    its own scheduler (made before a seed's group existed, it does not schedule it).
    """

    def __init__(
        self,
        host: torch.optim.Optimizer,
        seeds: torch.optim.Optimizer | None = None,
        seed_lr: float | None = None,
        fossil_lr: float | None = None,
        config: OptimConfig | None = None,
    ) -> None:
        if not isinstance(host, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(host).__name__}")
        for name, lr in (("seed_lr", seed_lr), ("fossil_lr", fossil_lr)):
            if lr is not None and not lr > 0:
                raise ValueError(f"{name} must be > 0, got {lr}")
        self.host = host
        self.seeds = host if seeds is None else seeds
        self.seed_lr = seed_lr if seed_lr is not None else float(self.seeds.param_groups[0]["lr"])
        self.fossil_lr = fossil_lr
        self.config = config  # None: a user's optimiser (stepped and scheduled by the user's loop)
        self._progress, self._step_share = 0.0, 0.0  # where the schedule is (`set_progress`)

    @classmethod
    def from_config(cls, model: MorphogeneticModel, config: OptimConfig) -> Optimizers:
        host = _make_optimizer(config, model.host_parameters(), config.host_lr)
        # An optimiser needs at least one group at construction; this one starts empty.
        seeds = _make_optimizer(config, [torch.zeros(0, requires_grad=True)], config.seed_lr)
        seeds.param_groups.clear()
        seeds.state.clear()
        return cls(host, seeds, config.seed_lr, config=config)

    @staticmethod
    def _groups(optimizer: torch.optim.Optimizer, fossil: bool) -> list[dict[str, Any]]:
        return [g for g in optimizer.param_groups if group_key(g) is not None and g["fossil"] == fossil]

    def seed_order(self) -> list[SeedKey]:
        """The live seeds with a group, in group order."""
        return [group_key(g) for g in self._groups(self.seeds, fossil=False)]

    def slot_order(self) -> list[str]:
        """The slots whose live seed has a group, in group order."""
        return [slot_id for slot_id, _ in self.seed_order()]

    def fossil_order(self) -> list[SeedKey]:
        """The fossilized seeds with a group (optimised as host), in group order."""
        return [group_key(g) for g in self._groups(self.host, fossil=True)]

    def add_seed(self, key: SeedKey, params: list[nn.Parameter]) -> None:
        slot_id, seed_id = key
        if key in self.seed_order() or key in self.fossil_order():
            raise RuntimeError(f"seed {seed_id} in slot '{slot_id}' already has a param group")
        held = {id(p) for optimizer in self.torch_optimizers() for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) in held for p in params):
            raise ValueError(
                f"the optimizer already holds parameters of the seed in slot '{slot_id}': build it "
                "before planting seeds (the Grower adds each seed's parameters itself)"
            )
        self.seeds.add_param_group({"params": params, "lr": self.seed_lr, "slot_id": slot_id, "seed_id": seed_id, "fossil": False})

    def remove_seed(self, key: SeedKey) -> None:
        remove_groups(self.seeds, lambda group: group_key(group) == key and not group["fossil"])

    def move_seed_to_host(self, key: SeedKey) -> None:
        """A fossilized seed is host from now on: it trains at the host's pace."""
        group = next(g for g in self._groups(self.seeds, fossil=False) if group_key(g) == key)
        lr = self.fossil_lr if self.fossil_lr is not None else self.host.param_groups[0]["lr"]
        if self.seeds is self.host:
            group.update(fossil=True, lr=lr)
            return
        self.remove_seed(key)
        self.host.add_param_group({**{k: group[k] for k in ("params", "slot_id", "seed_id")}, "fossil": True, "lr": lr})

    def torch_optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.host,) if self.seeds is self.host else (self.host, self.seeds)

    def set_progress(self, progress: float, step_share: float = 0.0) -> None:
        """Learning rates for a run `progress` of the way through (`OptimConfig.lr_schedule`):
        host and fossil groups at host_lr, live seeds at seed_lr, times the schedule's factor.
        Called as each epoch starts, so a checkpoint resumes with the same rates. During a
        warmup (`OptimConfig.lr_warmup`) every step advances the run by `step_share` (an
        epoch's share over its batches) and its rates are those at the step's end, so the
        first step's are above 0. A user's optimiser follows the user's own scheduler, untouched."""
        self._progress, self._step_share = progress, step_share
        self._set_rates()

    def _warming(self) -> bool:
        return self.config is not None and self._progress < self.config.lr_warmup

    def _set_rates(self) -> None:
        config = self.config
        if config is None or (config.lr_schedule == "constant" and config.lr_warmup == 0):
            return
        at = self._progress + self._step_share if self._warming() else self._progress
        scale = lr_scale(config.lr_schedule, at, config.lr_restarts, config.lr_warmup)
        for group in self.host.param_groups:
            group["lr"] = config.host_lr * scale
        for group in self.seeds.param_groups:
            group["lr"] = config.seed_lr * scale

    def zero_grad(self) -> None:
        for optimizer in self.torch_optimizers():
            optimizer.zero_grad(set_to_none=True)

    def unscale_(self, scaler: torch.amp.GradScaler) -> None:
        """Divide the gradients by the loss scale (fp16-mixed), before they are read or clipped."""
        for optimizer in self.torch_optimizers():
            if _has_grads(optimizer):  # the scaler refuses an optimiser without gradients
                scaler.unscale_(optimizer)

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        # The scaler skips the step when a gradient overflowed; it steps only optimisers that
        # hold gradients (a GERMINATED seed's group has none yet). An empty one is not stepped.
        for optimizer in self.torch_optimizers():
            if scaler is not None:
                if _has_grads(optimizer):
                    scaler.step(optimizer)
            elif optimizer.param_groups:
                optimizer.step()
        if self._warming():
            self._progress += self._step_share
            self._set_rates()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [optimizer.state_dict() for optimizer in self.torch_optimizers()],
            "seed_groups": [
                [[g["slot_id"], g["seed_id"], g["fossil"]] for g in optimizer.param_groups if group_key(g) is not None]
                for optimizer in self.torch_optimizers()
            ],
        }

    def load_state_dict(self, saved: dict[str, Any], slots: Mapping[str, SeedSlot]) -> None:
        """Each optimiser's saved seed groups rebuilt from `slots` (loaded first: their stacks and
        live seeds) in their saved order, then its saved state (each group's lr too).

        The host's own groups must be those it was saved with (a user's optimiser: build it
        the same way); the seed groups it holds now are replaced."""
        optimizers = self.torch_optimizers()
        if len(saved["optimizers"]) != len(optimizers):
            raise ValueError(f"the checkpoint holds {len(saved['optimizers'])} optimiser(s), this run {len(optimizers)}")
        for optimizer, groups, state in zip(optimizers, saved["seed_groups"], saved["optimizers"], strict=True):
            remove_groups(optimizer, lambda group: group_key(group) is not None)
            for slot_id, seed_id, fossil in groups:
                params = seed_parameters(slots, (slot_id, seed_id))
                optimizer.add_param_group({"params": params, "lr": self.seed_lr, "slot_id": slot_id,
                                           "seed_id": seed_id, "fossil": fossil})  # fmt: skip
            load_tagged_state(optimizer, state)


_SEED_TAGS = ("slot_id", "seed_id", "fossil")  # what marks a seed's param group (see `group_key`)


def load_tagged_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, each group keeping the seed tags it has now.

    Loading replaces every group's settings by the saved ones, tags included: the groups,
    rebuilt from the slots, carry the right ones already.
    """
    tags = [{key: group[key] for key in _SEED_TAGS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, tag in zip(optimizer.param_groups, tags, strict=True):
        for key in _SEED_TAGS:
            group.pop(key, None)
        group.update(tag)


def remove_groups(optimizer: torch.optim.Optimizer, drop: Callable[[dict[str, Any]], bool]) -> None:
    """Remove the param groups `drop` selects, with their parameters' optimiser state."""
    # Rebuild the list instead of `list.remove`: that compares groups with ==, which
    # compares their parameter tensors and fails when shapes differ.
    kept = []
    for group in optimizer.param_groups:
        if drop(group):
            for param in group["params"]:
                optimizer.state.pop(param, None)
        else:
            kept.append(group)
    optimizer.param_groups[:] = kept


def loss_and_correct(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and the number of correct predictions (classes or next tokens)."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets)
    correct = (flat_logits.argmax(dim=-1) == flat_targets).sum()
    return loss, correct


@dataclass(slots=True)
class EpochStats:
    loss: float
    accuracy: float
    steps: int
    # Each batch's mean loss, in loader order: which batches failed, when the governor asks.
    batch_losses: list[float] = field(default_factory=list)


class _Totals:
    """Sums loss and correct counts on the batches' device; one host sync when the epoch ends.

    Each batch's loss is kept as a device tensor too (no sync per step), so a
    diverged epoch can say which batches went wrong. On several ranks (each with
    its share of every batch) `stats` first sums the ranks' totals in one collective.
    """

    def __init__(self) -> None:
        self.loss: Tensor | None = None
        self.correct: Tensor | None = None
        self.count = 0
        self.steps = 0
        self.batch_losses: list[Tensor] = []
        self.batch_counts: list[int] = []

    def add(self, loss: Tensor, correct: Tensor, targets: Tensor) -> None:
        loss = loss.detach()
        if self.loss is None or self.correct is None:
            self.loss = torch.zeros((), device=loss.device)
            self.correct = torch.zeros((), dtype=torch.long, device=loss.device)
        self.loss += loss.float() * targets.numel()
        self.correct += correct
        self.count += targets.numel()
        self.steps += 1
        self.batch_losses.append(loss)
        self.batch_counts.append(targets.numel())

    def reduce(self, world: World | None) -> None:
        """Replace this rank's totals by the global batches' (every rank ran the same batches)."""
        if world is None or not world.distributed or self.loss is None or self.correct is None:
            return
        counts = torch.tensor(self.batch_counts, dtype=torch.float64)
        sums = torch.stack(self.batch_losses).double().cpu() * counts
        packed = torch.cat([torch.stack([self.loss.double().cpu(), self.correct.double().cpu()]), sums, counts])
        world.all_reduce_(packed)
        steps = self.steps
        self.loss, self.correct = packed[0].float(), packed[1].round().long()
        counts = packed[2 + steps :]
        self.count = int(counts.sum().round())
        self.batch_losses = list((packed[2 : 2 + steps] / counts).float())
        self.batch_counts = counts.round().long().tolist()

    def stats(self, what: str, world: World | None = None) -> EpochStats:
        self.reduce(world)
        if self.count == 0 or self.loss is None or self.correct is None:
            raise ValueError(f"{what} got no batches: its loader is empty")
        correct, losses = _read_back(self.correct, torch.stack([self.loss, *self.batch_losses]))
        return EpochStats(losses[0] / self.count, correct / self.count, self.steps, losses[1:])


def _read_back(count: Tensor, values: Tensor) -> tuple[int, list[float]]:
    """An int64 count and float32 values, read back to the host in ONE device-to-host copy.

    Hand-packed because `.item()` per number synchronises once each, and packing into
    float64 is not available on every device (MPS has none): both go into one int32
    buffer by reinterpreting their bits (exact), and come apart the same way.
    """
    packed = torch.cat([count.reshape(1).view(torch.int32), values.float().view(torch.int32)]).cpu()
    return int(packed[:2].view(torch.int64)), packed[2:].view(torch.float32).tolist()


def live_slots(model: MorphogeneticModel) -> list[SeedSlot]:
    """The slots whose seed trains this epoch."""
    return [s for s in model.seed_slots.values() if s.stage in ACTIVE_STAGES and s.seed is not None]


def note_unisolated_incubators(live: Iterable[SeedSlot]) -> None:
    """Count an isolation violation for each seed that incubated this epoch without isolation."""
    for slot in live:
        if slot.stage == SeedStage.TRAINING and not slot.isolate_gradients:
            # The incubator runs without isolation: the host learns from the seed's path.
            slot.state.metrics.isolation_violations += 1


def train_epoch(
    model: MorphogeneticModel,
    batches: Batches,
    optimizers: Optimizers,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
    world: World | None = None,
    pressure: PressureMeter | None = None,
) -> EpochStats:
    """Train host and live seeds for one pass over `batches`.

    Live seeds' gradient norms (relative to the host's) are read every
    `grad_stats_every` steps into their metrics; this is what G2 checks. On the same
    steps `pressure`, when given, reads each slot's host layers' relative gradient norm. The
    forward pass and the loss run under `precision`'s autocast; with a `scaler`
    (fp16-mixed) the loss is scaled for backward and the gradients unscaled before
    they are read, clipped and stepped.

    With a distributed `world`, `batches` are this rank's shares of the global
    batches: after each backward the gradients become the global batch's (before
    they are unscaled, read and clipped, so every rank sees the same overflow and
    does the same), and the BatchNorm running statistics are averaged over the
    ranks at the end.
    """
    distributed = world is not None and world.distributed
    model.train()
    config = optimizers.config
    live = live_slots(model)
    note_unisolated_incubators(live)
    params = [p for group in optimizers.host.param_groups for p in group["params"]]
    params += [p for group in optimizers.seeds.param_groups for p in group["params"]]
    totals = _Totals()
    for inputs, targets in batches:
        with precision.autocast():
            logits = model(inputs)
            loss, correct = loss_and_correct(logits, targets)
        optimizers.zero_grad()
        (loss if scaler is None else scaler.scale(loss)).backward()
        if distributed:
            world.reduce_gradients(params, targets.numel())
        if scaler is not None:
            optimizers.unscale_(scaler)
        if totals.steps % config.grad_stats_every == 0:
            for slot in live:
                slot.record_gradient_norms()
            if pressure is not None:
                pressure.read()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizers.step(scaler)
        if scaler is not None:
            scaler.update()
        totals.add(loss, correct, targets)
    if distributed:
        world.average_buffers(model)
    return totals.stats("train_epoch", world)


@torch.no_grad()
def validate(
    model: nn.Module, batches: Batches, precision: Precision = FP32, world: World | None = None
) -> EpochStats:
    model.eval()
    totals = _Totals()
    for inputs, targets in batches:
        with precision.autocast():
            loss, correct = loss_and_correct(model(inputs), targets)
        totals.add(loss, correct, targets)
    return totals.stats("validate", world)


@dataclass(slots=True)
class ValidationResult:
    loss: float
    accuracy: float
    # slot id -> accuracy with the slot as is minus accuracy with its alpha forced to 0.
    contributions: dict[str, float] = field(default_factory=dict)
    batch_losses: list[float] = field(default_factory=list)


def validate_with_counterfactuals(
    model: MorphogeneticModel,
    batches: Batches,
    naive: bool = False,
    precision: Precision = FP32,
    world: World | None = None,
) -> ValidationResult:
    """Validation accuracy, plus each blended seed's counterfactual contribution.

    The contribution of a slot is measured with only that slot's alpha at 0; the
    other slots stay as they are. It is written into the seed's metrics.

    The fast path runs the trunk once per batch, keeps the features entering each
    measured slot, and for a slot's counterfactual recomputes only the stages
    after it (alpha 0 makes the slot pass those features through), or from its own
    stage for a width seed that acts inside it (`StagedHost.resume_stage`). It computes
    exactly what the naive path (`naive=True`: one full pass per measured slot
    with `force_alpha(0.0)`) computes, the same ops on the same values, so the
    contributions are identical; its cost is one pass plus the tails. Hosts that
    are not a `StagedHost` (no stages to resume from) take the naive path.
    """
    measured = {key: slot for key, slot in model.seed_slots.items() if slot.stage in MEASURED_STAGES}
    host = model.host
    if naive or not measured or not isinstance(host, StagedHost):
        return _naive_counterfactuals(model, batches, measured, precision, world)
    model.eval()
    base = _Totals()
    without: dict[str, Tensor] = {}
    with torch.no_grad(), precision.autocast():
        for inputs, targets in batches:
            taps: dict[str, Tensor] = dict.fromkeys(measured)
            base.add(*loss_and_correct(host.run(host.stem(inputs), taps=taps), targets), targets)
            for key, features in taps.items():
                with measured[key].force_alpha(0.0):  # a width seed acts in a stage it resumes at
                    _, correct = loss_and_correct(host.run(features, host.resume_stage(key)), targets)
                without[key] = without[key] + correct if key in without else correct
    stats = base.stats("validate", world)
    result = ValidationResult(stats.loss, stats.accuracy, batch_losses=stats.batch_losses)
    # One more read-back for all the slots' counts together (on several ranks, one collective).
    stacked = torch.stack([without[key] for key in measured]).cpu()
    if world is not None and world.distributed:
        stacked = world.all_reduce_(stacked)
    counts = stacked.tolist()
    for (key, slot), count in zip(measured.items(), counts, strict=True):
        contribution = stats.accuracy - count / base.count
        result.contributions[key] = slot.state.metrics.counterfactual_contribution = contribution
    return result


def _naive_counterfactuals(
    model: MorphogeneticModel,
    batches: Batches,
    measured: dict[str, SeedSlot],
    precision: Precision,
    world: World | None = None,
) -> ValidationResult:
    """The reference: one plain validation pass, then one per measured slot at alpha 0."""
    base = validate(model, batches, precision, world)
    result = ValidationResult(base.loss, base.accuracy, batch_losses=base.batch_losses)
    result.contributions = contributions_by_force_alpha(
        measured, lambda: validate(model, batches, precision, world).accuracy, base.accuracy
    )
    return result


def contributions_by_force_alpha(
    measured: dict[str, SeedSlot], score: Callable[[], float], base: float
) -> dict[str, float]:
    """Each slot's counterfactual contribution: `base` (the score as is) minus `score()` with
    that slot's alpha forced to 0, the other slots as they are; written into the seed's metrics."""
    contributions = {}
    for key, slot in measured.items():
        with slot.force_alpha(0.0):
            without = score()
        contributions[key] = slot.state.metrics.counterfactual_contribution = base - without
    return contributions


@torch.no_grad()
def batch_losses(
    model: nn.Module,
    batches: Batches,
    indices: Sequence[int],
    train_mode: bool,
    precision: Precision = FP32,
    world: World | None = None,
) -> list[float]:
    """Recompute the mean loss of the batches at `indices` (loader order) as the model is now.

    For the governor's culprit search only, on the rare rollback path: it
    re-iterates the loader, which must yield the same batches again (an
    `InMemoryLoader` with the same epoch set does). `train_mode` runs the model
    as training ran it (BatchNorm on batch statistics; running statistics get
    updated, so the caller restores the model afterwards).
    """
    model.train(train_mode)
    wanted, last = set(indices), max(indices)
    totals = _Totals()
    for i, (inputs, targets) in enumerate(batches):
        if i > last:
            break
        if i in wanted:
            with precision.autocast():
                totals.add(*loss_and_correct(model(inputs), targets), targets)
    totals.reduce(world)  # each rank recomputed its share of those batches
    return torch.stack(totals.batch_losses).float().tolist()


def record_validation(slots: Iterable[SeedSlot], accuracy: float) -> None:
    for slot in slots:
        if slot.state is not None:
            slot.state.metrics.record_accuracy(accuracy)
