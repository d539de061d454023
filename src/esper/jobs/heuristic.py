"""`esper train heuristic`: grow a host under the heuristic controller, with a run folder.

A run that the governor keeps rolling back (`max_consecutive_rollbacks` epochs
in a row: a fault in the host or the data that no rollback cures) stops: its
summary.json says `"status": "failed"` with the reason, and `run_heuristic`
raises `TrainingFailed` (the CLI prints it and exits non-zero). Everything
written up to then stays.

Under torchrun (a distributed `World`) every rank trains its share of each batch
(`runtime.session.build_trainer`); rank 0 alone owns the run folder: it reads the
config and checkpoint on resume and hands them to the others, runs the controller
(its decisions are broadcast), and writes every file. The others write nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired

from rich.console import Console
from typing_extensions import TypedDict  # pydantic checks typing's TypedDict only on Python >= 3.12

from esper import __version__
from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.run_folder import FINAL_CHECKPOINT, RunFolder, read_json, write_json
from esper.jobs.scaleout import run_fingerprint
from esper.kasmina.blueprints import BlueprintRegistry
from esper.leyline import Controller, SeedStage, StageTransition, TelemetryEvent, TelemetryEventType
from esper.nissa import (
    BlueprintAnalytics,
    JsonlEventOutput,
    JsonlWriter,
    RichConsoleOutput,
    TelemetryHub,
    read_jsonl,
)
from esper.runtime import get_task
from esper.runtime.data import TaskData
from esper.runtime.session import build_trainer, resolve_blueprints, spec_for_model
from esper.runtime.static_host import host_variant
from esper.runtime.tasks import TaskSpec
from esper.simic.curriculum import BlueprintCurriculum
from esper.simic.policy import PolicyController
from esper.simic.recording import RecordedController, episode_recorder
from esper.simic.rewards import RewardConfig
from esper.tamiyo import (
    BlueprintChooser,
    BlueprintRotation,
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
BUILT_IN_CONTROLLERS = ("heuristic", "schedule", "none")  # any other `controller` is a policy.pt
# The seed outcomes a summary counts, by the stage a seed moved to.
_COUNTED_MOVES = {SeedStage.GERMINATED.name: "germinated", SeedStage.FOSSILIZED.name: "fossilized", SeedStage.CULLED.name: "culled"}


class HeuristicCheckpoint(TypedDict):
    """What a heuristic run's checkpoint holds (checked before resuming from it)."""

    trainer: dict[str, Any]
    controller: dict[str, Any]
    recorder: NotRequired[dict[str, Any]]  # checkpoints from before recording have none


def make_chooser(topology: str, blueprints: list[str], config: HeuristicRunConfig) -> BlueprintChooser:
    """The heuristic's blueprint chooser: simic's UCB1 curriculum (default) or plain rotation."""
    if config.chooser == "rotation":
        return BlueprintRotation(blueprints)
    complexity = [BlueprintRegistry.get(topology, name).param_estimate for name in blueprints]
    curriculum = BlueprintCurriculum(blueprints, complexity)
    if config.curriculum is not None:
        saved = BlueprintCurriculum.load(config.curriculum)
        if sorted(saved.blueprints) != sorted(blueprints):
            raise ValueError(
                f"curriculum {config.curriculum} covers {saved.blueprints}, this run uses {blueprints}; "
                "pass the same --blueprints (and task topology) as the run that wrote it"
            )
        curriculum = saved
    return curriculum


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
    spec = host_variant(get_task(config.task), config.host, config.built_in)
    if config.lr_schedule is not None:
        spec = dataclasses.replace(spec, lr_schedule=config.lr_schedule)
    data = spec.load_data(**config.task_options)
    policy = None if config.controller in BUILT_IN_CONTROLLERS else load_policy(config)
    slots = config.slots if policy is None else policy.info["slot_ids"]
    asked = config.blueprints if policy is None else list(policy.info["blueprints"])
    if config.controller == "schedule" and asked is None:
        asked = list(dict.fromkeys(step.blueprint for step in schedule_plan(spec, config)))
    hub = TelemetryHub()
    trainer = build_trainer(spec, data, config.seed, slots, on_telemetry=hub, world=world,
                            budget=config.budget, blueprints=asked, **model_options(config))  # fmt: skip
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


