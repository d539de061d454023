"""The epoch engine: the phases of one epoch, and the one loop that runs them.

One `MorphogeneticTrainer` drives one host. An epoch is a sequence of named
phases, each a method, so that other drivers can reuse them one by one:

    train           `train_phase`:  one pass of host and live seeds over the training batches
    measure         `measure`:      validation, with each blended seed's counterfactual
    guard           `guard`:        the governor: accept the epoch, or find the culprit,
                                    roll back and measure again
    (signals)       `signals`:      what a controller sees, with the lifecycle moves since last time
    decide          the controller's `decide(signals)` (not the trainer's business)
    apply           `apply`:        carry out the decisions (germinate, fossilize, cull)
    step lifecycle  `end_epoch`:    every slot's lifecycle clock, optimiser groups, snapshot

`EpochLoop` is the only loop over epochs: the heuristic job and its host-only
baseline (through `run_epochs`), `esper evaluate` and the PPO environments
(`simic.vec_env`, one `step` per environment step) all run it, and so does
`esper.Grower` for users' own training loops: its trainer's epochs come from
`tolaria.user_loop.UserLoop` (an `EpochSource`), whose train phase reports the
epoch the user's loop already trained and whose measure calls the user's
`evaluate(model)` (each slot's counterfactual with `force_alpha(0.0)`), with
the user's optimiser kept in step; it runs `start()` and then `finish(actions)`,
because the next epoch is the user's to train.

Under torchrun (a trainer given a distributed `World`) every rank runs every
phase on its share of each batch, with the numbers summed over the ranks, so
the guard and the lifecycle decide the same everywhere; rank 0's controller
decides (`tolaria.distributed.MainRankDecides`), its decision is broadcast to
every rank before `step(actions)` applies it, and a new seed is made identical
on every rank from rank 0's.

Every trainer keeps a FLOPs account (`tolaria.flop_account.FlopAccount`): the train and
measure phases (and the governor's probes) report the samples they ran, priced per
architecture; each epoch's record carries its `flops` (the global run's, on several
ranks). With a growth budget (`tolaria.budget`) "apply" refuses a germination past it,
and the signals say what each slot can still afford.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from esper.kasmina.host import MorphogeneticModel
from esper.kasmina.width import carry_optimizer_state
from esper.leyline import (
    ACTIVE_STAGES,
    Action,
    ActionKind,
    Controller,
    EpochSignals,
    FlopsReport,
    GrowthBudget,
    SeedStage,
    StageTransition,
    TelemetryEvent,
    TelemetryEventType,
)
from esper.tolaria.budget import BudgetGuard
from esper.tolaria.distributed import World
from esper.tolaria.flop_account import CountedBatches, FlopAccount
from esper.tolaria.flops_cap import TrainingFlopsCap
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.precision import FP32, Precision
from esper.tolaria.pressure import PressureMeter
from esper.tolaria.trainer import (
    Batches,
    EpochStats,
    OptimConfig,
    Optimizers,
    ValidationResult,
    batch_losses,
    record_validation,
    train_epoch,
    validate_with_counterfactuals,
)

Outcome = tuple[Action, bool, str]  # an applied action, whether it was done, and what happened


@dataclass(slots=True)
class EpochRecord:
    """One epoch's numbers. After a rollback the train loss and accuracy are the last healthy
    epoch's (the diverged ones are in `rollback`'s text), so the record is always finite."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_params: int
    seed_params: int
    contributions: dict[str, float] = field(default_factory=dict)
    rollback: str | None = None
    seconds: float = 0.0
    flops: FlopsReport | None = None  # None: the run cannot count its FLOPs (tolaria.flops)
    # Per slot, the relative gradient norm of its host layers over the epoch (`tolaria.pressure`).
    pressure: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_epoch(loader: Iterable, epoch: int) -> None:
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


