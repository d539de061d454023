"""`esper train heuristic`: grow a host under the heuristic controller, with a run folder.

A run that the governor keeps rolling back (`max_consecutive_rollbacks` epochs
in a row: a fault in the host or the data that no rollback cures) stops: its
summary.json says `"status": "failed"` with the reason, and `run_heuristic`
raises `TrainingFailed` (the CLI prints it and exits non-zero). Everything
written up to then stays. So does a run that ends without a final metric (its
last epoch's score not finite). The run folder and its telemetry are kept by
`runtime.recorder.GrowthRecorder`, as for `esper.Grower`.

Resumed (`--resume`), a run keeps its own settings; `epochs` trains a finished
or interrupted run longer (the learning-rate schedule and the heuristic's
planning then stretch over the new length), and a run already complete as
planned is left as it is.

Under torchrun (a distributed `World`) every rank trains its share of each batch
(`runtime.session.build_trainer`); rank 0 alone owns the run folder: it reads the
config and checkpoint on resume and hands them to the others, runs the controller
(its decisions are broadcast), and writes every file. The others write nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from typing_extensions import TypedDict  # pydantic checks typing's TypedDict only on Python >= 3.12

from esper import __version__
from esper.jobs.config import BUILT_IN_CONTROLLERS, HeuristicRunConfig, build_config
from esper.jobs.scaleout import run_fingerprint
from esper.leyline import Controller, StageTransition, TelemetryEvent, TelemetryEventType
from esper.nissa import RichConsoleOutput, TelemetryHub
from esper.nissa.run_folder import RunFolder, read_json, write_json
from esper.runtime import get_task
from esper.runtime.data import TaskData
from esper.runtime.recorder import GrowthRecorder, run_config
from esper.runtime.session import build_trainer, operators_for, resolve_blueprints, spec_for_model
from esper.runtime.static_host import host_variant
from esper.runtime.tasks import TaskSpec
from esper.simic.curriculum import BlueprintCurriculum, make_chooser
from esper.simic.policy import PolicyController
from esper.simic.recording import META_FILE, EpisodeRecorder, RecordedController, episode_recorder
from esper.simic.rewards import RewardConfig
from esper.tamiyo import (
    HeuristicConfig,
    HeuristicController,
    NoGrowthController,
    PlannedGrowth,
    ScheduleController,
    check_plan,
)
from esper.tolaria import EpochLoop, EpochResult, MorphogeneticTrainer, TrainingFailed, run_epochs
from esper.tolaria.distributed import MainRankDecides, World
from esper.tolaria.engine import Outcome
from esper.tolaria.flops_cap import TrainingFlopsCap

CURRICULUM_FILE = "curriculum.json"


class HeuristicCheckpoint(TypedDict):
    """What a heuristic run's checkpoint holds (checked before resuming from it)."""

    trainer: dict[str, Any]
    controller: dict[str, Any]
    recorder: dict[str, Any]


def check_processes(config: HeuristicRunConfig, processes: int) -> None:
    """Refuse more processes than a batch can be shared by (each needs 2 samples of every batch)."""
    batch = get_task(config.task).batch_size
    if processes > batch // 2:
        raise ValueError(
            f"{processes} processes cannot share task {config.task}'s batch of {batch} (every process needs "
            f"at least 2 samples of each batch); use at most {batch // 2} processes"
        )


def model_options(config: HeuristicRunConfig) -> dict[str, Any]:
    """What `build_trainer` takes from the run config besides the task: model, device, precision."""
    return {"model": config.model, "device": config.device, "precision": config.precision}


@dataclass(slots=True)
class PreparedRun:
    """A run's task (with its host variant), data, controller and trainer, built from its config.

    Building it checks everything a config can get wrong, so a caller (this job, `esper
    compare`) finds every mistake before any folder is made.
    """

    spec: TaskSpec
    data: TaskData
    epochs: int
    slots: tuple[str, ...]
    blueprints: list[str]
    controller: Controller
    hub: TelemetryHub
    trainer: MorphogeneticTrainer
    cap: TrainingFlopsCap | None  # the config's max_training_flops, wired into the trainer's loader


