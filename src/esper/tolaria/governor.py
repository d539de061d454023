"""The governor: catches a diverging epoch, finds the seed at fault, and rolls everything back.

Each healthy epoch ends with a snapshot of the whole model (host, fossilized
and live seeds), both optimisers' state and the live seeds' metrics. Live seeds
are in it so that a rollback is consistent: every seed that survives it is
back at the last good epoch along with the host (with the seeds left out, a
surviving seed kept what it learned in the diverged epoch while the host was
rewound). An epoch goes wrong when a loss is non-finite, or when the train or
the validation loss exceeds `explosion_factor` x the median of the recent
healthy ones, and that median by `explosion_margin` at least (validation is
watched too: a seed can behave in train mode and explode in eval mode). Then
the governor

1. finds the culprit (`find_culprits`). Parameters that were already
   non-finite when the epoch started (`inspect_parameters`, one check per
   epoch) name it at once: a seed's are its fault, the host's are the host's.
   Otherwise it recomputes the first failing batches with each live seed's
   alpha forced to 0, and with all of them at 0 (the host alone); a seed is
   at fault when the loss is healthy without it. A diverged step poisons every
   weight, the host's too, so when the host alone fails as it is now, the
   search is repeated from the last good state; if the host alone fails there
   as well, the fault is the host's or the data's and no seed is culled;
2. restores the snapshot;
3. culls the culprits (marked unhealthy), and only them.

The search only runs on the rare rollback path; the training loop itself
never synchronises per step for it (`_Totals` keeps per-batch losses on the
device).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import torch

from esper.kasmina.host import MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.tolaria.trainer import (
    EpochStats,
    Optimizers,
    SeedKey,
    ValidationResult,
    group_key,
    live_slots,
)

# (split, batch indices) -> those batches' mean losses, recomputed with the model as it is now.
Probe = Callable[[str, list[int]], list[float]]


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    # A loss above `explosion_factor` x the median of the last `history` good losses is an explosion,
    # when it is also `explosion_margin` (loss units: nats for cross-entropy) above that median: a
    # network that has memorised its training set has a loss near 0, and 5x of ~0.004 is noise.
    explosion_factor: float = 5.0
    explosion_margin: float = 0.25
    history: int = 5
    # Failing batches recomputed per configuration in the culprit search.
    probe_batches: int = 2


@dataclass(slots=True)
class Failure:
    """What went wrong in an epoch: why, and which batches of which split ("train"/"val") show it."""

    reason: str
    split: str
    batches: list[int]


@dataclass(slots=True)
class Verdict:
    """The culprit search's answer: the seeds at fault (possibly none) and why, in words."""

    culprits: list[SeedSlot]
    explanation: str


def _finite_groups(groups: list[list[torch.nn.Parameter]]) -> list[bool]:
    """Whether each group of parameters is all finite, with one host synchronisation.

    A norm is non-finite exactly when an element is (or, for huge values, overflows:
    a parameter past ~1e19 counts as diverged too).
    """
    norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))) if g else torch.zeros(()) for g in groups]
    return torch.isfinite(torch.stack(norms)).tolist()


def _names(slots: list[SeedSlot]) -> str:
    return ", ".join(f"{s.state.seed_id} ({s.state.blueprint_id} in {s.slot_id})" for s in slots)


# A param group's key: a seed's by its `SeedKey` (a live seed's or a fossil's), a group of the
# host's own by its position (a user's optimiser may have several; seed groups are only ever
# appended after them, so the host's positions never change).
GroupKey = SeedKey | int
GroupStates = dict[GroupKey, list[dict[str, Any] | None]]


def _group_key(index: int, group: dict[str, Any]) -> GroupKey:
    key = group_key(group)
    return index if key is None else key


