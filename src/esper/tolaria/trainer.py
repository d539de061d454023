"""One epoch of morphogenetic training: host and seed optimisers, validation, counterfactuals.

The host and the seeds have separate optimisers. Seeds share one optimiser with a
param group per live seed, so a new seed is added (and a culled one removed)
without touching the host optimiser or its momentum; a fossilized seed's group
moves to the host optimiser, where it stays (a slot's stack can hold many).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina.host import MorphogeneticModel, StagedHost
from esper.kasmina.slot import SeedSlot
from esper.leyline import ACTIVE_STAGES, MEASURED_STAGES, SeedStage

Batches = Iterable[tuple[Tensor, Tensor]]
# A seed's param group is keyed by (slot id, seed id): seed ids are unique within a slot.
SeedKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    host_lr: float = 0.05
    seed_lr: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    # Seed/host gradient norms are read every N steps (each read syncs with the device).
    grad_stats_every: int = 4

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got '{self.optimizer}'")
        if self.host_lr <= 0 or self.seed_lr <= 0:
            raise ValueError("learning rates must be > 0")


def _make_optimizer(config: OptimConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def group_key(group: dict[str, Any]) -> SeedKey | None:
    """The seed a param group belongs to; None for the host's own group."""
    return (group["slot_id"], group["seed_id"]) if "seed_id" in group else None


class Optimizers:
    """Host optimiser plus one seed optimiser with a param group per live seed.

    Every seed group carries its "slot_id" and "seed_id"; so does each group of a
    fossil in the host optimiser (the host's own group is the first and has neither).
    """

    def __init__(self, model: MorphogeneticModel, config: OptimConfig) -> None:
        self.config = config
        self.host = _make_optimizer(config, model.host_parameters(), config.host_lr)
        # An optimiser needs at least one group at construction; this one stays empty.
        self.seeds = _make_optimizer(config, [torch.zeros(0, requires_grad=True)], config.seed_lr)
        self.seeds.param_groups.clear()
        self.seeds.state.clear()

    def seed_order(self) -> list[SeedKey]:
        """The live seeds with a group in the seed optimiser, in group order."""
        return [group_key(group) for group in self.seeds.param_groups]

    def slot_order(self) -> list[str]:
        """The slots whose live seed has a group in the seed optimiser, in group order."""
        return [slot_id for slot_id, _ in self.seed_order()]

    def fossil_order(self) -> list[SeedKey]:
        """The fossils with a group in the host optimiser, in group order."""
        return [group_key(group) for group in self.host.param_groups[1:]]

    def add_seed(self, key: SeedKey, params: list[nn.Parameter]) -> None:
        if key in self.seed_order():
            raise RuntimeError(f"seed {key[1]} in slot '{key[0]}' already has a param group")
        slot_id, seed_id = key
        self.seeds.add_param_group({"params": params, "slot_id": slot_id, "seed_id": seed_id})

    def remove_seed(self, key: SeedKey) -> None:
        # Rebuild the list instead of `list.remove`: that compares groups with ==, which
        # compares their parameter tensors and fails when shapes differ.
        kept = []
        for group in self.seeds.param_groups:
            if group_key(group) == key:
                for param in group["params"]:
                    self.seeds.state.pop(param, None)
            else:
                kept.append(group)
        self.seeds.param_groups[:] = kept

    def move_seed_to_host(self, key: SeedKey) -> None:
        """A fossilized seed is host from now on: it trains at the host's pace."""
        group = next(g for g in self.seeds.param_groups if group_key(g) == key)
        params = group["params"]
        self.remove_seed(key)
        slot_id, seed_id = key
        self.host.add_param_group(
            {"params": params, "lr": self.config.host_lr, "slot_id": slot_id, "seed_id": seed_id}
        )

    def zero_grad(self) -> None:
        self.host.zero_grad(set_to_none=True)
        self.seeds.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.host.step()
        if self.seeds.param_groups:
            self.seeds.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "host": self.host.state_dict(),
            "seeds": self.seeds.state_dict(),
            "host_fossils": [list(key) for key in self.fossil_order()],
            "seed_groups": [list(key) for key in self.seed_order()],
        }


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
    """Sums loss and correct counts on-device; one host sync when the epoch ends.

    Each batch's loss is kept as a device tensor too (no sync per step), so a
    diverged epoch can say which batches went wrong.
    """

    def __init__(self) -> None:
        self.loss = torch.zeros(())
        self.correct = torch.zeros((), dtype=torch.long)
        self.count = 0
        self.steps = 0
        self.batch_losses: list[Tensor] = []

    def add(self, loss: Tensor, correct: Tensor, targets: Tensor) -> None:
        loss = loss.detach()
        self.loss += loss * targets.numel()
        self.correct += correct
        self.count += targets.numel()
        self.steps += 1
        self.batch_losses.append(loss)

    def stats(self, what: str) -> EpochStats:
        if self.count == 0:
            raise ValueError(f"{what} got no batches: its loader is empty")
        return EpochStats(
            self.loss.item() / self.count,
            self.correct.item() / self.count,
            self.steps,
            torch.stack(self.batch_losses).float().tolist(),
        )