def prepare_run(config: HeuristicRunConfig, world: World | None = None, resume: bool = False) -> PreparedRun:
    """Every rank builds the same (a controller too, though only rank 0's decides)."""
    spec = host_variant(get_task(config.task), config.host, config.built_in, config.built_in_widths)
    if config.lr_schedule is not None:
        spec = dataclasses.replace(spec, lr_schedule=config.lr_schedule)
    if config.lr_warmup is not None:
        spec = dataclasses.replace(spec, lr_warmup=config.lr_warmup)
    data = spec.load_data(**config.task_options)
    policy = None if config.controller in BUILT_IN_CONTROLLERS else load_policy(config)
    slots = config.slots if policy is None else policy.info["slot_ids"]
    asked = config.blueprints if policy is None else list(policy.info["blueprints"])
    restarts: tuple[float, ...] = ()
    if config.controller == "schedule":
        plan = schedule_plan(spec, config)
        restarts = tuple(sorted({step.at for step in plan if 0.0 < step.at < 1.0}))  # check_plan names the others
        if asked is None:
            asked = list(dict.fromkeys(step.blueprint for step in plan))
        if slots is None and config.model is None:
            slots = schedule_slots(spec, data, plan)
    hub = TelemetryHub()
    trainer = build_trainer(spec, data, config.seed, slots, on_telemetry=hub, world=world,
                            budget=config.budget, blueprints=asked, lr_restarts=restarts, **model_options(config))  # fmt: skip
    if config.model is not None:
        spec = spec_for_model(spec, trainer.model)
    if trainer.budget is not None and not resume:
        trainer.budget.check_startup()  # a budget no seed fits in is a mistake: said before any folder
    if policy is not None:
        controller, blueprints = policy, list(policy.info["blueprints"])
    else:
        controller, blueprints = make_controller(spec, config, resolve_blueprints(spec, asked))
    epochs = config.epochs or spec.epochs
    if isinstance(controller, ScheduleController):
        check_plan(controller.plan, list(trainer.slots), blueprints, epochs, spec.lifecycle_epochs())
    cap = None if config.max_training_flops is None else capped_training(trainer, config.max_training_flops)
    return PreparedRun(spec, data, epochs, tuple(trainer.slots), blueprints, controller, hub, trainer, cap)


def capped_training(trainer: MorphogeneticTrainer, max_training_flops: float) -> TrainingFlopsCap:
    """The trainer's training loader cut short once the run's training FLOPs reach the cap.

    The FLOPs account sums every rank's samples, while each rank's loader yields its own
    share of a global batch: a rank's batch stands for `world.size` times its samples.
    """
    if trainer.flops.profile() is None:
        raise ValueError("max_training_flops needs a model whose FLOPs can be counted; this one's cannot")
    ranks = trainer.world.size
    cap = TrainingFlopsCap(
        max_training_flops,
        spent=lambda: trainer.flops.total.training,
        per_sample=lambda: trainer.flops.measured().profile().training * ranks,
    )
    trainer.train_loader = cap.wrap(trainer.train_loader)
    return cap


def make_controller(spec: TaskSpec, config: HeuristicRunConfig, blueprints: list[str]) -> tuple[Controller, list[str]]:
    """The heuristic, the schedule, or nothing grown ("none"), with the blueprints it may plant
    (the run's: the config's, or the task's, or the schedule's)."""
    if config.controller == "none":
        return NoGrowthController(), blueprints
    if config.controller == "schedule":
        return ScheduleController(schedule_plan(spec, config)), blueprints
    return make_heuristic(spec, blueprints, config), blueprints


def schedule_plan(spec: TaskSpec, config: HeuristicRunConfig) -> list[PlannedGrowth]:
    """The schedule controller's plan: the config's, else the task's toward its reference."""
    if config.schedule is not None:
        plan = []
        for i, step in enumerate(config.schedule, start=1):
            missing = sorted({"at", "slot", "blueprint"} - set(step))
            if missing:
                raise ValueError(f"schedule step {i} has no {', '.join(missing)}: each step is {{at, slot, blueprint}}")
            plan.append(build_config(PlannedGrowth, step, {}, section=f"schedule step {i}"))
        return plan
    if not spec.schedule:
        raise ValueError(
            f"task '{spec.name}' has no default growth plan: give the schedule in the config "
            '(e.g. "schedule": [{"at": 0.1, "slot": "...", "blueprint": "..."}])'
        )
    return [PlannedGrowth(at, slot, blueprint) for at, slot, blueprint in spec.schedule]


def schedule_slots(spec: TaskSpec, data: TaskData, plan: list[PlannedGrowth]) -> tuple[str, ...]:
    """A schedule run's slots: the task's, and any other injection point of its host that the
    plan grows (mnist5k-tiny's plan widens `block1`, where its heuristic and policies do not
    act), in the host's order. A slot the host lacks is left for `check_plan` to name."""
    planned = {step.slot for step in plan}
    points = spec.build_host(data).injection_points
    return tuple(key for key in points if key in spec.slots or key in planned)