class EpochSource(Protocol):
    """Where a trainer's epochs come from: what trains one, what measures it, and what the
    governor's culprit search runs again. `LoaderEpochs` passes over a task's batches;
    `tolaria.user_loop.UserLoop` reports the epochs a user's own loop trained."""

    def attach(self, trainer: MorphogeneticTrainer) -> None:
        """Called once by the trainer this source feeds, when it is made."""
        ...

    def train(self) -> EpochStats: ...

    def measure(self) -> ValidationResult: ...

    def probe(self, split: str, indices: list[int]) -> list[float]: ...

    def guarded(self, train: EpochStats, val: ValidationResult) -> EpochStats:
        """The train numbers the governor judges (the source may stand in for what it lacks)."""
        ...

    def epoch_ended(self) -> None: ...


class LoaderEpochs:
    """Esper's own epochs: a pass over the training batches, validation over the validation batches."""

    def __init__(self, train_loader: Batches, val_loader: Batches) -> None:
        self.train_loader = train_loader
        self.val_loader = val_loader

    def attach(self, trainer: MorphogeneticTrainer) -> None:
        self.trainer = trainer

    def train(self) -> EpochStats:
        trainer = self.trainer
        trainer.governor.inspect_parameters()
        _set_epoch(self.train_loader, trainer.epoch)
        batches = CountedBatches(self.train_loader, on_first=trainer.flops.observe)
        stats = train_epoch(
            trainer.model, batches, trainer.optimizers, trainer.precision, trainer.scaler, trainer.world, trainer.pressure
        )
        trainer.flops.trained(batches.samples)
        return stats

    def measure(self) -> ValidationResult:
        trainer = self.trainer
        batches = CountedBatches(self.val_loader)
        result = validate_with_counterfactuals(trainer.model, batches, precision=trainer.precision, world=trainer.world)
        trainer.flops.validated(batches.samples)
        return result

    def probe(self, split: str, indices: list[int]) -> list[float]:
        """Recompute some of this epoch's batches as the model is now."""
        trainer = self.trainer
        loader = self.train_loader if split == "train" else self.val_loader
        batches = CountedBatches(loader, only=indices)
        losses = batch_losses(trainer.model, batches, indices, split == "train", trainer.precision, trainer.world)
        trainer.flops.probed(batches.samples)
        return losses

    def guarded(self, train: EpochStats, val: ValidationResult) -> EpochStats:
        return train

    def epoch_ended(self) -> None:
        pass