def train_epoch(model: MorphogeneticModel, batches: Batches, optimizers: Optimizers) -> EpochStats:
    """Train host and live seeds for one pass over `batches`.

    Live seeds' gradient norms (relative to the host's) are read every
    `grad_stats_every` steps into their metrics; this is what G2 checks.
    """
    model.train()
    config = optimizers.config
    live = [s for s in model.seed_slots.values() if s.stage in ACTIVE_STAGES and s.seed is not None]
    for slot in live:
        if slot.stage == SeedStage.TRAINING and not slot.isolate_gradients:
            # The incubator runs without isolation: the host learns from the seed's path.
            slot.state.metrics.isolation_violations += 1
    params = [p for group in optimizers.host.param_groups for p in group["params"]]
    params += [p for group in optimizers.seeds.param_groups for p in group["params"]]
    totals = _Totals()
    for inputs, targets in batches:
        logits = model(inputs)
        loss, correct = loss_and_correct(logits, targets)
        optimizers.zero_grad()
        loss.backward()
        if totals.steps % config.grad_stats_every == 0:
            for slot in live:
                slot.record_gradient_norms()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizers.step()
        totals.add(loss, correct, targets)
    return totals.stats("train_epoch")


@torch.no_grad()
def validate(model: nn.Module, batches: Batches) -> EpochStats:
    model.eval()
    totals = _Totals()
    for inputs, targets in batches:
        loss, correct = loss_and_correct(model(inputs), targets)
        totals.add(loss, correct, targets)
    return totals.stats("validate")


@dataclass(slots=True)
class ValidationResult:
    loss: float
    accuracy: float
    # slot id -> accuracy with the slot as is minus accuracy with its alpha forced to 0.
    contributions: dict[str, float] = field(default_factory=dict)
    batch_losses: list[float] = field(default_factory=list)


def validate_with_counterfactuals(
    model: MorphogeneticModel, batches: Batches, naive: bool = False
) -> ValidationResult:
    """Validation accuracy, plus each blended seed's counterfactual contribution.

    The contribution of a slot is measured with only that slot's alpha at 0; the
    other slots stay as they are. It is written into the seed's metrics.

    The fast path runs the trunk once per batch, keeps the features entering each
    measured slot, and for a slot's counterfactual recomputes only the stages
    after it (alpha 0 makes the slot pass those features through). It computes
    exactly what the naive path (`naive=True`: one full pass per measured slot
    with `force_alpha(0.0)`) computes, the same ops on the same values, so the
    contributions are identical; its cost is one pass plus the tails. Hosts that
    are not a `StagedHost` (no stages to resume from) take the naive path.
    """
    measured = {key: slot for key, slot in model.seed_slots.items() if slot.stage in MEASURED_STAGES}
    host = model.host
    if naive or not measured or not isinstance(host, StagedHost):
        return _naive_counterfactuals(model, batches, measured)
    model.eval()
    base = _Totals()
    without = {key: torch.zeros((), dtype=torch.long) for key in measured}
    with torch.no_grad():
        for inputs, targets in batches:
            taps: dict[str, Tensor] = dict.fromkeys(measured)
            base.add(*loss_and_correct(host.run(host.stem(inputs), taps=taps), targets), targets)
            for key, features in taps.items():
                _, correct = loss_and_correct(host.run(features, host.stage_index(key) + 1), targets)
                without[key] += correct
    stats = base.stats("validate")
    result = ValidationResult(stats.loss, stats.accuracy, batch_losses=stats.batch_losses)
    for key, slot in measured.items():
        _record_contribution(result, key, slot, stats.accuracy - without[key].item() / base.count)
    return result


def _naive_counterfactuals(
    model: MorphogeneticModel, batches: Batches, measured: dict[str, SeedSlot]
) -> ValidationResult:
    """The reference: one plain validation pass, then one per measured slot at alpha 0."""
    base = validate(model, batches)
    result = ValidationResult(base.loss, base.accuracy, batch_losses=base.batch_losses)
    for key, slot in measured.items():
        with slot.force_alpha(0.0):
            without = validate(model, batches)
        _record_contribution(result, key, slot, base.accuracy - without.accuracy)
    return result


def _record_contribution(result: ValidationResult, key: str, slot: SeedSlot, contribution: float) -> None:
    result.contributions[key] = contribution
    slot.state.metrics.counterfactual_contribution = contribution


@torch.no_grad()
def batch_losses(model: nn.Module, batches: Batches, indices: Sequence[int], train_mode: bool) -> list[float]:
    """Recompute the mean loss of the batches at `indices` (loader order) as the model is now.

    For the governor's culprit search only, on the rare rollback path: it
    re-iterates the loader, which must yield the same batches again (an
    `InMemoryLoader` with the same epoch set does). `train_mode` runs the model
    as training ran it (BatchNorm on batch statistics; running statistics get
    updated, so the caller restores the model afterwards).
    """
    model.train(train_mode)
    wanted, last = set(indices), max(indices)
    losses: list[Tensor] = []
    for i, (inputs, targets) in enumerate(batches):
        if i > last:
            break
        if i in wanted:
            losses.append(loss_and_correct(model(inputs), targets)[0])
    return torch.stack(losses).float().tolist()


def record_validation(slots: Iterable[SeedSlot], accuracy: float) -> None:
    for slot in slots:
        if slot.state is not None:
            slot.state.metrics.record_accuracy(accuracy)