def load_policy(config: HeuristicRunConfig) -> PolicyController:
    """The policy.pt the config names; it brings its slots and blueprints, and a config naming
    others is refused, as is another task unless the config asks for a transfer."""
    policy = PolicyController.load(config.controller)
    info = policy.info
    if info["task"] != config.task and not config.transfer:
        raise ValueError(
            f"{config.controller} was trained on task '{info['task']}', not '{config.task}'; to apply it "
            "to this task unchanged, pass --transfer (config key transfer)"
        )
    for key, own, asked in (("slots", info["slot_ids"], config.slots), ("blueprints", info["blueprints"], config.blueprints)):
        if asked is not None and list(asked) != list(own):
            raise ValueError(f"{config.controller} acts on {key} {list(own)}, not {list(asked)}; leave {key} unset")
    return policy


def heuristic_config(spec: TaskSpec, overrides: dict[str, Any]) -> HeuristicConfig:
    """The heuristic's settings for `spec`: a germination only while the task's seed lifecycle
    still fits in the epochs left, the task's own settings, then `overrides` (plain dicts; a
    nested "tracker" dict sets TrackerConfig fields)."""
    values = {"min_epochs_left": spec.lifecycle_epochs(), **spec.heuristic}
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if nested else value
    return build_config(HeuristicConfig, values, {}, section="heuristic")


def make_heuristic(spec: TaskSpec, blueprints: list[str], config: HeuristicRunConfig) -> HeuristicController:
    """The controller `esper train heuristic` runs with `config` (and `esper evaluate` by default)."""
    chooser = make_chooser(spec.topology, blueprints, config.chooser, config.curriculum)
    return HeuristicController(
        chooser, heuristic_config(spec, config.heuristic), operators_for(spec.topology, blueprints)
    )


def train_host_only(
    spec: TaskSpec, data: Any, config: HeuristicRunConfig, epochs: int, console: Console | None, world: World | None = None
) -> dict[str, Any]:
    """The same host, data order and budget with nothing grown: the honest comparison."""
    hub = TelemetryHub()
    if console is not None:
        hub.add_output(RichConsoleOutput(console))
    trainer = build_trainer(spec, data, config.seed, config.slots, world=world, **model_options(config))
    history: list[float] = []
    spent: list[float | None] = []  # None: the model's FLOPs cannot be counted
    hub.emit(TelemetryEvent(TelemetryEventType.RUN_STARTED, data={"total_epochs": epochs, "task": spec.name, "mode": "host only"}))

    def on_epoch(result: EpochResult, _outcomes, _moves) -> None:
        record = result.record
        history.append(record.val_accuracy)
        spent.append(None if record.flops is None else record.flops.cumulative_training)
        hub.emit(TelemetryEvent(TelemetryEventType.EPOCH_COMPLETED, epoch=record.epoch, data=record.to_dict()))

    run_epochs(EpochLoop(trainer, epochs, on_epoch), NoGrowthController())
    hub.emit(TelemetryEvent(TelemetryEventType.RUN_FINISHED))
    hub.close()
    return {
        "final_val_accuracy": history[-1],
        "best_val_accuracy": max(history),
        "val_accuracy": history,
        "cumulative_training_flops": spent,
        "host_params": trainer.model.host_param_count(),
    }


