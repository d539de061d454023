"""The engine's phases for a training loop the user writes (what `esper.Grower` drives).

The user's loop trains each epoch with the user's own optimiser; what the engine
adds happens when the epoch is over, in the same phases every Esper run goes through
(`tolaria.engine`): the trainer's epochs come from a `UserLoop`, whose `train` reports
the epoch the user trained (its mean training loss, when the user gives it), `measure`
scores the model with the
user's `evaluate(model) -> float` (higher is better) and measures each blended seed's
counterfactual with its alpha forced to 0 (the naive path: `evaluate` is opaque, so
there are no stages to resume from), then the governor guards the epoch, the
controller decides, and the decisions are applied; `Optimizers` (the one optimiser
manager, over the user's optimiser) keeps it in step with the seeds.

How the numbers map onto the engine's: the score is the epoch's validation
"accuracy" (what the gates and controllers compare; their default thresholds assume
a score on an accuracy's scale, 0..1), and its validation "loss" is minus the score
(so a score that is minus a loss gives the governor that loss to watch). Without a
training loss from the user, the evaluation stands in for it too.

The governor's culprit search cannot replay the user's batches; it asks `evaluate`
again instead, with seeds switched off one by one, so a seed that makes the
evaluation non-finite (or explode) is found and culled. A score counts as
non-finite when the model's output was, whatever `evaluate` made of it.

FLOPs (`tolaria.flops`) are counted as in every run, from what the host's forward
sees: a forward in train mode with gradients on is a training step on its batch's
samples, the forwards inside `evaluate` are the validation (the counterfactual
passes priced by the profile on the same samples); the first forward gives the meter
its shapes (per-sample costs are those of a sample shaped like it). A model whose
forward cannot run on meta tensors goes on without FLOPs (a warning says so once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.graft import training_modes_kept
from esper.leyline import MEASURED_STAGES
from esper.tolaria.engine import MorphogeneticTrainer
from esper.tolaria.flops import ModelCall
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


class UserLoop:
    """The epochs of a user's own training loop: the `EpochSource` of its trainer (see the module docstring).

    Call `report_epoch` once the user's epoch is trained; the `EpochLoop`'s `start()`
    then runs train (the report), measure (`evaluate`) and guard.
    """

    def __init__(self, evaluate: Evaluate) -> None:
        if not callable(evaluate):
            raise TypeError(
                f"evaluate must be a function of the model, got {type(evaluate).__name__}"
            )
        self.evaluate = evaluate
        self._reported: EpochStats | None = None
        self._loss_given = False
        # Samples the host's forward saw, by what for (see `_count_samples`).
        self._samples = {"trained": 0, "scored": 0}
        self._scoring = False

    def attach(self, trainer: MorphogeneticTrainer) -> None:
        self.trainer = trainer
        self._counting = trainer.model.host.register_forward_pre_hook(self._count_samples, with_kwargs=True)
        trainer.governor.inspect_parameters()  # as the first epoch starts

    def close(self) -> None:
        """Stop counting the host's forward passes (the trainer is done with the model)."""
        self._counting.remove()

    def _count_samples(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The FLOPs account's view of the user's loop: each forward of the host (not the FLOPs
        meter's own, on meta tensors) counts its batch's samples, the leading size of its first
        tensor argument: as scored inside `evaluate`, as trained in train mode with gradients
        on; others (the user's own evaluation) are not counted. The first one gives the meter
        its shapes."""
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)]
        if not tensors or tensors[0].is_meta:
            return
        flops = self.trainer.flops
        if flops.meter is None:
            flops.observe((ModelCall(args, kwargs), None))
        samples = tensors[0].shape[0] if tensors[0].ndim > 0 else 1
        if self._scoring:
            self._samples["scored"] += samples
        elif module.training and torch.is_grad_enabled():
            self._samples["trained"] += samples

    def _take_samples(self, kind: str) -> int:
        samples, self._samples[kind] = self._samples[kind], 0
        return samples

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
        model = self.trainer.model
        finite: list[Tensor] = []
        watch = model.host.register_forward_hook(lambda module, args, output: _note_finite(output, finite))
        self._scoring = True
        try:
            with torch.no_grad(), training_modes_kept(model):
                value = self.evaluate(model)
        finally:
            self._scoring = False
            watch.remove()
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"evaluate(model) must return one number, higher is better (e.g. the validation "
                f"accuracy), got {type(value).__name__}"
            )
        if finite and not torch.stack(finite).all().item():  # one read-back for the whole evaluation
            return math.nan
        if math.isnan(value):  # the model's outputs were finite: the NaN is evaluate's own
            raise ValueError(
                f"evaluate(model) returned {value} while the model's outputs were finite: it must return a "
                "finite score, higher is better (an empty validation set, for one, gives 0/0)"
            )
        return float(value)

    # ------------------------------------------------------------------ the phases
    def train(self) -> EpochStats:
        """The epoch the user's loop trained, as `report_epoch` gave it."""
        reported, self._reported = self._reported, None
        if reported is None:
            raise RuntimeError("UserLoop: report_epoch() before each epoch's train phase")
        trainer = self.trainer
        note_unisolated_incubators(live_slots(trainer.model))
        trainer.flops.trained(self._take_samples("trained"))
        if trainer.budget is not None and trainer.epoch == 0:
            trainer.budget.check_startup()  # the first moment the meter has the shapes of a batch
        return reported

    def measure(self) -> ValidationResult:
        """The score and, for each blended seed, the score without it (alpha forced to 0).

        The FLOPs of the evaluation are priced on the samples its first pass ran: each
        counterfactual pass runs them again, priced by the profile (`tolaria.flops`)."""
        trainer = self.trainer
        measured = {k: s for k, s in trainer.slots.items() if s.stage in MEASURED_STAGES}
        self._take_samples("scored")
        score = self.score()
        trainer.flops.validated(self._take_samples("scored"))
        contributions = contributions_by_force_alpha(measured, self.score, score)
        self._take_samples("scored")
        return ValidationResult(-score, score, contributions, batch_losses=[-score])

    def guarded(self, train: EpochStats, val: ValidationResult) -> EpochStats:
        if self._loss_given:
            return train
        return EpochStats(val.loss, train.accuracy, train.steps, [val.loss])  # the evaluation stands in

    def probe(self, split: str, indices: list[int]) -> list[float]:
        """The culprit search: the user's batches cannot be replayed, so evaluate again."""
        self._take_samples("scored")
        losses = [-self.score() for _ in indices]
        self.trainer.flops.probed(self._take_samples("scored"))
        return losses

    def epoch_ended(self) -> None:
        self.trainer.governor.inspect_parameters()  # as the user's next epoch starts
