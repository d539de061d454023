"""The engine's phases for a training loop the user writes (what `esper.Grower` drives).

The user's loop trains each epoch with the user's own optimiser; what the engine
adds happens when the epoch is over, in the same phases every Esper run goes through
(`tolaria.engine`): `UserLoopTrainer.train_phase` reports the epoch the user trained
(its mean training loss, when the user gives it), `measure` scores the model with the
user's `evaluate(model) -> float` (higher is better) and measures each blended seed's
counterfactual with its alpha forced to 0 (the naive path: `evaluate` is opaque, so
there are no stages to resume from), then the governor guards the epoch, the
controller decides, and the decisions are applied; `UserOptimizer` keeps the user's
optimiser in step with the seeds.

How the numbers map onto the engine's: the score is the epoch's validation
"accuracy" (what the gates and controllers compare; their default thresholds assume
a score on an accuracy's scale, 0..1), and its validation "loss" is minus the score
(so a score that is minus a loss gives the governor that loss to watch). Without a
training loss from the user, the evaluation stands in for it too.

The governor's culprit search cannot replay the user's batches; it asks `evaluate`
again instead, with seeds switched off one by one, so a seed that makes the
evaluation non-finite (or explode) is found and culled. A score counts as
non-finite when the model's output was, whatever `evaluate` made of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.graft import training_modes_kept
from esper.kasmina.host import SeededModel
from esper.leyline import MEASURED_STAGES, TelemetryEvent
from esper.tolaria.engine import MorphogeneticTrainer
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.trainer import (
    EpochStats,
    ValidationResult,
    contributions_by_force_alpha,
    live_slots,
    note_unisolated_incubators,
)

Evaluate = Callable[[nn.Module], float]


def _note_finite(output: Any, finite: list[Tensor]) -> None:
    """Append whether each floating-point tensor of a model's output is all finite (on its device)."""
    if isinstance(output, Tensor):
        if output.is_floating_point():
            finite.append(
                torch.isfinite(output).all().to(finite[0].device if finite else output.device)
            )
    elif isinstance(output, (tuple, list)):
        for item in output:
            _note_finite(item, finite)
    elif isinstance(output, dict):
        for item in output.values():
            _note_finite(item, finite)