class MorphogeneticTrainer:
    """One host's epochs, phase by phase (see the module docstring).

    Its epochs come from the training and validation loaders (`LoaderEpochs`), or
    from another `EpochSource` given as `epochs` (a user's loop: `tolaria.user_loop`).
    `optim` is an `OptimConfig` (the trainer makes its host and seed optimisers)
    or `Optimizers` already made (e.g. over a user's own optimiser), kept in step with the slots. `precision` (`tolaria.precision`) sets autocast and, for
    fp16-mixed, the loss scaler, whose state is checkpointed with the trainer's.
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        train_loader: Batches | None,
        val_loader: Batches | None,
        optim: OptimConfig | Optimizers,
        governor: GovernorConfig | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
        precision: Precision = FP32,
        world: World | None = None,
        example_batch: tuple[Any, torch.Tensor | None] | None = None,
        budget: GrowthBudget | None = None,
        blueprints: Sequence[str] = (),
        epochs: EpochSource | None = None,
    ) -> None:
        """`example_batch`, one (inputs, targets) batch of the task, gives the FLOPs meter its
        shapes (`tolaria.flop_account.FlopAccount`); without it they are taken from the first
        training batch. With a limited `budget`, a germination past it is refused, and the
        signals say which of `blueprints` (the run's candidates) each slot can still afford."""
        self.model = model
        # The ranks this host is trained on together (the loaders give this rank's shares).
        self.world = world or World.single()
        self.world.broadcast_module(model)  # every replica starts as rank 0's
        if (epochs is None) == (train_loader is None or val_loader is None):
            raise ValueError("give a trainer either its train and val loaders or another source of its epochs")
        self.epochs: EpochSource = epochs or LoaderEpochs(train_loader, val_loader)
        self.optimizers = Optimizers.from_config(model, optim) if isinstance(optim, OptimConfig) else optim
        self.precision = precision
        self.scaler = precision.grad_scaler()
        self.governor = Governor(model, self.optimizers, governor)
        self.flops = FlopAccount(model, example_batch, self.world)
        self.budget = None if budget is None or not budget.limited else BudgetGuard(model, self.flops, budget, blueprints)
        self.blueprints = tuple(blueprints)
        self.pressure = PressureMeter(model)
        self.on_telemetry = on_telemetry
        self.epoch = 0
        self.last_record: EpochRecord | None = None
        self._sync_optimizers()  # seeds planted before: their parameters join the optimisers now
        self.epochs.attach(self)

    @property
    def slots(self):
        return self.model.seed_slots

    @property
    def train_loader(self) -> Batches:
        return self.epochs.train_loader

    @train_loader.setter
    def train_loader(self, loader: Batches) -> None:
        self.epochs.train_loader = loader

    @property
    def val_loader(self) -> Batches:
        return self.epochs.val_loader

    def schedule(self, progress: float, epoch_share: float = 0.0) -> None:
        """Learning rates for a run `progress` (0..1) of the way through its planned training,
        an epoch adding `epoch_share` (`Optimizers.set_progress`: a warmup ramps batch by batch;
        a training loader without a length, or a user's loop, counts as one batch)."""
        steps = max(1, operator.length_hint(getattr(self.epochs, "train_loader", None), 1))
        self.optimizers.set_progress(progress, epoch_share / steps)

    # ------------------------------------------------------------------ the phases
    def train_phase(self) -> EpochStats:
        """Phase "train": one pass over this epoch's training batches (or the epoch a user trained)."""
        return self.epochs.train()

    def measure(self) -> ValidationResult:
        """Phase "measure": validation loss and accuracy, and the per-slot counterfactuals."""
        return self.epochs.measure()

    def guard(self, train: EpochStats, val: ValidationResult) -> tuple[EpochStats, ValidationResult, str | None]:
        """Phase "guard": accept a healthy epoch; else find the culprit, roll back, measure again.

        Returns the epoch's (train, val, rollback reason). After a rollback the
        train numbers are the last healthy epoch's (or, before any, the restored
        model's validation numbers): the diverged ones are no features.
        """
        governor = self.governor
        train = self.epochs.guarded(train, val)
        failure = governor.failure(train, val)
        if failure is None:
            governor.accept(train.loss, val.loss, train.accuracy)
            return train, val, None
        verdict = governor.rollback(failure, self.epochs.probe)
        culled = verdict.culprits
        reason = f"{failure.reason}; {verdict.explanation}"
        self._emit(
            TelemetryEventType.GOVERNOR_ROLLBACK,
            reason,
            culled=[s.state.seed_id for s in culled],
            slots=[s.slot_id for s in culled],
        )
        self._sync_optimizers()
        val = self.measure()
        loss, accuracy = governor.last_good_train or (val.loss, val.accuracy)
        return EpochStats(loss, accuracy, train.steps), val, reason

    def run_epoch(self) -> EpochRecord:
        """Phases train, measure and guard of the current epoch."""
        start = time.perf_counter()
        train, val, rollback = self.guard(self.train_phase(), self.measure())
        record_validation(self.slots.values(), val.accuracy)
        record = EpochRecord(
            epoch=self.epoch,
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            host_params=self.model.host_param_count(),
            seed_params=self.model.seed_param_count(),
            contributions=val.contributions,
            rollback=rollback,
            seconds=time.perf_counter() - start,
            flops=self.flops.close_epoch(),
            pressure=self.pressure.close_epoch(),
        )
        self.last_record = record
        return record

    def signals(self, record: EpochRecord, total_epochs: int) -> EpochSignals:
        """What a controller sees after `record`'s epoch; hands out the moves since the last call."""
        affordable = self.plantable()
        return EpochSignals(
            epoch=record.epoch,
            total_epochs=total_epochs,
            train_loss=record.train_loss,
            train_accuracy=record.train_accuracy,
            val_loss=record.val_loss,
            val_accuracy=record.val_accuracy,
            host_params=record.host_params,
            seed_params=record.seed_params,
            slots={slot_id: slot.report() for slot_id, slot in self.slots.items()},
            rolled_back=record.rollback is not None,
            transitions=self.drain_transitions(),
            fossils={slot_id: [*slot.widenings, *slot.fossil_reports] for slot_id, slot in self.slots.items()},
            flops=record.flops,
            affordable=affordable,
            budget_left=None if self.budget is None else self.budget.left(),
            pressure=record.pressure or None,
            costs=self._costs(affordable),
        )

    def plantable(self) -> dict[str, list[str]] | None:
        """Per slot, the run's blueprints a germination there may plant now: those the slot can
        take (`SeedSlot.plant_refusal`: a width seed needs a layer to widen, a stack a block to
        copy) within the growth budget. None for a trainer told no blueprints and no budget."""
        if not self.blueprints:
            return None if self.budget is None else self.budget.affordable()
        grown = None if self.budget is None else self.budget.grown()
        host = self.model.host
        return {
            slot_id: [
                b
                for b in self.blueprints
                if slot.plant_refusal(b, host) is None
                and (self.budget is None or self.budget.refusal(slot_id, b, grown) is None)
            ]
            for slot_id, slot in self.slots.items()
        }

    def _costs(self, plantable: dict[str, list[str]] | None) -> dict[str, dict[str, float]] | None:
        """Per slot, the inference FLOPs per sample each plantable blueprint would add there (the
        FLOPs meter's `seed_cost`); None when the run cannot count FLOPs or knows no blueprints."""
        if plantable is None or not self.flops.counting:
            return None
        try:
            meter = self.flops.measured()
        except RuntimeError:
            return None
        return {slot_id: {b: meter.seed_cost(slot_id, b).inference for b in names} for slot_id, names in plantable.items()}

    def apply(self, actions: Iterable[Action]) -> list[Outcome]:
        """Phase "apply": carry out a controller's actions; returns (action, done, message) for each."""
        outcomes = []
        for action in actions:
            if action.kind == ActionKind.WAIT:
                continue
            slot = self.slots[action.slot_id]
            match action.kind:
                case ActionKind.GERMINATE:
                    refused = None if self.budget is None else self.budget.refusal(action.slot_id, action.blueprint_id)
                    if refused is not None:
                        raise ValueError(f"germination refused by the run's growth budget: {refused}")
                    slot.germinate(action.blueprint_id, host_module=self.model.host)
                    self.world.broadcast_module(slot.seed)  # the same new seed on every rank
                    done, message = True, f"germinated {action.blueprint_id}"
                case ActionKind.FOSSILIZE:
                    result = slot.advance_stage(SeedStage.FOSSILIZED)
                    done, message = result.passed, result.message
                case ActionKind.CULL:
                    done = slot.cull(action.reason or "controller decision")
                    message = "culled" if done else "nothing to cull"
            outcomes.append((action, done, message))
            self._emit(
                TelemetryEventType.CONTROLLER_DECISION,
                f"{action.kind.name} {action.slot_id}: {message}",
                slot_id=action.slot_id,
                action=action.kind.name,
                done=done,
                reason=action.reason,
            )
        self._sync_optimizers()
        return outcomes

    def end_epoch(self) -> None:
        """Phase "step lifecycle": every slot's clock, optimiser groups, the governor's snapshot."""
        for slot in self.slots.values():
            slot.step_epoch()
        self._sync_optimizers()
        self.governor.snapshot()
        self.epoch += 1
        self.epochs.epoch_ended()

    # ------------------------------------------------------------------ lifecycle moves
    def drain_transitions(self) -> list[StageTransition]:
        """Every slot's moves since the last drain (slot order, then time order)."""
        return [t for slot in self.slots.values() for t in slot.drain_transitions()]

    def pending_transitions(self) -> list[StageTransition]:
        """The moves the next `signals` will hand out, without handing them out."""
        return [t for slot in self.slots.values() for t in slot.transitions]

    def _sync_optimizers(self) -> None:
        """Keep the optimisers' groups in line with the slots: a group per live seed in the seed
        optimiser; a fossilized seed's group moved to the host optimiser; a culled one's dropped.
        A merged width seed's layers replace their old parameters, optimiser state carried."""
        optimizers = self.optimizers
        merges = [merge for slot in self.slots.values() for merge in slot.drain_merges()]
        for merge in merges:
            carry_optimizer_state(optimizers.torch_optimizers(), merge)
        if merges:  # the live seeds' gradient monitors must read the new parameters
            for slot in self.slots.values():
                if slot.seed is not None:
                    slot.isolation_monitor.register(self.model.host, slot.seed)
        live = {
            (slot_id, slot.state.seed_id): slot
            for slot_id, slot in self.slots.items()
            if slot.stage in ACTIVE_STAGES and slot.seed is not None
        }
        fossils = {(slot_id, r.seed_id) for slot_id, slot in self.slots.items() for r in slot.fossil_reports}
        for key in optimizers.seed_order():
            if key in fossils:
                optimizers.move_seed_to_host(key)
            elif key not in live:
                optimizers.remove_seed(key)
        known = set(optimizers.seed_order())
        for key, slot in live.items():
            if key not in known:
                optimizers.add_seed(key, list(slot.seed.parameters()))

    def _emit(self, event_type: TelemetryEventType, message: str, slot_id: str | None = None, **data: Any) -> None:
        if self.on_telemetry is not None:
            self.on_telemetry(
                TelemetryEvent(event_type=event_type, epoch=self.epoch, slot_id=slot_id, message=message, data=data)
            )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "slots": {slot_id: slot.lifecycle_state() for slot_id, slot in self.slots.items()},
            "optimizers": self.optimizers.state_dict(),
            "governor": self.governor.state_dict(),
            "flops": self.flops.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The slots first: they rebuild their stacks and live seeds for the weights to load into.
        for slot_id, slot in self.slots.items():
            slot.load_lifecycle_state(state["slots"][slot_id], host_module=self.model.host)
        # Merged widths made the host's layers wide again: the optimisers, built over the narrow
        # ones, take the wide ones in their place before the saved state lines up with them.
        for merge in (merge for slot in self.slots.values() for merge in slot.drain_merges()):
            carry_optimizer_state(self.optimizers.torch_optimizers(), merge)
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"], self.slots)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.governor.load_state_dict(state["governor"])
        self.flops.load_state_dict(state["flops"])
        torch.set_rng_state(state["rng"])
        self.epoch = state["epoch"]


# --------------------------------------------------------------------------- the loop


@dataclass(slots=True)
class EpochResult:
    """One epoch, as the loop hands it out: its record and what the controller is shown."""

    record: EpochRecord
    signals: EpochSignals


class TrainingFailed(RuntimeError):
    """The governor rolled back too many epochs in a row: the fault does not go away."""

    def __init__(self, reason: str, result: EpochResult) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


# Called once an epoch is over (after its lifecycle step): the epoch, the outcomes of the
# actions taken on it, and every lifecycle move that happened in it.
EpochHook = Callable[[EpochResult, list[Outcome], list[StageTransition]], None]


class EpochLoop:
    """The one epoch loop: `start` runs the current epoch; `step(actions)` finishes it and runs the next.

    `start()` runs train, measure and guard and returns the epoch's result;
    the caller decides on `result.signals`; `step(actions)` applies them, steps
    the lifecycle, calls `on_epoch`, and returns the next epoch's result (None
    once `total_epochs` are done). `run_epochs` is that with a `Controller`; an
    environment calls `start` and `step` itself, one per environment step.

    With `max_consecutive_rollbacks`, an epoch that makes that many rollbacks in
    a row raises `TrainingFailed` (after `on_epoch` saw it, with no outcomes):
    a fault that survives every rollback is the host's or the data's. With `cap`
    (`tolaria.flops_cap`), the run also ends after the first epoch at whose end
    its training FLOPs reached the cap. As each epoch starts, the trainer's
    learning rates follow its schedule (`OptimConfig.lr_schedule`) at the run's
    progress: the epochs done of `total_epochs`, or the cap's share spent if further.
    """

    def __init__(
        self,
        trainer: MorphogeneticTrainer,
        total_epochs: int,
        on_epoch: EpochHook | None = None,
        max_consecutive_rollbacks: int | None = None,
        cap: TrainingFlopsCap | None = None,
    ) -> None:
        if max_consecutive_rollbacks is not None and max_consecutive_rollbacks < 1:
            raise ValueError(f"max_consecutive_rollbacks must be >= 1, got {max_consecutive_rollbacks}")
        self.trainer = trainer
        self.total_epochs = total_epochs
        self.on_epoch = on_epoch
        self.max_consecutive_rollbacks = max_consecutive_rollbacks
        self.cap = cap
        self.current: EpochResult | None = None
        self._started_at: float | None = None  # the progress as the last epoch started

    @property
    def done(self) -> bool:
        return self.trainer.epoch >= self.total_epochs or (self.cap is not None and self.cap.reached())

    @property
    def progress(self) -> float:
        """How far through its planned training the run is as the current epoch starts."""
        progress = self.trainer.epoch / self.total_epochs
        return progress if self.cap is None else max(progress, self.cap.progress())

    @property
    def epoch_share(self) -> float:
        """The progress an epoch adds: one of `total_epochs`, or under a cap what the last
        epoch added if more (the first epoch of a capped run counts as one of `total_epochs`)."""
        share = 1 / self.total_epochs
        if self.cap is not None and self._started_at is not None:
            share = max(share, self.progress - self._started_at)
        return share

    def start(self) -> EpochResult:
        """Train, measure and guard the current epoch."""
        trainer = self.trainer
        trainer.schedule(self.progress, self.epoch_share)
        self._started_at = self.progress
        record = trainer.run_epoch()
        result = self.current = EpochResult(record, trainer.signals(record, self.total_epochs))
        limit = self.max_consecutive_rollbacks
        if limit is not None and trainer.governor.consecutive_rollbacks >= limit:
            if self.on_epoch is not None:
                self.on_epoch(result, [], self._epoch_transitions(result))
            raise TrainingFailed(f"{limit} consecutive rollbacks, the last: {record.rollback}", result)
        return result

    def step(self, actions: Iterable[Action]) -> EpochResult | None:
        """Apply the decision on the current epoch, step the lifecycle, run the next epoch."""
        self.finish(actions)
        return None if self.done else self.start()

    def finish(self, actions: Iterable[Action]) -> None:
        """Apply the decision on the current epoch and step the lifecycle; the next epoch is
        the caller's to run (`esper.Grower`: the user's loop trains it)."""
        if self.current is None:
            raise RuntimeError("EpochLoop.finish() before start()")
        outcomes = self.trainer.apply(actions)
        self.trainer.end_epoch()
        if self.on_epoch is not None:
            self.on_epoch(self.current, outcomes, self._epoch_transitions(self.current))
        self.current = None

    def _epoch_transitions(self, result: EpochResult) -> list[StageTransition]:
        """The epoch's own moves: its rollback culls (in its signals) and those since its decision."""
        epoch = result.record.epoch
        return [t for t in result.signals.transitions if t.epoch == epoch] + self.trainer.pending_transitions()


def run_epochs(loop: EpochLoop, controller: Controller) -> None:
    """Run `loop` to its end with `controller` deciding on every epoch's signals."""
    result = None if loop.done else loop.start()
    while result is not None:
        result = loop.step(controller.decide(result.signals))