def load_policy(config: HeuristicRunConfig) -> PolicyController:
    """The policy.pt the config names; it brings its slots and blueprints, and a config naming
    others (or another task) is refused."""
    policy = PolicyController.load(config.controller)
    info = policy.info
    if info["task"] != config.task:
        raise ValueError(f"{config.controller} was trained on task '{info['task']}', not '{config.task}'")
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
    chooser = make_chooser(spec.topology, blueprints, config)
    return HeuristicController(chooser, heuristic_config(spec, config.heuristic))


def slot_snapshot(trainer: MorphogeneticTrainer) -> dict[str, dict[str, Any] | None]:
    """Each slot's live seed, as a report (None without one)."""
    return {
        slot_id: None if (report := slot.report()) is None else report.to_dict()
        for slot_id, slot in trainer.slots.items()
    }


def stack_snapshot(trainer: MorphogeneticTrainer) -> dict[str, list[dict[str, Any]]]:
    """Each slot's stack: its fossilized seeds, in the order they were kept."""
    return {
        slot_id: [fossil.to_dict() for fossil in slot.fossil_reports]
        for slot_id, slot in trainer.slots.items()
    }


def grown_architecture(host: str, trainer: MorphogeneticTrainer) -> dict[str, Any]:
    """The static-final network: the `host` (what built it) and, per slot, the blueprints of its
    fossils in order (live seeds are not in it: they were not kept); where width seeds were merged,
    "widths": per such slot, its layer's width after each merge."""
    architecture: dict[str, Any] = {
        "host": host,
        "slots": {slot_id: [f.blueprint_id for f in slot.fossil_reports] for slot_id, slot in trainer.slots.items()},
    }
    widths = {slot_id: [r.width for r in slot.widenings] for slot_id, slot in trainer.slots.items() if slot.widenings}
    if widths:
        architecture["widths"] = widths
    return architecture


def count_seeds(metrics: list[dict[str, Any]]) -> dict[str, int]:
    """Germinations, fossilizations and culls, from the lifecycle moves each epoch's line lists."""
    counts = dict.fromkeys(_COUNTED_MOVES.values(), 0)
    for line in metrics:
        for move in line.get("transitions", []):
            name = _COUNTED_MOVES.get(move["to_stage"])
            if name is not None:
                counts[name] += 1
    return counts


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


def summarize(
    folder: RunFolder,
    trainer: MorphogeneticTrainer,
    config: HeuristicRunConfig,
    epochs: int,
    seconds: float,
    baseline: dict[str, Any] | None,
    failure: str | None = None,
) -> dict[str, Any]:
    """Write summary.json: "status" is "complete", or "failed" with the `failure` as "reason"."""
    summary = {
        "mode": "heuristic",
        "task": config.task,
        "seed": config.seed,
        "epochs": epochs,
        "status": "complete" if failure is None else "failed",
        **({} if failure is None else {"reason": failure}),
        **growth_summary(folder, trainer, config.model or str(get_task(config.task).build_host)),
        "host_only_val_accuracy": None if baseline is None else baseline["final_val_accuracy"],
        "processes": trainer.world.size,
        "wall_seconds_this_session": round(seconds, 2),
        "esper_version": __version__,
    }
    write_json(folder.summary_path, summary)
    return summary


