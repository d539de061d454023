"""Observations: what the policy sees at the end of each epoch, as one fixed-size vector.

The vector is computed from `EpochSignals` alone (plus the history an `Observer`
keeps of earlier signals), so the policy sees exactly the same features while it
is trained inside `simic.vec_env` and when it runs as a plain `Controller` in
any job. Its layout depends only on the slot ids and the blueprint list, so one
policy fits every run of a task with the same slots.

Layout (`FeatureLayout.names()` spells it out):
- run level: epoch progress, epochs left, train/val loss and accuracy, the val
  accuracy change over the last 1 and 3 epochs, the train and val loss trends
  (relative change over 3 epochs), the gap to the best val accuracy so far,
  epochs since the last improvement, the plateau count, val accuracy gained
  since the episode's first epoch, params added / host params, rolled back.
- capacity, what the FLOP-priced reward (`simic.rewards`) pays for: the training
  loss's progress (its relative drop per epoch, the heuristic's own measure of a
  network short of capacity: `SignalTracker.loss_progress`); the training FLOPs
  spent so far as a fraction of what the starting host alone would spend over the
  episode; the epoch's training FLOPs and the network's inference FLOPs per sample
  over the starting host's (0: nothing added); the fraction of the growth budget's
  params and inference FLOPs left (`EpochSignals.budget_left`; 1 for a side without
  a limit). The FLOP features are 0 in a run that cannot count FLOPs.
- per blueprint, in blueprint order: how many of the episode's seeds of it were
  fossilized and how many culled (by anyone), counted from the lifecycle moves.
  This is the outcome record the heuristic's UCB1 curriculum keeps, kept by the
  observer itself, so a policy sees the same whether or not its run has a
  curriculum (a feature only some runs fill would differ between the runs a policy
  learns from and those it plays in).
- per slot, in slot order: its live seed's stage one-hot (every `SeedStage`),
  alpha, epochs in the current stage, counterfactual contribution (0 until
  measured), a "contribution measured" flag, seed gradient ratio, seed params /
  host params; the slot's stack depth (fossils kept) and fossil params / host
  params; its gradient pressure (`EpochSignals.pressure`, how hard the loss pushes
  on the host layers there: where to grow); the live seed's blueprint one-hot (all
  zero without one); then per blueprint the price of planting it there now, the
  inference FLOPs per sample it would add over the starting host's
  (`EpochSignals.costs`: what a widening by x2 or x1.5 or a stacked block costs; 0
  where it cannot be planted, which the mask forbids anyway).

Every feature is finite: a non-finite value (a loss that overflowed, a ratio of
a diverged seed) becomes 0, so one bad epoch cannot poison the normaliser or the
policy. (A rolled-back epoch's signals carry the last healthy train loss, so
this is the last line of defence, not the usual path.)

Raw features differ in scale by orders of magnitude (losses vs. ratios of 1e-3),
so `RunningNorm` standardises them with running statistics; its state is saved in
checkpoints and in policy.pt, because a policy is meaningless without the
normalisation it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from esper.leyline import FATES, EpochSignals, SeedLedger, SeedStage
from esper.tamiyo import SignalTracker

RUN_FEATURES = (
    "progress",
    "epochs_left",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_accuracy_delta_1",
    "val_accuracy_delta_3",
    "train_loss_trend",
    "val_loss_trend",
    "gap_to_best_val_accuracy",
    "epochs_since_improvement",
    "plateau_count",
    "val_accuracy_gain_since_start",
    "params_added_ratio",
    "rolled_back",
    "train_loss_progress",
    "training_flops_spent",
    "training_flops_added",
    "inference_flops_added",
    "budget_params_left",
    "budget_inference_flops_left",
)
SLOT_SCALARS = (
    "alpha",
    "epochs_in_stage",
    "contribution",
    "contribution_measured",
    "seed_gradient_ratio",
    "params_ratio",
    "stack_depth",
    "fossil_params_ratio",
    "gradient_pressure",
)
STAGES = tuple(SeedStage)


@dataclass(frozen=True, slots=True)
class FeatureLayout:
    """The observation layout for one slot list and blueprint list."""

    slot_ids: tuple[str, ...]
    blueprints: tuple[str, ...]

    @property
    def per_slot(self) -> int:
        return len(STAGES) + len(SLOT_SCALARS) + 2 * len(self.blueprints)

    @property
    def size(self) -> int:
        return len(RUN_FEATURES) + len(self.blueprints) * len(FATES) + len(self.slot_ids) * self.per_slot

    def names(self) -> list[str]:
        # Per blueprint: the episode's seeds of it that reached each fate.
        outcome_names = [f"{b}.{fate}" for b in self.blueprints for fate in FATES]
        slot_names = [f"stage_{s.name}" for s in STAGES] + list(SLOT_SCALARS) + [f"blueprint_{b}" for b in self.blueprints]
        slot_names += [f"cost_{b}" for b in self.blueprints]
        return list(RUN_FEATURES) + outcome_names + [f"{slot}.{name}" for slot in self.slot_ids for name in slot_names]


def layout_difference(ours: list[str], theirs: list[str], other: str) -> str | None:
    """None when two name lists (features, actions) agree; else what differs, `other` naming theirs."""
    if ours == theirs:
        return None
    only_theirs, only_ours = [n for n in theirs if n not in ours], [n for n in ours if n not in theirs]
    if not only_theirs and not only_ours:
        return "the same names in another order"
    return f"only {other} {only_theirs}, only here {only_ours}"


def _trend(values: list[float], span: int) -> float:
    """Relative change over the last `span` epochs (0 when there is not enough history)."""
    if len(values) <= span:
        return 0.0
    before = values[-1 - span]
    return (values[-1] - before) / max(abs(before), 1e-8)


class Observer:
    """Turns one episode's stream of `EpochSignals` into observation vectors.

    It keeps what a single `EpochSignals` does not carry: loss/accuracy history and
    plateau state (a tamiyo `SignalTracker`, the same one the heuristic reads), the
    episode's first val accuracy and FLOPs (the starting host's), how many epochs
    each slot has spent in its current stage, and the outcomes of each blueprint's seeds. Call `observe` once per epoch, in order; `reset` between episodes.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        self.layout = layout
        self.reset()

    def reset(self) -> None:
        self.tracker = SignalTracker()
        self.start_val_accuracy: float | None = None
        # The starting host's FLOPs: training per epoch, inference per sample (None: not counted).
        self.start_flops: tuple[float, float] | None = None
        self.val_loss: list[float] = []  # the tracker keeps train loss only; the trend needs 4
        self.ledger = SeedLedger()  # the episode's seeds and their fates
        # slot id -> [seed id, stage value, epochs seen in that stage]
        self.clocks: dict[str, list[Any]] = {}

    def observe(self, signals: EpochSignals) -> torch.Tensor:
        self.tracker.update(signals)
        self.val_loss = (self.val_loss + [signals.val_loss])[-4:]
        if self.start_val_accuracy is None:
            self.start_val_accuracy = signals.val_accuracy
            if signals.flops is not None:
                self.start_flops = (signals.flops.training, signals.flops.inference_per_sample)
        self.ledger.record_moves(signals.transitions)
        tracker = self.tracker
        val_acc = list(tracker.val_accuracy)
        train_loss = list(tracker.train_loss)
        host = max(signals.host_params, 1)
        epochs_left = signals.total_epochs - signals.epoch - 1
        run = [
            (signals.epoch + 1) / max(signals.total_epochs, 1),
            float(epochs_left),
            signals.train_loss,
            signals.train_accuracy,
            signals.val_loss,
            signals.val_accuracy,
            val_acc[-1] - val_acc[-2] if len(val_acc) > 1 else 0.0,
            val_acc[-1] - val_acc[-4] if len(val_acc) > 3 else 0.0,
            _trend(train_loss, 3),
            _trend(self.val_loss, 3),
            tracker.best_accuracy - signals.val_accuracy,
            float(tracker.epochs_since_improvement),
            float(tracker.plateau_count),
            signals.val_accuracy - self.start_val_accuracy,
            signals.seed_params / host,
            float(signals.rolled_back),
            tracker.loss_progress or 0.0,
            *self._flop_features(signals),
            *self._budget_features(signals),
        ]
        for blueprint in self.layout.blueprints:
            run.extend(float(self.ledger.count(blueprint, fate)) for fate in FATES)
        for slot_id in self.layout.slot_ids:
            run.extend(self._slot_features(slot_id, signals, host))
        features = torch.tensor(run, dtype=torch.float32)
        return torch.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)

    def _flop_features(self, signals: EpochSignals) -> list[float]:
        """Training FLOPs spent (fraction of the host alone's episode), and the epoch's training
        and the network's inference FLOPs beyond the starting host's, relative to it."""
        flops, start = signals.flops, self.start_flops
        if flops is None or start is None or not (start[0] > 0 and start[1] > 0):
            return [0.0, 0.0, 0.0]
        training, inference = start
        return [
            flops.cumulative_training / (training * max(signals.total_epochs, 1)),
            flops.training / training - 1.0,
            flops.inference_per_sample / inference - 1.0,
        ]

    @staticmethod
    def _budget_features(signals: EpochSignals) -> list[float]:
        left = signals.budget_left or {}
        return [left.get("max_params_added", 1.0), left.get("max_inference_flops", 1.0)]

    def _slot_features(self, slot_id: str, signals: EpochSignals, host: int) -> list[float]:
        report = signals.slots.get(slot_id)
        stage = SeedStage.DORMANT if report is None else report.stage
        seed_id = None if report is None else report.seed_id
        clock = self.clocks.get(slot_id)
        if clock is None or clock[0] != seed_id or clock[1] != int(stage):
            clock = self.clocks[slot_id] = [seed_id, int(stage), 0]
        else:
            clock[2] += 1
        stage_onehot = [float(stage == s) for s in STAGES]
        blueprint_onehot = [float(report is not None and report.blueprint_id == b) for b in self.layout.blueprints]
        stack = signals.fossils.get(slot_id, [])
        stack_features = [
            float(len(stack)),
            sum(fossil.params for fossil in stack) / host,
            (signals.pressure or {}).get(slot_id, 0.0),
        ]
        costs = (signals.costs or {}).get(slot_id, {})
        start = self.start_flops[1] if self.start_flops is not None and self.start_flops[1] > 0 else None
        cost_features = [0.0 if start is None else costs.get(b, 0.0) / start for b in self.layout.blueprints]
        if report is None:
            scalars = [0.0, float(clock[2]), 0.0, 0.0, 0.0, 0.0]
        else:
            contribution = report.counterfactual_contribution
            scalars = [
                report.alpha,
                float(clock[2]),
                0.0 if contribution is None else contribution,
                float(contribution is not None),
                report.seed_gradient_norm_ratio,
                report.params / host,
            ]
        return stage_onehot + scalars + stack_features + blueprint_onehot + cost_features

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "start_val_accuracy": self.start_val_accuracy,
            "start_flops": None if self.start_flops is None else list(self.start_flops),
            "val_loss": list(self.val_loss),
            "clocks": {k: list(v) for k, v in self.clocks.items()},
            "ledger": self.ledger.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.start_val_accuracy = state["start_val_accuracy"]
        self.val_loss = list(state["val_loss"])
        self.clocks = {k: list(v) for k, v in state["clocks"].items()}
        start_flops = state["start_flops"]
        self.start_flops = None if start_flops is None else (float(start_flops[0]), float(start_flops[1]))
        self.ledger.load_state_dict(state["ledger"])