def _optimizer_state(optimizer: torch.optim.Optimizer) -> GroupStates:
    """Per param group (see `GroupKey`), each parameter's state."""
    return {
        _group_key(i, group): [_clone(optimizer.state.get(p)) for p in group["params"]]
        for i, group in enumerate(optimizer.param_groups)
    }


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: GroupStates) -> None:
    """Put back the saved state of every group that existed at the snapshot (matched by key)."""
    for i, group in enumerate(optimizer.param_groups):
        states = saved.get(_group_key(i, group))
        if states is None or len(states) != len(group["params"]):
            continue  # a group made after the snapshot has no earlier state to go back to
        for param, state in zip(group["params"], states, strict=True):
            if state is None:
                optimizer.state.pop(param, None)
            else:
                optimizer.state[param] = _clone(state)


def _clone(state: dict[str, Any] | None) -> dict[str, Any] | None:
    # Cloned on save and on load: optimisers update their buffers in place.
    if state is None:
        return None
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class Governor:
    """Watches every epoch's losses; rolls a diverged epoch back and culls only a guilty seed."""

    def __init__(self, model: MorphogeneticModel, optimizers: Optimizers, config: GovernorConfig | None = None) -> None:
        self.model = model
        self.optimizers = optimizers
        self.config = config or GovernorConfig()
        self.good_losses: list[float] = []
        self.good_val_losses: list[float] = []
        # (train loss, train accuracy) of the last healthy epoch: what a rolled-back epoch reports.
        self.last_good_train: tuple[float, float] | None = None
        self.rollbacks = 0
        self.consecutive_rollbacks = 0
        # What `inspect_parameters` found non-finite when the epoch started: "host" and seed ids.
        self.broken_at_start: set[str] = set()
        self._snapshot: dict[str, Any] = {}
        self.snapshot()

    # ------------------------------------------------------------------ health
    def limit(self, split: str) -> float:
        """The loss above which `split` ("train" or "val") has exploded (inf until 2 good epochs)."""
        history = self.good_losses if split == "train" else self.good_val_losses
        if len(history) < 2:
            return math.inf
        median = statistics.median(history[-self.config.history :])
        return max(self.config.explosion_factor * median, median + self.config.explosion_margin)

    def _healthy(self, loss: float, split: str) -> bool:
        return math.isfinite(loss) and loss <= self.limit(split)

    def diagnose(self, train_loss: float, val_loss: float) -> str | None:
        """Why this epoch must be rolled back, or None if it looks healthy."""
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            return f"non-finite loss (train {train_loss:.4g}, val {val_loss:.4g})"
        for split, loss in (("train", train_loss), ("val", val_loss)):
            limit = self.limit(split)
            if loss > limit:
                return f"loss explosion: {split} loss {loss:.4g} > {limit:.4g}"
        return None

    def failure(self, train: EpochStats, val: ValidationResult) -> Failure | None:
        """The epoch's failure and its first failing batches, or None if the epoch is healthy."""
        reason = self.diagnose(train.loss, val.loss)
        if reason is None:
            return None
        # Training first: a diverged training epoch is what makes its validation fail too.
        split, losses = ("train", train.batch_losses) if not self._healthy(train.loss, "train") else ("val", val.batch_losses)
        bad = [i for i, loss in enumerate(losses) if not self._healthy(loss, split)]
        return Failure(reason, split, bad[: self.config.probe_batches])

    def accept(self, train_loss: float, val_loss: float, train_accuracy: float) -> None:
        """Record a healthy epoch (call `snapshot` once the epoch is complete)."""
        for history, loss in ((self.good_losses, train_loss), (self.good_val_losses, val_loss)):
            history.append(loss)
            del history[: -self.config.history]
        self.last_good_train = (train_loss, train_accuracy)
        self.consecutive_rollbacks = 0

    def inspect_parameters(self) -> None:
        """Note which parameters are non-finite as an epoch starts (call before training it).

        Once an epoch has diverged every weight is non-finite, so only this look
        from before can tell a corrupted seed from a corrupted host.
        """
        live = live_slots(self.model)
        live_ids = {id(p) for s in live for p in s.seed.parameters()}
        # The host: its own parameters and its fossilized seeds'.
        host = [p for p in self.model.parameters() if id(p) not in live_ids]
        groups = [host] + [list(s.seed.parameters()) for s in live]
        finite = _finite_groups(groups)
        names = ["host"] + [s.state.seed_id for s in live]
        self.broken_at_start = {name for name, ok in zip(names, finite, strict=True) if not ok}

    # ------------------------------------------------------------------ snapshot and rollback
    def snapshot(self) -> None:
        """Remember the model, both optimisers and the live seeds' metrics as they are now."""
        self._snapshot = {
            # The weights only: a graft's extra state (its slots' lifecycles) is not rolled back.
            "model": {
                key: value.detach().clone()
                for key, value in self.model.state_dict().items()
                if isinstance(value, torch.Tensor)
            },
            "optimizers": [_optimizer_state(o) for o in self.optimizers.torch_optimizers()],
            "metrics": {s.state.seed_id: replace(s.state.metrics) for s in live_slots(self.model)},
        }

    def restore(self) -> None:
        """Put the last snapshot back (a seed made since keeps its weights: it has no earlier ones)."""
        saved = self._snapshot
        self.model.load_state_dict(saved["model"], strict=False)
        for optimizer, states in zip(self.optimizers.torch_optimizers(), saved["optimizers"], strict=True):
            _load_optimizer_state(optimizer, states)
        for slot in live_slots(self.model):
            metrics = saved["metrics"].get(slot.state.seed_id)
            if metrics is not None:
                slot.state.metrics = replace(metrics)

    def find_culprits(self, failure: Failure, probe: Probe) -> Verdict:
        """Which live seeds caused `failure` (see the module docstring). Leaves the model restored
        only if it had to look at the last good state; `rollback` restores in any case."""
        live = live_slots(self.model)
        if "host" in self.broken_at_start:
            return Verdict([], "the host's parameters were non-finite before the epoch: the host")
        if not live:
            return Verdict([], "no live seed: the host or the data")
        broken = [s for s in live if s.state.seed_id in self.broken_at_start]
        if broken:
            return Verdict(broken, f"non-finite parameters in {_names(broken)} before the epoch")
        if not failure.batches:
            return Verdict([], "no single batch failed; no seed could be blamed")

        def fails(*off: SeedSlot) -> bool:
            with ExitStack() as stack:
                for slot in off:
                    stack.enter_context(slot.force_alpha(0.0))
                losses = probe(failure.split, failure.batches)
            return not self._healthy(statistics.fmean(losses), failure.split)

        for weights in ("as diverged", "from the last good state"):
            if weights == "from the last good state":
                self.restore()
            if not fails():
                continue  # does not reproduce with these weights
            if fails(*live):
                if weights == "as diverged":
                    continue  # the host's weights may be poisoned by a seed's step: look earlier
                return Verdict([], "the host alone fails too, from the last good state: the host or the data")
            guilty = [s for s in live if not fails(s)]
            # Seeds that fail only together: each one with the host alone fails.
            guilty = guilty or [s for s in live if fails(*(o for o in live if o is not s))] or live
            return Verdict(guilty, f"the loss is healthy without {_names(guilty)} ({weights})")
        return Verdict([], "the failure does not reproduce from the last good state; no seed at fault")

    def rollback(self, failure: Failure, probe: Probe) -> Verdict:
        """Find the culprits, restore the last good state, cull the culprits; returns the verdict."""
        verdict = self.find_culprits(failure, probe)
        self.restore()
        for slot in verdict.culprits:
            slot.state.is_healthy = False
            slot.cull(f"governor rollback: {failure.reason}")
        self.rollbacks += 1
        self.consecutive_rollbacks += 1
        return verdict

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "good_losses": list(self.good_losses),
            "good_val_losses": list(self.good_val_losses),
            "last_good_train": None if self.last_good_train is None else list(self.last_good_train),
            "rollbacks": self.rollbacks,
            "consecutive_rollbacks": self.consecutive_rollbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and snapshot now."""
        self.good_losses = list(state["good_losses"])
        self.good_val_losses = list(state["good_val_losses"])
        last = state["last_good_train"]
        self.last_good_train = None if last is None else (float(last[0]), float(last[1]))
        self.rollbacks = int(state["rollbacks"])
        self.consecutive_rollbacks = int(state["consecutive_rollbacks"])
        self.snapshot()