def growth_summary(folder: RunFolder, trainer: MorphogeneticTrainer, host: str) -> dict[str, Any]:
    """What every growing run's summary.json says of the growth, from its run folder and trainer;
    `host` says what built the host (for the grown architecture). "flops" is None when the
    model's FLOPs cannot be counted (`tolaria.flops`)."""
    analytics = BlueprintAnalytics()
    for record in read_jsonl(folder.events_path):
        analytics.handle(TelemetryEvent.from_dict(record))
    metrics = read_jsonl(folder.metrics_path)
    model = trainer.model
    return {
        "final_val_accuracy": metrics[-1]["val_accuracy"],
        # Non-finite values read back as None (strict JSON): a run that never measured a finite one has none.
        "best_val_accuracy": max((m["val_accuracy"] for m in metrics if m["val_accuracy"] is not None), default=None),
        "host_params": model.host_param_count(),
        "params_added": model.seed_param_count(),
        "params": {
            "host": model.host_param_count(),
            "added": model.seed_param_count(),
            "total": model.host_param_count() + model.seed_param_count(),
        },
        "flops": trainer.flops.summary(),
        "architecture": grown_architecture(host, trainer),
        "seeds": count_seeds(metrics),
        "blueprints": analytics.summary(),
        "rollbacks": trainer.governor.rollbacks,
        "final_slots": slot_snapshot(trainer),
    }


def write_epoch(
    metrics: JsonlWriter | None,
    hub: TelemetryHub,
    trainer: MorphogeneticTrainer,
    result: EpochResult,
    outcomes: list[Outcome],
    moves: list[StageTransition],
) -> None:
    """An epoch's metrics.jsonl line (when the run keeps a folder) and its EPOCH_COMPLETED event,
    as every growing run writes them."""
    record = result.record
    epoch_data = {**record.to_dict(), "slots": slot_snapshot(trainer), "fossils": stack_snapshot(trainer)}
    if metrics is not None:
        metrics.write(
            {
                **epoch_data,
                "actions": [{"kind": a.kind.name, "slot": a.slot_id, "blueprint": a.blueprint_id, "done": done} for a, done, _ in outcomes],
                "transitions": [move.to_dict() for move in moves],
            }
        )
    hub.emit(TelemetryEvent(TelemetryEventType.EPOCH_COMPLETED, epoch=record.epoch, data=epoch_data))