class RunningNorm:
    """Standardise observations with a running mean and variance (parallel Welford).

    Updated only while collecting training rollouts; frozen at evaluation, so a
    saved policy sees inputs on the scale it was trained on. Outputs are clipped
    to +-`clip` so one outlier epoch cannot blow up the network's inputs.
    """

    def __init__(self, size: int, clip: float = 5.0, epsilon: float = 1e-8) -> None:
        self.mean = torch.zeros(size, dtype=torch.float64)
        self.var = torch.ones(size, dtype=torch.float64)
        self.count = epsilon
        self.clip = clip
        self.epsilon = epsilon

    def update(self, batch: torch.Tensor) -> None:
        """Fold a (N, size) batch into the running statistics."""
        batch = batch.to(torch.float64)
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        n = batch.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var = m2 / total
        self.count = total

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        normed = (x.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.epsilon)
        return normed.clamp(-self.clip, self.clip).to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count, "clip": self.clip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mean"].shape != self.mean.shape:
            raise ValueError(
                f"normaliser state has {state['mean'].shape[0]} features, this layout has {self.mean.shape[0]}"
            )
        self.mean = state["mean"].clone().to(torch.float64)
        self.var = state["var"].clone().to(torch.float64)
        self.count = float(state["count"])
        self.clip = float(state["clip"])
