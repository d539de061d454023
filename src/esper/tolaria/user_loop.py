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

FLOPs (`tolaria.flops`) are counted as in every run, from what the host's forward
sees: a forward in train mode with gradients on is a training step on its batch's
samples, the forwards inside `evaluate` are the validation (the counterfactual
passes priced by the profile on the same samples); the first forward gives the meter
its shapes (per-sample costs are those of a sample shaped like it). A model whose
forward cannot run on meta tensors goes on without FLOPs (a warning says so once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from esper.kasmina.graft import training_modes_kept
from esper.kasmina.host import SeededModel
from esper.kasmina.slot import SeedSlot
from esper.leyline import MEASURED_STAGES, GrowthBudget, TelemetryEvent
from esper.tolaria.engine import MorphogeneticTrainer
from esper.tolaria.flops import ModelCall
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.trainer import (
    EpochStats,
    SeedKey,
    ValidationResult,
    contributions_by_force_alpha,
    group_key,
    legacy_seed_key,
    live_slots,
    load_tagged_state,
    note_unisolated_incubators,
    remove_groups,
    seed_parameters,
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

    A new seed's parameters join it as their own param group (tagged with its slot and
    seed, `SeedKey`) at `seed_lr`; a culled seed's group leaves it with its optimiser
    state. A fossilized seed's group stays, now host (its slot's stack can hold many,
    each with its own group): at `fossil_lr`, or by default at the learning rate of the
    optimiser's first group at that moment. The user's own groups are never touched. A
    learning-rate scheduler made before a seed's group existed does not schedule it
    (schedulers fix their groups when made).
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
        return [g for g in self.optimizer.param_groups if group_key(g) is not None]

    def seed_order(self) -> list[SeedKey]:
        """The live seeds with a group, in group order."""
        return [group_key(g) for g in self._seed_groups() if not g["fossil"]]

    def fossil_order(self) -> list[SeedKey]:
        """The fossilized seeds with a group (optimised as host), in group order."""
        return [group_key(g) for g in self._seed_groups() if g["fossil"]]

    def add_seed(self, key: SeedKey, params: list[nn.Parameter]) -> None:
        slot_id, seed_id = key
        if key in self.seed_order() or key in self.fossil_order():
            raise RuntimeError(f"seed {seed_id} in slot '{slot_id}' already has a param group")
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if any(id(p) in held for p in params):
            raise ValueError(
                f"the optimizer already holds parameters of the seed in slot '{slot_id}': build it "
                "before planting seeds (the Grower adds each seed's parameters itself)"
            )
        self.optimizer.add_param_group(
            {"params": params, "lr": self.seed_lr, "slot_id": slot_id, "seed_id": seed_id, "fossil": False}
        )

    def remove_seed(self, key: SeedKey) -> None:
        remove_groups(self.optimizer, lambda group: group_key(group) == key and not group["fossil"])

    def move_seed_to_host(self, key: SeedKey) -> None:
        group = next(g for g in self._seed_groups() if group_key(g) == key and not g["fossil"])
        group["fossil"] = True
        group["lr"] = (
            self.fossil_lr if self.fossil_lr is not None else self.optimizer.param_groups[0]["lr"]
        )

    def torch_optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        return (self.optimizer,)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "seed_groups": [[g["slot_id"], g["seed_id"], g["fossil"]] for g in self._seed_groups()],
        }

    def load_state_dict(self, saved: dict[str, Any], slots: Mapping[str, SeedSlot]) -> None:
        """The saved seed groups rebuilt in their saved order, then the optimiser's state loaded.

        The user's optimiser must hold the same groups of its own as when it was saved
        (build it the same way); seed groups it holds now are replaced. Checkpoints from
        before seed stacks saved [slot, fossil] per group (see `legacy_seed_key`).
        """
        groups = [
            (legacy_seed_key(slots, entry[0]), entry[1]) if len(entry) == 2 else ((entry[0], entry[1]), entry[2])
            for entry in saved["seed_groups"]
        ]
        self.optimizer.param_groups[:] = [g for g in self.optimizer.param_groups if group_key(g) is None]
        for (slot_id, seed_id), fossil in groups:
            self.optimizer.add_param_group(
                {
                    "params": seed_parameters(slots, (slot_id, seed_id)),
                    "lr": self.seed_lr,
                    "slot_id": slot_id,
                    "seed_id": seed_id,
                    "fossil": fossil,
                }
            )
        load_tagged_state(self.optimizer, saved["optimizer"])  # brings back each group's lr too


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
        budget: GrowthBudget | None = None,
        blueprints: Sequence[str] = (),
    ) -> None:
        if not callable(evaluate):
            raise TypeError(
                f"evaluate must be a function of the model, got {type(evaluate).__name__}"
            )
        super().__init__(
            model, (), (), optimizer, governor, on_telemetry, budget=budget, blueprints=blueprints
        )
        self.evaluate = evaluate
        self._reported: EpochStats | None = None
        self._loss_given = False
        # Samples the host's forward saw, by what for (see `_count_samples`).
        self._samples = {"trained": 0, "scored": 0}
        self._scoring = False
        self._counting = model.host.register_forward_pre_hook(self._count_samples, with_kwargs=True)
        self._sync_optimizers()  # seeds planted before: their parameters join the optimiser now
        self.governor.inspect_parameters()  # as the first epoch starts

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
        if self.flops.meter is None:
            self.flops.observe((ModelCall(args, kwargs), None))
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
        finite: list[Tensor] = []
        watch = self.model.host.register_forward_hook(
            lambda module, args, output: _note_finite(output, finite)
        )
        self._scoring = True
        try:
            with torch.no_grad(), training_modes_kept(self.model):
                value = self.evaluate(self.model)
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
        if (
            finite and not torch.stack(finite).all().item()
        ):  # one read-back for the whole evaluation
            return math.nan
        if math.isnan(value):  # the model's outputs were finite: the NaN is evaluate's own
            raise ValueError(
                f"evaluate(model) returned {value} while the model's outputs were finite: it must return a "
                "finite score, higher is better (an empty validation set, for one, gives 0/0)"
            )
        return float(value)

    # ------------------------------------------------------------------ the phases
    def train_phase(self) -> EpochStats:
        """The epoch the user's loop trained, as `report_epoch` gave it."""
        reported, self._reported = self._reported, None
        if reported is None:
            raise RuntimeError("UserLoopTrainer: report_epoch() before each epoch's train phase")
        note_unisolated_incubators(live_slots(self.model))
        self.flops.trained(self._take_samples("trained"))
        if self.budget is not None and self.epoch == 0:
            self.budget.check_startup()  # the first moment the meter has the shapes of a batch
        return reported

    def measure(self) -> ValidationResult:
        """The score and, for each blended seed, the score without it (alpha forced to 0).

        The FLOPs of the evaluation are priced on the samples its first pass ran: each
        counterfactual pass runs them again, priced by the profile (`tolaria.flops`)."""
        measured = {k: s for k, s in self.slots.items() if s.stage in MEASURED_STAGES}
        self._take_samples("scored")
        score = self.score()
        self.flops.validated(self._take_samples("scored"))
        contributions = contributions_by_force_alpha(measured, self.score, score)
        self._take_samples("scored")
        return ValidationResult(-score, score, contributions, batch_losses=[-score])

    def guard(
        self, train: EpochStats, val: ValidationResult
    ) -> tuple[EpochStats, ValidationResult, str | None]:
        if not self._loss_given:  # the evaluation stands in for the training loss
            train = EpochStats(val.loss, train.accuracy, train.steps, [val.loss])
        return super().guard(train, val)

    def _probe(self, split: str, indices: list[int]) -> list[float]:
        """The culprit search: the user's batches cannot be replayed, so evaluate again."""
        self._take_samples("scored")
        losses = [-self.score() for _ in indices]
        self.flops.probed(self._take_samples("scored"))
        return losses

    def end_epoch(self) -> None:
        super().end_epoch()
        self.governor.inspect_parameters()  # as the user's next epoch starts