class UserOptimizer:
    """A user's optimiser kept in step with the seeds (the `SeedOptimizers` of a user's loop).

    A new seed's parameters join it as their own param group (tagged with the slot)
    at `seed_lr`; a culled seed's group leaves it with its optimiser state. A
    fossilized seed's group stays, now host: at `fossil_lr`, or by default at the
    learning rate of the optimiser's first group at that moment. The user's own
    groups are never touched. A learning-rate scheduler made before a seed's group
    existed does not schedule it (schedulers fix their groups when made).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        seed_lr: float | None = None,
        fossil_lr: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        for name, lr in (("seed_lr", seed_lr), ("fossil_lr", fossil_lr)):
            if lr is not None and not lr > 0:
                raise ValueError(f"{name} must be > 0, got {lr}")
        self.optimizer = optimizer
        self.seed_lr = seed_lr if seed_lr is not None else float(optimizer.param_groups[0]["lr"])
        self.fossil_lr = fossil_lr

    def _seed_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.optimizer.param_groups if "slot_id" in g]

    def slot_order(self) -> list[str]:
        """The slots whose live seed has a group, in group order."""
        return [g["slot_id"] for g in self._seed_groups() if not g["fossil"]]

    def add_seed(self, slot_id: str, params: list[nn.Parameter]) -> None:
        if slot_id in self.slot_order():
            raise RuntimeError(f"slot '{slot_id}' already has a seed param group")
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if any(id(p) in held for p in params):
            raise ValueError(
                f"the optimizer already holds parameters of the seed in slot '{slot_id}': build it "
                "before planting seeds (the Grower adds each seed's parameters itself)"
            )
        self.optimizer.add_param_group(
            {"params": params, "lr": self.seed_lr, "slot_id": slot_id, "fossil": False}
        )

    def remove_seed(self, slot_id: str) -> None:
        kept = []
        for group in self.optimizer.param_groups:
            if group.get("slot_id") == slot_id and not group["fossil"]:
                for param in group["params"]:
                    self.optimizer.state.pop(param, None)
            else:
                kept.append(group)
        self.optimizer.param_groups[:] = kept

    def move_seed_to_host(self, slot_id: str) -> None:
        group = next(g for g in self._seed_groups() if g["slot_id"] == slot_id and not g["fossil"])
        group["fossil"] = True
        group["lr"] = (
            self.fossil_lr if self.fossil_lr is not None else self.optimizer.param_groups[0]["lr"]
        )

    def torch_optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.optimizer,)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "seed_groups": [[g["slot_id"], g["fossil"]] for g in self._seed_groups()],
        }

    def load_state_dict(
        self, saved: dict[str, Any], seed_params: Callable[[str], list[nn.Parameter]]
    ) -> None:
        """The saved seed groups rebuilt in their saved order, then the optimiser's state loaded.

        The user's optimiser must hold the same groups of its own as when it was saved
        (build it the same way); seed groups it holds now are replaced.
        """
        self.optimizer.param_groups[:] = [
            g for g in self.optimizer.param_groups if "slot_id" not in g
        ]
        for slot_id, fossil in saved["seed_groups"]:
            self.optimizer.add_param_group(
                {
                    "params": seed_params(slot_id),
                    "lr": self.seed_lr,
                    "slot_id": slot_id,
                    "fossil": fossil,
                }
            )
        self.optimizer.load_state_dict(saved["optimizer"])  # brings back each group's lr too


class UserLoopTrainer(MorphogeneticTrainer):
    """A `MorphogeneticTrainer` whose epochs the user's loop trains (see the module docstring).

    Call `report_epoch` once the user's epoch is trained; the `EpochLoop`'s `start()`
    then runs train (the report), measure (`evaluate`) and guard.
    """

    def __init__(
        self,
        model: SeededModel,
        optimizer: UserOptimizer,
        evaluate: Evaluate,
        governor: GovernorConfig | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    ) -> None:
        if not callable(evaluate):
            raise TypeError(
                f"evaluate must be a function of the model, got {type(evaluate).__name__}"
            )
        super().__init__(model, (), (), optimizer, governor, on_telemetry)
        self.evaluate = evaluate
        self._reported: EpochStats | None = None
        self._loss_given = False
        self._sync_optimizers()  # seeds planted before: their parameters join the optimiser now
        self.governor.inspect_parameters()  # as the first epoch starts

    def report_epoch(
        self, train_loss: float | None = None, train_accuracy: float | None = None
    ) -> None:
        """The epoch the user's loop trained: its mean training loss (and accuracy), when known."""
        for name, value in (("train_loss", train_loss), ("train_accuracy", train_accuracy)):
            if value is not None and not isinstance(value, (int, float)):
                raise TypeError(
                    f"{name} must be a number (e.g. loss.item()), got {type(value).__name__}"
                )
        self._loss_given = train_loss is not None
        loss = math.nan if train_loss is None else float(train_loss)
        accuracy = math.nan if train_accuracy is None else float(train_accuracy)
        self._reported = EpochStats(loss, accuracy, steps=0, batch_losses=[loss])

    def score(self) -> float:
        """`evaluate(model)` as a float, without gradients; NaN when the model's output was
        non-finite during it (an accuracy of a model gone NaN is still a number: argmax picks
        something). Every module's train/eval flag is left as it was (an `evaluate` that calls
        `model.eval()` does not end the user's training)."""
        finite: list[Tensor] = []
        watch = self.model.host.register_forward_hook(
            lambda module, args, output: _note_finite(output, finite)
        )
        try:
            with torch.no_grad(), training_modes_kept(self.model):
                value = self.evaluate(self.model)
        finally:
            watch.remove()
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"evaluate(model) must return one number, higher is better (e.g. the validation "
                f"accuracy), got {type(value).__name__}"
            )
        if (
            finite and not torch.stack(finite).all().item()
        ):  # one read-back for the whole evaluation
            return math.nan
        return float(value)

    # ------------------------------------------------------------------ the phases
    def train_phase(self) -> EpochStats:
        """The epoch the user's loop trained, as `report_epoch` gave it."""
        reported, self._reported = self._reported, None
        if reported is None:
            raise RuntimeError("UserLoopTrainer: report_epoch() before each epoch's train phase")
        note_unisolated_incubators(live_slots(self.model))
        return reported

    def measure(self) -> ValidationResult:
        """The score and, for each blended seed, the score without it (alpha forced to 0)."""
        measured = {k: s for k, s in self.slots.items() if s.stage in MEASURED_STAGES}
        score = self.score()
        contributions = contributions_by_force_alpha(measured, self.score, score)
        return ValidationResult(-score, score, contributions, batch_losses=[-score])

    def guard(
        self, train: EpochStats, val: ValidationResult
    ) -> tuple[EpochStats, ValidationResult, str | None]:
        if not self._loss_given:  # the evaluation stands in for the training loss
            train = EpochStats(val.loss, train.accuracy, train.steps, [val.loss])
        return super().guard(train, val)

    def _probe(self, split: str, indices: list[int]) -> list[float]:
        """The culprit search: the user's batches cannot be replayed, so evaluate again."""
        return [-self.score() for _ in indices]

    def end_epoch(self) -> None:
        super().end_epoch()
        self.governor.inspect_parameters()  # as the user's next epoch starts
