"""`esper.Grower`: Esper's growth inside a training loop you write yourself.

    grown = esper.graft(model, ["blocks.*"], example_input=x)
    optimizer = torch.optim.AdamW(grown.parameters(), lr=3e-4)
    grower = esper.Grower(grown, optimizer, evaluate=val_accuracy, epochs=EPOCHS)
    for epoch in range(EPOCHS):
        for x, y in loader:                 # your loop, your loss, your optimiser
            ...; loss.backward(); optimizer.step()
        grower.end_epoch(train_loss=mean_loss)

What you do: build the optimiser over the grafted model's parameters, train each
epoch as you like, and call `end_epoch` after it, with the epoch's mean training
loss if you have it. Nothing is needed after `backward`: the seeds' gradient norms
(relative to the host's, which gate G2 checks) are read in a pre-hook on your
optimiser's `step`, every `grad_stats_every` steps, after any clipping you do
(global clipping scales seed and host alike, so the ratio stands).

What `end_epoch` does, in the engine's own phases (`tolaria.engine`, through
`tolaria.user_loop.UserLoop`): scores the model with `evaluate(model)`
(higher is better; run without gradients, the model's train/eval flags restored
afterwards), measures each blended seed's counterfactual (the score with that
slot's alpha forced to 0), lets the governor roll back a diverged epoch (model,
optimiser and live seeds back to the last good epoch, a guilty seed culled), asks
the controller, applies its decision, steps every seed's lifecycle and keeps your
optimiser in step: a new seed's parameters join it as their own param group at
`seed_lr` (default: your first group's learning rate), a culled seed's group
leaves it, a fossilized seed's group stays, as host, at `fossil_lr` (default: your
first group's learning rate then). Growth has no ceiling: a fossilized seed joins
its slot's stack (`slot.fossils`), the slot is free again for another seed on top
of it, and every fossil keeps its own group in your optimiser.

FLOPs are counted as in every Esper run (`tolaria.user_loop`): your loop's forward
passes in train mode with gradients on are training, those inside `evaluate` are
validation; per epoch and cumulative in each record's `flops`, and in summary.json.
A model whose forward cannot run on meta tensors is grown without them (one warning).

With `run_dir`, the run gets a run folder like `esper train heuristic`'s, kept by the
same recorder (`runtime.recorder.GrowthRecorder`): config.json, events.jsonl,
metrics.jsonl, checkpoints/ every `checkpoint_every` epochs, summary.json once the
planned epochs are done or at `close()`, so
`esper report` and `esper runs` work on it; `resume=True` continues the run the
folder holds (build the same model and optimiser first; `grower.epoch` says where
to go on from).

Misuse is refused, not passed over: an optimiser that holds none of the grafted
model's parameters (`ValueError` at once), an `evaluate` that returns NaN for a
model whose outputs are finite (`ValueError` naming `evaluate`), and a run whose
last epoch has no finite score, which has failed (`TrainingFailed`, summary.json
"failed"): no run is "complete" without a final metric.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import torch
from rich.console import Console
from typing_extensions import TypedDict  # pydantic checks typing's TypedDict only on Python >= 3.12

from esper import __version__
from esper.kasmina.host import SeededModel
from esper.leyline import (
    Action,
    Controller,
    EpochSignals,
    GrowthBudget,
    StageTransition,
    TelemetryEvent,
)
from esper.nissa import TelemetryHub
from esper.nissa.run_folder import RunFolder
from esper.runtime.recorder import GrowthRecorder
from esper.runtime.session import blueprints_for, operators_for
from esper.simic.curriculum import make_chooser
from esper.simic.policy import PolicyController
from esper.tamiyo import HeuristicController
from esper.tolaria import EpochLoop, EpochRecord, EpochResult, TrainingFailed
from esper.tolaria.engine import MorphogeneticTrainer, Outcome
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.trainer import Optimizers, live_slots
from esper.tolaria.user_loop import Evaluate, UserLoop

MODE = "grower"
T = TypeVar("T")
# The horizon the heuristic plans for when the user names no number of epochs: far enough
# that it never holds back a germination for lack of time.
_OPEN_ENDED = 1_000_000


class GrowerCheckpoint(TypedDict):
    """What a Grower's checkpoint holds (checked before resuming from it)."""

    trainer: dict[str, Any]
    controller: dict[str, Any]