def run_heuristic(
    config: HeuristicRunConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    world: World | None = None,
    progress: Callable[[int, int], None] | None = None,
    epochs: int | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) a grown run in `run_dir`; returns the summary written to summary.json.

    With a distributed `world` every rank calls this; rank 0 returns the summary, the others None.
    `progress(epochs_done, epochs)` is called after every epoch (for a caller's own display).
    Resuming, `epochs` trains the run to that many epochs (`runtime.recorder.resumed_config`); a run already
    complete as planned is left as it is (its summary is returned).
    """
    world = world or World.single()
    folder = RunFolder(run_dir)
    config, complete = run_config(config, folder, "heuristic", "epoch", resume, epochs, world, console,
                                  lambda saved: build_config(HeuristicRunConfig, saved, {}))  # fmt: skip
    if complete is not None:
        return complete if world.is_main else None
    if resume and epochs is not None:
        world.run_on_main(lambda: record_episode_length(folder, epochs))
    check_processes(config, world.size)
    # Everything that can be wrong with the config or the data is found before the folder is made.
    prepared = prepare_run(config, world, resume)
    world.check_same("run's settings", run_fingerprint(config.to_dict(), prepared.data))
    reward = build_config(RewardConfig, config.reward, {}, section="reward")
    recorder, transitions = open_run(config, prepared, folder, world, reward, resume)
    recorder.show(console)
    train_run(config, prepared, recorder, transitions, progress)
    baseline = host_only_baseline(config, prepared, folder, world, console) if config.baseline else None
    if not world.is_main:
        return None
    head, body = summary_parts(config, prepared, world, baseline)
    return recorder.summarize(head, body)


def record_episode_length(folder: RunFolder, epochs: int) -> None:
    """A run trained to `epochs`: its recorded transitions say the episode's length is that now."""
    path = folder.path / META_FILE
    if path.exists() and (meta := read_json(path)).get("episode_length") != epochs:
        write_json(path, {**meta, "episode_length": epochs})


def open_run(
    config: HeuristicRunConfig, prepared: PreparedRun, folder: RunFolder, world: World, reward: RewardConfig, resume: bool
) -> tuple[GrowthRecorder, EpisodeRecorder | None]:
    """The run's recorder, its folder made or resumed (every rank loads the checkpoint), and on
    rank 0 the transition recorder: every decision is also recorded, for `esper train offline`."""
    trainer, controller = prepared.trainer, prepared.controller
    transitions: EpisodeRecorder | None = None

    def state(_epochs: int) -> dict[str, Any]:
        return {"trainer": trainer.state_dict(), "controller": controller.state_dict(), "recorder": transitions.state_dict()}

    def restore(payload: dict[str, Any]) -> int:
        trainer.load_state_dict(payload["trainer"])
        controller.load_state_dict(payload["controller"])
        return trainer.epoch

    recorder = GrowthRecorder(folder, prepared.hub, "heuristic", config.task, trainer,
                              config.model or str(get_task(config.task).build_host), state=state,
                              checkpoint_every=config.checkpoint_every, world=world, tensorboard=config.tensorboard)  # fmt: skip
    new = {"mode": "heuristic", "config": config.to_dict(), "epochs": prepared.epochs, "processes": world.size,
           "esper_version": __version__}  # fmt: skip
    recorder.open(None if resume else new, HeuristicCheckpoint, restore)
    if world.is_main:
        transitions = episode_recorder(folder.path, config.task, prepared.slots, prepared.blueprints, reward,
                                       mode="heuristic", episode_length=prepared.epochs)  # fmt: skip
        resumed = recorder.resumed
        if resumed is not None:
            resumed.restore("the transition recorder", lambda: transitions.load_state_dict(resumed.payload["recorder"]))
    return recorder, transitions


def train_run(
    config: HeuristicRunConfig,
    prepared: PreparedRun,
    recorder: GrowthRecorder,
    transitions: EpisodeRecorder | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """The epochs, to the end of the run; one that fails leaves a failed summary and raises `TrainingFailed`."""
    trainer, controller, world, epochs = prepared.trainer, prepared.controller, recorder.world, prepared.epochs

    def on_epoch(result: EpochResult, outcomes: list[Outcome], moves: list[StageTransition]) -> None:
        recorder.on_epoch(result, outcomes, moves)
        if progress is not None and world.is_main:
            progress(trainer.epoch, epochs)

    recorder.start(epochs, processes=world.size)
    loop = EpochLoop(trainer, epochs, on_epoch, max_consecutive_rollbacks=config.max_consecutive_rollbacks, cap=prepared.cap)
    try:
        run_epochs(loop, MainRankDecides(None if transitions is None else RecordedController(controller, transitions), world))
        recorder.finish(trainer.epoch)
        if world.is_main and isinstance(controller, HeuristicController) and isinstance(controller.chooser, BlueprintCurriculum):
            # What this run learned about blueprints, for the next run's --curriculum.
            controller.chooser.save(recorder.folder.path / CURRICULUM_FILE)
    except TrainingFailed as failed:
        raise recorder.failed(failed, "the run", *summary_parts(config, prepared, world)) from None
    finally:
        recorder.close()
        if transitions is not None:
            transitions.log.close()


def summary_parts(
    config: HeuristicRunConfig, prepared: PreparedRun, world: World, baseline: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What summary.json says besides the growth: before it, and after it."""
    head = {"seed": config.seed, "epochs": prepared.epochs}
    body = {
        "host_only_val_accuracy": None if baseline is None else baseline["final_val_accuracy"],
        "processes": world.size,
    }
    return head, body


def host_only_baseline(
    config: HeuristicRunConfig, prepared: PreparedRun, folder: RunFolder, world: World, console: Console | None
) -> dict[str, Any]:
    """baseline.json: the host alone on the same seed and data order (trained once, read back on resume)."""
    path = folder.path / "baseline.json"
    baseline = world.run_on_main(lambda: read_json(path) if path.exists() else None)
    if baseline is None or len(baseline["val_accuracy"]) != prepared.epochs:  # none yet, or the run was extended
        world.at("the host-only baseline")
        baseline = train_host_only(prepared.spec, prepared.data, config, prepared.epochs, console if world.is_main else None, world)
        if world.is_main:
            write_json(path, baseline)
    return baseline
