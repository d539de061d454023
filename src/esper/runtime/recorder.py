"""One run's bookkeeping: its folder, telemetry outputs, start and end, checkpoints and summary.

Every job that trains keeps a run folder (`nissa.run_folder`) the same way:
`esper train heuristic` (and every arm of `esper compare`, which runs it),
`esper.Grower` in a user's own loop, and `esper train ppo` (rounds instead of
epochs). `RunRecorder` is that bookkeeping, written once: the folder made (or
resumed from its newest checkpoint, logs truncated to it), events.jsonl,
metrics.jsonl, the console and TensorBoard outputs, the RUN_STARTED and
RUN_FINISHED events, the checkpoint cadence, the final checkpoint and
summary.json. `GrowthRecorder` adds what a growing run records: each epoch's
metrics line and event (with its slots and stacks), a checkpoint after every
`checkpoint_every` finished epochs, the growth in summary.json, and the end of a
run that failed.

A run that ends without a final metric (its last epochs rolled back with no
finite score) has failed like one the governor gave up on: its summary says
"failed" and `TrainingFailed` is raised; no run is "complete" without one.

Under torchrun every rank calls the same methods; rank 0 alone (`World.is_main`)
writes files, and the replicas are compared before each checkpoint. A
`GrowthRecorder` without a folder (a Grower without `run_dir`) only emits events.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from torch import nn

from esper import __version__
from esper.kasmina.width import width_key
from esper.leyline import SeedLedger, StageTransition, TelemetryEvent, TelemetryEventType
from esper.nissa import (
    BlueprintAnalytics,
    JsonlEventOutput,
    JsonlWriter,
    RichConsoleOutput,
    TelemetryHub,
    read_jsonl,
)
from esper.nissa.run_folder import FINAL_CHECKPOINT, Resumed, RunFolder, read_json, write_json
from esper.tolaria import EpochResult, MorphogeneticTrainer, TrainingFailed
from esper.tolaria.distributed import World
from esper.tolaria.engine import Outcome

C = TypeVar("C")


class RunRecorder:
    """A run's folder and telemetry (see the module docstring); `unit` is "epoch" or "round".

    `state(done)` is the checkpoint's payload after `done` epochs (rounds); `saved(done,
    path)`, when given, runs after each checkpoint is written (PPO writes its policy then).
    `folder` None: nothing is written, the events still go to the hub's outputs.
    """

    def __init__(
        self,
        folder: RunFolder | None,
        hub: TelemetryHub,
        mode: str,
        task: str,
        *,
        state: Callable[[int], dict[str, Any]],
        checkpoint_every: int,
        unit: str = "epoch",
        world: World | None = None,
        tensorboard: bool = False,
        saved: Callable[[int, Path], None] | None = None,
    ) -> None:
        self.world = world or World.single()
        self.folder = folder
        self.hub = hub
        self.mode = mode
        self.task = task
        self.unit = unit
        self.state = state
        self.saved = saved
        self.checkpoint_every = checkpoint_every
        self.writes = folder is not None and self.world.is_main
        self.tensorboard = tensorboard and self.writes
        if self.tensorboard:
            import esper.nissa.tensorboard  # noqa: F401 - a missing tensorboard is said before any folder is made
        self.metrics: JsonlWriter | None = None
        self.resuming = False
        self.resumed: Resumed | None = None  # rank 0: the checkpoint a resumed run started from
        self.first = 0  # the epochs (rounds) done when this session started
        self.started = time.perf_counter()

    def open(self, config: dict[str, Any] | None, schema: type, restore: Callable[[dict[str, Any]], int]) -> int:
        """Every rank: a new run folder holding `config` (config.json), or with None the run it
        holds, resumed from its newest checkpoint (`schema`: what a checkpoint holds; `restore(payload)`
        loads it and returns the epochs it covers; every rank loads rank 0's). Returns the epochs done."""

        def on_main() -> tuple[int, dict[str, Any] | None]:
            if config is not None:
                self.folder.create(config)
            else:
                self.resumed = self.folder.resume(schema, self._restored(restore))  # logs truncated before they open
                saved = self.folder.read_config()
                if saved.get("processes", self.world.size) != self.world.size:  # resumed on another number
                    write_json(self.folder.config_path, {**saved, "processes": self.world.size})
            self.hub.add_output(JsonlEventOutput(self.folder.events_path))
            self.metrics = JsonlWriter(self.folder.metrics_path)
            resumed = self.resumed
            return self.first, None if resumed is None or not self.world.distributed else resumed.payload

        self.resuming = config is None
        self.first, payload = self.world.run_on_main(on_main)
        if payload is not None and not self.world.is_main:
            restore(payload)
        return self.first

    def _restored(self, restore: Callable[[dict[str, Any]], int]) -> Callable[[dict[str, Any]], int]:
        def apply(payload: dict[str, Any]) -> int:
            self.first = restore(payload)
            return self.first

        return apply

    def show(self, console: Console | None) -> None:
        """Live lines on `console`, and TensorBoard when asked (a resumed run hides the points it plays again)."""
        if console is not None and self.world.is_main:
            self.hub.add_output(RichConsoleOutput(console))
        if self.tensorboard:
            from esper.nissa.tensorboard import TensorBoardOutput

            purge = self.first if self.resuming else None
            self.hub.add_output(TensorBoardOutput(self.folder.tensorboard_path, purge_step=purge))

    def start(self, total: int | None, message: str = "", **data: Any) -> None:
        """RUN_STARTED: the planned epochs (rounds), where this session starts, and `data`."""
        self.started = time.perf_counter()
        unit = self.unit
        head = {f"total_{unit}s": total, "task": self.task, "mode": self.mode, f"start_{unit}": self.first}
        self.hub.emit(TelemetryEvent(TelemetryEventType.RUN_STARTED, message=message, data={**head, **data}))

    def checkpoint_due(self, done: int, replicas: nn.Module) -> bool:
        """Every rank: whether `done` epochs (rounds) end on a checkpoint; before one, the ranks'
        replicas of `replicas` are checked to be the same."""
        due = done % self.checkpoint_every == 0
        if due:
            self.world.check_replicas(replicas)
        return due

    def save(self, done: int, final: bool = False) -> None:
        """Checkpoint `done` epochs (rounds), as final.pt when `final` (rank 0 with a folder)."""
        if not self.writes:
            return
        path = self.folder.checkpoint_dir / FINAL_CHECKPOINT if final else self.folder.checkpoint_path(done)
        self.folder.save_checkpoint(self.state(done), path)
        if self.saved is not None:
            self.saved(done, path)

    def write(self, line: dict[str, Any]) -> None:
        """One metrics.jsonl line (rank 0 with a folder)."""
        if self.metrics is not None:
            self.metrics.write(line)

    def finish(self, done: int) -> None:
        """The planned epochs (rounds) are done: the final checkpoint and RUN_FINISHED."""
        self.save(done, final=True)
        self.hub.emit(TelemetryEvent(TelemetryEventType.RUN_FINISHED, data={f"{self.unit}s": done}))

    def summarize(self, head: dict[str, Any], body: dict[str, Any], failure: str | None = None) -> dict[str, Any]:
        """summary.json: mode, task, `head`, the status ("failed" with the `failure` as its reason),
        `body`, this session's seconds and the version. Rank 0 with a folder writes it."""
        summary = {
            "mode": self.mode,
            "task": self.task,
            **head,
            "status": "complete" if failure is None else "failed",
            **({} if failure is None else {"reason": failure}),
            **body,
            "wall_seconds_this_session": round(time.perf_counter() - self.started, 2),
            "esper_version": __version__,
        }
        if self.writes:
            write_json(self.folder.summary_path, summary)
        return summary

    def close(self) -> None:
        """The logs and the hub's outputs closed (idempotent)."""
        if self.metrics is not None:
            self.metrics.close()
        self.hub.close()


class GrowthRecorder(RunRecorder):
    """A `RunRecorder` for a run that grows `trainer`'s model; `host` says what built the host."""

    def __init__(self, folder: RunFolder | None, hub: TelemetryHub, mode: str, task: str,
                 trainer: MorphogeneticTrainer, host: str, **options: Any) -> None:  # fmt: skip
        super().__init__(folder, hub, mode, task, **options)
        self.trainer = trainer
        self.host = host
        self.total: int | None = None
        self.last: EpochResult | None = None

    def start(self, total: int | None, message: str = "", **data: Any) -> None:
        self.total = total
        super().start(total, message, **data)
        self.world.at(f"epoch {self.trainer.epoch} of {total}")

    def on_epoch(self, result: EpochResult, outcomes: list[Outcome], moves: list[StageTransition]) -> None:
        """The `EpochLoop` hook: the epoch's line and event, and the checkpoint when one is due."""
        trainer = self.trainer
        self.last = result
        finished = trainer.epoch > result.record.epoch  # a failed epoch stops before its lifecycle step
        checkpoint = finished and self.checkpoint_due(trainer.epoch, trainer.model)
        self.world.at(f"epoch {trainer.epoch} of {self.total}")
        if not self.world.is_main:
            return
        self.write_epoch(result, outcomes, moves)
        if checkpoint:
            self.save(trainer.epoch)

    def write_epoch(self, result: EpochResult, outcomes: list[Outcome], moves: list[StageTransition]) -> None:
        """An epoch's metrics.jsonl line (with a folder) and its EPOCH_COMPLETED event."""
        record = result.record
        epoch_data = {**record.to_dict(), "slots": slot_snapshot(self.trainer), "fossils": stack_snapshot(self.trainer)}
        actions = [{"kind": a.kind.name, "slot": a.slot_id, "blueprint": a.blueprint_id, "done": done} for a, done, _ in outcomes]
        self.write({**epoch_data, "actions": actions, "transitions": [move.to_dict() for move in moves]})
        self.hub.emit(TelemetryEvent(TelemetryEventType.EPOCH_COMPLETED, epoch=record.epoch, data=epoch_data))

    def failed(self, failed: TrainingFailed, subject: str, head: dict[str, Any], body: dict[str, Any]) -> TrainingFailed:
        """The run stopped on `failed`: RUN_FINISHED says so, summary.json says "failed" with the
        reason; returns the error to raise, which says what `subject` (e.g. "the run") left where."""
        epoch = failed.result.record.epoch
        data = {"epochs": self.trainer.epoch, "status": "failed"}
        self.hub.emit(TelemetryEvent(TelemetryEventType.RUN_FINISHED, epoch=epoch, message=failed.reason, data=data))
        if self.metrics is not None:
            self.metrics.close()
        self.summarize(head, body, failure=failed.reason)
        where = "" if not self.writes else f" Every epoch up to it is kept in {self.folder.path} (summary.json: status failed)."
        return TrainingFailed(
            f"{subject} failed at epoch {epoch}: {failed.reason}.{where} Look for non-finite values in the data and "
            "for a model that diverges on its own (learning rate, initialisation), then start a new run.",
            failed.result,
        )

    def finish(self, done: int) -> None:
        """As `RunRecorder.finish`; a run whose last epoch has no finite score raises `TrainingFailed`."""
        last = self.last
        if last is not None and not math.isfinite(last.record.val_accuracy):
            why = f" (rolled back: {last.record.rollback})" if last.record.rollback else ""
            raise TrainingFailed(f"no final metric: the last epoch's validation score is not finite{why}", last)
        super().finish(done)

    def summarize(self, head: dict[str, Any], body: dict[str, Any], failure: str | None = None) -> dict[str, Any]:
        """summary.json with the growth."""
        return super().summarize(head, {**(self.growth() if self.writes else {}), **body}, failure)

    def growth(self) -> dict[str, Any]:
        """What summary.json says of the growth, from the run folder and the trainer. "flops" is
        None when the model's FLOPs cannot be counted (`tolaria.flops`)."""
        analytics = BlueprintAnalytics()
        for record in read_jsonl(self.folder.events_path):
            analytics.handle(TelemetryEvent.from_dict(record))
        metrics = read_jsonl(self.folder.metrics_path)
        trainer = self.trainer
        model = trainer.model
        finite = [m["val_accuracy"] for m in metrics if m["val_accuracy"] is not None]
        return {
            # Non-finite values read back as None (strict JSON).
            "final_val_accuracy": metrics[-1]["val_accuracy"] if metrics else None,
            "best_val_accuracy": max(finite, default=None),
            "host_params": model.host_param_count(),
            "params_added": model.seed_param_count(),
            "params": {
                "host": model.host_param_count(),
                "added": model.seed_param_count(),
                "total": model.host_param_count() + model.seed_param_count(),
            },
            "flops": trainer.flops.summary(),
            "architecture": grown_architecture(self.host, trainer),
            "seeds": count_seeds(metrics),
            "blueprints": analytics.summary(),
            "rollbacks": trainer.governor.rollbacks,
            "final_slots": slot_snapshot(trainer),
        }


def run_config(
    config: C | None,
    folder: RunFolder,
    mode: str,
    unit: str,
    resume: bool,
    total: int | None,
    world: World,
    console: Console | None,
    build: Callable[[dict[str, Any]], C],
) -> tuple[C, dict[str, Any] | None]:
    """Every rank: the config a new run starts with (`config`), or the one the `mode` run in
    `folder` resumes with (`build` of the saved one, trained to `total` epochs or rounds when
    given: `resumed_config`); and the summary of a resumed run that is complete as planned,
    which leaves nothing to do (`console` is told)."""
    if not resume:
        if config is None:
            raise ValueError("a new run needs a config (or resume=True to continue one)")
        return config, None
    saved = build(world.run_on_main(lambda: resumed_config(folder, mode, unit, total)))
    complete = world.run_on_main(lambda: complete_summary(folder, unit))
    if complete is not None and console is not None and world.is_main:
        planned = complete[f"{unit}s"]
        console.print(
            f"{folder.path} is complete ({planned} {unit}s): nothing to do. To train it longer: "
            f"esper train {mode} --resume {folder.path} --{unit}s N (N > {planned})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    return saved, complete


def resumed_config(folder: RunFolder, mode: str, unit: str, total: int | None = None) -> dict[str, Any]:
    """The config the `mode` run in `folder` was started with, for resuming it; with `total`, its
    planned epochs (rounds) become `total` first: a finished or interrupted run trained longer.

    Extending rewrites config.json and turns final.pt into the checkpoint of the epochs (rounds)
    it covers, so that one of the longer run is newer; a `total` below what is done is refused.
    """
    saved = read_json(folder.config_path)
    config = folder.saved_config(mode)
    key = f"{unit}s"
    planned = saved.get(key) or config[key]  # heuristic runs keep the resolved epochs at the top level
    if total is None or total == planned:
        return config
    done = len(read_jsonl(folder.metrics_path)) if folder.metrics_path.exists() else 0
    if total <= done:
        raise ValueError(
            f"{folder.path} has {done} {key} done already: --{key} {total} cannot shorten it; "
            f"give more than {done} to train it longer"
        )
    final = folder.checkpoint_dir / FINAL_CHECKPOINT
    if final.exists():
        os.replace(final, folder.checkpoint_path(done))
    config[key] = total
    write_json(folder.config_path, {**saved, "config": config, **({key: total} if key in saved else {})})
    return config


def complete_summary(folder: RunFolder, unit: str) -> dict[str, Any] | None:
    """summary.json of a run that is complete as planned in its config.json, its final checkpoint
    written (None: there is more to do)."""
    if not (folder.summary_path.exists() and (folder.checkpoint_dir / FINAL_CHECKPOINT).exists()):
        return None
    summary, saved = read_json(folder.summary_path), read_json(folder.config_path)
    key = f"{unit}s"
    planned = saved.get(key) or saved["config"][key]
    return summary if summary.get("status") == "complete" and summary.get(key) == planned else None


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
    "widths": per such slot (`width_key`: "heads@layer1" for its attention heads), its layer's
    width after each merge."""
    architecture: dict[str, Any] = {
        "host": host,
        "slots": {slot_id: [f.blueprint_id for f in slot.fossil_reports] for slot_id, slot in trainer.slots.items()},
    }
    widths: dict[str, list[int]] = {}
    for slot_id, slot in trainer.slots.items():
        for report in slot.widenings:
            widths.setdefault(width_key(slot_id, report.kind), []).append(report.width)
    if widths:
        architecture["widths"] = widths
    return architecture


def count_seeds(metrics: list[dict[str, Any]]) -> dict[str, int]:
    """Germinations, fossilizations and culls, from the lifecycle moves each epoch's line lists."""
    ledger = SeedLedger()
    ledger.record_moves(StageTransition.from_dict(move) for line in metrics for move in line.get("transitions", []))
    return ledger.totals