class Grower:
    """Grow `grafted` (from `esper.graft`) while your own loop trains it; see the module docstring.

    `controller`: "heuristic" (tamiyo's rules with simic's UCB1 blueprint curriculum,
    as `esper train heuristic` runs by default), the path of a policy.pt from `esper
    train ppo` / `esper train offline` (its slots are mapped onto the grafted ones in
    order, so it needs as many; its blueprints must exist for their topology), or any
    object with `decide(signals) -> list[Action]` (plus `state_dict`/`load_state_dict`
    to be checkpointed). `epochs`: how many epochs your loop will train, which the
    controller plans with (the heuristic plants nothing it has no time to finish); None:
    a policy's own episode length, or for the heuristic no planned end. `blueprints`:
    what the heuristic may plant (default: every blueprint of the slots' topology).
    `governor`, `max_consecutive_rollbacks`: as in `esper train heuristic`; after that
    many rollbacks in a row `end_epoch` raises `TrainingFailed`. `budget`: a
    `GrowthBudget` (params added, inference FLOPs per sample) no germination may
    pass; the heuristic plants only what still fits (checked at the first `end_epoch`,
    once a forward has shown the shapes of a batch). `console`: a rich console for
    live progress and lifecycle lines.
    """

    def __init__(
        self,
        grafted: SeededModel,
        optimizer: torch.optim.Optimizer,
        evaluate: Evaluate,
        controller: str | os.PathLike[str] | Controller = "heuristic",
        *,
        epochs: int | None = None,
        blueprints: Sequence[str] | None = None,
        seed_lr: float | None = None,
        fossil_lr: float | None = None,
        grad_stats_every: int = 4,
        governor: GovernorConfig | None = None,
        max_consecutive_rollbacks: int = 3,
        budget: GrowthBudget | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        checkpoint_every: int = 5,
        console: Console | None = None,
    ) -> None:
        _check_arguments(grafted, optimizer, epochs=epochs, grad_stats_every=grad_stats_every,
                         checkpoint_every=checkpoint_every)  # fmt: skip
        self.model = grafted
        self.controller, self.blueprints, planned = _resolve_controller(controller, grafted, blueprints)
        self.epochs = epochs if epochs is not None else planned
        if budget is not None and budget.limited and not self.blueprints:
            raise ValueError(
                "a growth budget is checked against the blueprints the controller may plant: pass "
                "blueprints=[...] with your own controller"
            )
        self.grad_stats_every = grad_stats_every
        self.checkpoint_every = checkpoint_every
        self.hub = TelemetryHub()
        self.user_loop = UserLoop(evaluate)
        self.trainer = MorphogeneticTrainer(
            grafted,
            None,
            None,
            Optimizers(optimizer, seed_lr=seed_lr, fossil_lr=fossil_lr),
            governor,
            on_telemetry=self.hub,
            budget=budget,
            blueprints=self.blueprints,
            epochs=self.user_loop,
        )
        # The slots report lifecycle events to this run too (and still to whoever they did before).
        self._slot_telemetry = {k: s.on_telemetry for k, s in grafted.seed_slots.items()}
        for slot in grafted.seed_slots.values():
            slot.on_telemetry = self.hub if slot.on_telemetry is None else _both(slot.on_telemetry, self.hub)
        self.loop = EpochLoop(self.trainer, self.epochs or _OPEN_ENDED, self._on_epoch, max_consecutive_rollbacks)
        self.history: list[EpochRecord] = []  # every epoch's record, in order
        self.transitions: list[StageTransition] = []  # every lifecycle move, in order
        self.closed = False
        self._steps = 0
        self._hook = optimizer.register_step_pre_hook(self._before_step)
        folder = None if run_dir is None else RunFolder(run_dir)
        self.recorder = GrowthRecorder(folder, self.hub, MODE, self.task, self.trainer, type(grafted.host).__qualname__,
                                       state=lambda _epochs: self.state_dict(), checkpoint_every=checkpoint_every)  # fmt: skip
        try:
            if folder is not None:
                self._open_run(folder, controller, resume)
            self.recorder.show(console)
            self.recorder.start(self.epochs)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ the user's calls
    @property
    def epoch(self) -> int:
        """Epochs ended so far (after a resume: where your loop goes on from)."""
        return self.trainer.epoch

    @property
    def task(self) -> str:
        return f"{type(self.model.host).__name__} (own loop)"

    def end_epoch(
        self, train_loss: float | None = None, train_accuracy: float | None = None
    ) -> EpochRecord:
        """After each epoch of your loop: measure, guard, decide, apply, step the lifecycle.

        `train_loss` (the epoch's mean training loss) lets the governor catch a diverging
        epoch and the heuristic see when training has settled; without it the evaluation
        stands in. Returns the epoch's record: `val_accuracy` is the score, `contributions`
        each blended seed's counterfactual, `rollback` why the epoch was rolled back.
        """
        if self.closed:
            if self.epochs is not None and self.epoch >= self.epochs:
                raise RuntimeError(
                    f"the {self.epochs} epochs this Grower planned are done; give it more (epochs=...) "
                    "to train longer"
                )
            raise RuntimeError("this Grower is closed; make a new one to go on growing")
        self.user_loop.report_epoch(train_loss, train_accuracy)
        try:
            result = self.loop.start()
        except TrainingFailed as failed:
            self._fail(failed)
        self.loop.finish(self.controller.decide(result.signals))
        self._steps = 0
        if self.epochs is not None and self.epoch >= self.epochs:
            self._finish()
        return result.record

    def close(self) -> None:
        """Finish the run (final checkpoint and summary.json with a run folder); idempotent."""
        if not self.closed:
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif not self.closed:
            self._release()  # an error or Ctrl-C in the user's loop: the checkpoints so far are the run

    def state_dict(self) -> dict[str, Any]:
        """Model, slots, your optimiser (with the seeds' groups), governor and controller."""
        return {"trainer": self.trainer.state_dict(), "controller": _state_of(self.controller)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` into a Grower built the same way (same model, same optimiser)."""
        self.trainer.load_state_dict(state["trainer"])
        load = getattr(self.controller, "load_state_dict", None)
        if load is not None:
            load(state["controller"])

    # ------------------------------------------------------------------ inside
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Read the live seeds' gradient norms (one device sync) and each slot's gradient pressure
        (`tolaria.pressure`, where the heuristic grows) every `grad_stats_every` steps."""
        if self._steps % self.grad_stats_every == 0:
            for slot in live_slots(self.model):
                slot.record_gradient_norms()
            self.trainer.pressure.read()
        self._steps += 1

    def _on_epoch(
        self, result: EpochResult, outcomes: list[Outcome], moves: list[StageTransition]
    ) -> None:
        self.history.append(result.record)
        self.transitions.extend(moves)
        self.recorder.on_epoch(result, outcomes, moves)

    def _open_run(self, folder: RunFolder, controller: object, resume: bool) -> None:
        if resume and folder.config_path.exists():
            folder.saved_config(MODE)  # refuses another kind of run
            self.recorder.open(None, GrowerCheckpoint, self._restore)
            return
        if folder.config_path.exists():
            raise FileExistsError(
                f"{folder.path} already holds a run: pass resume=True to continue it, or another run_dir"
            )
        named = str(controller) if isinstance(controller, (str, os.PathLike)) else type(controller).__name__
        config = {
            "task": self.task,
            "epochs": self.epochs,
            "controller": named,
            "slots": list(self.model.seed_slots),
            "blueprints": self.blueprints,
            "checkpoint_every": self.checkpoint_every,
        }
        new = {"mode": MODE, "config": config, "epochs": self.epochs, "esper_version": __version__}
        self.recorder.open(new, GrowerCheckpoint, self._restore)

    def _restore(self, payload: dict[str, Any]) -> int:
        self.load_state_dict(payload)
        return self.epoch

    def _finish(self) -> None:
        """The run's end: final checkpoint and summary (with a run folder), outputs closed.
        A run without a final metric has failed (`_fail`)."""
        try:
            self.recorder.finish(self.epoch)
        except TrainingFailed as failed:
            self._fail(failed)
        try:
            if self.history:
                self.recorder.summarize({"epochs": self.epoch}, {})
        finally:
            self._release()

    def _fail(self, failed: TrainingFailed) -> NoReturn:
        """The run stopped on `failed`: a failed summary (with a run folder), outputs closed, raised."""
        try:
            error = self.recorder.failed(failed, "growing", {"epochs": self.epoch}, {})
        finally:
            self._release()
        raise error from None

    def _release(self) -> None:
        self.closed = True
        self._hook.remove()
        self.user_loop.close()
        for slot_id, previous in self._slot_telemetry.items():
            self.model.seed_slots[slot_id].on_telemetry = previous
        self.recorder.close()


def _check_arguments(grafted: object, optimizer: object, **counts: int | None) -> None:
    """Refuse a model without seed slots, an optimiser that trains none of it, and counts below 1."""
    if not isinstance(grafted, SeededModel):
        raise TypeError(
            f"Grower grows a model with seed slots, got {type(grafted).__name__}: "
            "graft slots onto it first, grown = esper.graft(model, targets, example_input)"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in grafted.parameters()):
        raise ValueError(
            "the optimizer holds none of the grafted model's parameters, so nothing would be trained: "
            "build it over the grafted model, e.g. torch.optim.AdamW(grown.parameters(), lr=...)"
        )
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# --------------------------------------------------------------------------- controllers


def _resolve_controller(
    controller: str | os.PathLike[str] | Controller,
    model: SeededModel,
    blueprints: Sequence[str] | None,
) -> tuple[Controller, list[str], int | None]:
    """The controller, the blueprints it may plant, and the epochs it plans for (None: any)."""
    if not isinstance(controller, (str, os.PathLike)):
        if not callable(getattr(controller, "decide", None)):
            raise TypeError(
                f"controller must be 'heuristic', the path of a policy.pt, or an object with "
                f"decide(signals), got {type(controller).__name__}"
            )
        return controller, [] if blueprints is None else list(blueprints), None
    topology = model.slot_topology()
    if str(controller) == "heuristic":
        chosen = blueprints_for(topology, blueprints)
        return (
            HeuristicController(make_chooser(topology, chosen), operators=operators_for(topology, chosen)),
            chosen,
            None,
        )
    path = Path(controller)
    if not path.is_file():
        raise FileNotFoundError(
            f"controller '{controller}' is neither 'heuristic' nor a policy file (policy.pt from "
            "`esper train ppo` or `esper train offline`)"
        )
    if blueprints is not None:
        raise ValueError(
            f"{path} plants the blueprints it was trained with; leave blueprints unset"
        )
    policy = PolicyController.load(path)
    ours, theirs = list(model.seed_slots), list(policy.layout.slot_ids)
    if len(ours) != len(theirs):
        raise ValueError(
            f"{path} controls {len(theirs)} slot(s) ({', '.join(theirs)}) and the grafted model has "
            f"{len(ours)} ({', '.join(ours)}): graft as many targets as the policy has slots"
        )
    chosen = list(policy.layout.blueprints)
    try:
        blueprints_for(topology, chosen)
    except ValueError:
        raise ValueError(
            f"{path} plants {', '.join(chosen)}, which are not all {topology} blueprints (the grafted "
            f"slots' topology); use a policy trained on a {topology} task"
        ) from None
    return (
        _RenamedSlots(policy, dict(zip(ours, theirs, strict=True))),
        chosen,
        policy.info.get("episode_length"),
    )


class _RenamedSlots:
    """A policy trained on other slot names, driving the grafted slots in the same order."""

    def __init__(self, policy: PolicyController, names: dict[str, str]) -> None:
        self.policy = policy
        self.to_policy = names
        self.to_model = {theirs: ours for ours, theirs in names.items()}

    def decide(self, signals: EpochSignals) -> list[Action]:
        rename = self.to_policy
        seen = dataclasses.replace(
            signals,
            slots={rename[k]: report for k, report in signals.slots.items()},
            transitions=[dataclasses.replace(t, slot_id=rename[t.slot_id]) for t in signals.transitions],
            fossils={
                rename[k]: [dataclasses.replace(f, slot_id=rename[k]) for f in stack]
                for k, stack in signals.fossils.items()
            },
            affordable=_renamed(signals.affordable, rename),
            pressure=_renamed(signals.pressure, rename),
            costs=_renamed(signals.costs, rename),
        )
        return [
            a if a.slot_id is None else dataclasses.replace(a, slot_id=self.to_model[a.slot_id])
            for a in self.policy.decide(seen)
        ]

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)


def _renamed(per_slot: dict[str, T] | None, rename: dict[str, str]) -> dict[str, T] | None:
    """A per-slot map of the signals under the policy's slot names."""
    return None if per_slot is None else {rename[k]: value for k, value in per_slot.items()}


def _state_of(controller: object) -> dict[str, Any]:
    state_dict = getattr(controller, "state_dict", None)
    return {} if state_dict is None else state_dict()


def _both(
    first: Callable[[TelemetryEvent], None], second: Callable[[TelemetryEvent], None]
) -> Callable[[TelemetryEvent], None]:
    def emit(event: TelemetryEvent) -> None:
        first(event)
        second(event)

    return emit