def run_heuristic(
    config: HeuristicRunConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    world: World | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) a grown run in `run_dir`; returns the summary written to summary.json.

    With a distributed `world` every rank calls this; rank 0 returns the summary, the others None.
    `progress(epochs_done, epochs)` is called after every epoch (for a caller's own display).
    """
    world = world or World.single()
    main = world.is_main
    folder = RunFolder(run_dir)
    if resume:
        config = world.run_on_main(lambda: build_config(HeuristicRunConfig, folder.saved_config("heuristic"), {}))
    elif config is None:
        raise ValueError("a new run needs a config (or resume=True to continue one)")
    check_processes(config, world.size)
    # Everything that can be wrong with the config or the data is found before the folder is made.
    prepared = prepare_run(config, world, resume)
    spec, data, epochs, blueprints = prepared.spec, prepared.data, prepared.epochs, prepared.blueprints
    controller, hub, trainer = prepared.controller, prepared.hub, prepared.trainer
    world.check_same("run's settings", run_fingerprint(config.to_dict(), data))
    reward = build_config(RewardConfig, config.reward, {}, section="reward")  # checked before any folder
    resumed = None
    if config.tensorboard and main:
        from esper.nissa.tensorboard import TensorBoardOutput  # imports tensorboard only when asked

    def restore_state(payload: dict[str, Any]) -> int:
        trainer.load_state_dict(payload["trainer"])
        controller.load_state_dict(payload["controller"])
        return trainer.epoch

    def open_folder() -> dict[str, Any] | None:
        """Rank 0: the run folder; resuming, the trainer state every rank loads."""
        nonlocal resumed
        if not resume:
            folder.create({"mode": "heuristic", "config": config.to_dict(), "epochs": epochs, "processes": world.size,
                           "esper_version": __version__})  # fmt: skip
        # Logs are truncated to the checkpoint loaded before any output opens them.
        resumed = folder.resume(HeuristicCheckpoint, restore_state) if resume else None
        return resumed.payload["trainer"] if resumed is not None and world.distributed else None

    state = world.run_on_main(open_folder)
    if state is not None and not main:
        trainer.load_state_dict(state)
    recorder = None
    metrics = None
    if main:
        # Every decision is also recorded as a transition, for `esper train offline`.
        recorder = episode_recorder(folder.path, config.task, prepared.slots, blueprints, reward,
                                    mode="heuristic", episode_length=epochs)  # fmt: skip
        if resumed is not None and "recorder" in resumed.payload:  # checkpoints from before recording have none
            resumed.restore("the transition recorder", lambda: recorder.load_state_dict(resumed.payload["recorder"]))
        hub.add_output(JsonlEventOutput(folder.events_path))
        if console is not None:
            hub.add_output(RichConsoleOutput(console))
        if config.tensorboard:
            # Resumed: the epochs after the checkpoint run again, so their old points are hidden.
            purge = trainer.epoch if resumed is not None else None
            hub.add_output(TensorBoardOutput(folder.tensorboard_path, purge_step=purge))
        metrics = JsonlWriter(folder.metrics_path)

    def save(path: Path) -> None:
        state = {"trainer": trainer.state_dict(), "controller": controller.state_dict(), "recorder": recorder.state_dict()}
        folder.save_checkpoint(state, path)

    def on_epoch(result: EpochResult, outcomes: list[Outcome], moves: list[StageTransition]) -> None:
        record = result.record
        finished = trainer.epoch > record.epoch  # a failed epoch stops before its lifecycle step
        checkpoint = finished and trainer.epoch % config.checkpoint_every == 0
        if checkpoint:
            world.check_replicas(trainer.model)
        world.at(f"epoch {trainer.epoch} of {epochs}")
        if not main:
            return
        write_epoch(metrics, hub, trainer, result, outcomes, moves)
        if checkpoint:
            save(folder.checkpoint_path(trainer.epoch))
        if progress is not None:
            progress(trainer.epoch, epochs)

    started = time.perf_counter()
    hub.emit(
        TelemetryEvent(
            TelemetryEventType.RUN_STARTED,
            data={
                "total_epochs": epochs,
                "task": config.task,
                "mode": "heuristic",
                "start_epoch": trainer.epoch,
                "processes": world.size,
            },
        )
    )
    world.at(f"epoch {trainer.epoch} of {epochs}")
    loop = EpochLoop(trainer, epochs, on_epoch, max_consecutive_rollbacks=config.max_consecutive_rollbacks, cap=prepared.cap)
    try:
        run_epochs(loop, MainRankDecides(RecordedController(controller, recorder) if main else None, world))
        if main:
            save(folder.checkpoint_dir / FINAL_CHECKPOINT)
            if isinstance(controller, HeuristicController) and isinstance(controller.chooser, BlueprintCurriculum):
                # What this run learned about blueprints, for the next run's --curriculum.
                controller.chooser.save(folder.path / CURRICULUM_FILE)
        hub.emit(TelemetryEvent(TelemetryEventType.RUN_FINISHED, data={"epochs": epochs}))
    except TrainingFailed as failed:
        epoch = failed.result.record.epoch
        hub.emit(TelemetryEvent(TelemetryEventType.RUN_FINISHED, epoch=epoch, message=failed.reason, data={"status": "failed"}))
        if main:
            metrics.close()
            summarize(folder, trainer, config, epochs, time.perf_counter() - started, None, failure=failed.reason)
        raise TrainingFailed(
            f"the run failed at epoch {epoch}: {failed.reason}. Every epoch up to it is kept in "
            f"{folder.path} (summary.json: status failed). Look for non-finite values in the data "
            "and for a host that diverges on its own (learning rate, initialisation), then start a new run.",
            failed.result,
        ) from None
    finally:
        if main:
            metrics.close()
            recorder.log.close()
        hub.close()
    baseline = None
    if config.baseline:
        baseline_path = folder.path / "baseline.json"
        baseline = world.run_on_main(lambda: read_json(baseline_path) if baseline_path.exists() else None)
        if baseline is None:
            world.at("the host-only baseline")
            baseline = train_host_only(spec, data, config, epochs, console if main else None, world)
            if main:
                write_json(baseline_path, baseline)
    if not main:
        return None
    return summarize(folder, trainer, config, epochs, time.perf_counter() - started, baseline)
