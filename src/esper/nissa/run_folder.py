"""The run folder: config, events, metrics, checkpoints and summary of one run.

Everything is written so that a crash loses at most the epoch in progress:
JSON files are written to a temporary name and renamed, JSONL files are
flushed line by line, checkpoints are saved atomically. A write that fails (a
full disk, a read-only folder) leaves no temporary file behind and raises an
`OSError` naming the file.

On resume the newest checkpoint that can be read is used: a corrupt one (a crash
or a disk fault mid-write, a truncated copy) is skipped with a warning and the
run continues from the one before it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from esper.nissa import read_jsonl, strict_json
from esper.nissa.files import (
    TorchFileError,
    check_format,
    load_torch_file,
    restore,
    save_torch_file,
    with_format,
    write_atomic,
)

CHECKPOINT_DIR = "checkpoints"
FINAL_CHECKPOINT = "final.pt"
RESUMABLE_MODES = ("heuristic", "ppo")  # the `esper train` modes that have --resume

logger = logging.getLogger("esper.nissa")
T = TypeVar("T")


def write_json(path: Path, record: dict[str, Any]) -> None:
    text = strict_json.dumps(record, indent=2, default=str) + "\n"
    write_atomic(path, lambda f: f.write(text))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return strict_json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: is this an Esper run folder?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


@dataclass(frozen=True, slots=True)
class Resumed:
    """The checkpoint a run resumed from and what it holds."""

    path: Path
    payload: dict[str, Any]

    def restore(self, what: str, apply: Callable[[], T]) -> T:
        """`apply()` (load_state_dict calls); an error there names this checkpoint and `what`."""
        return restore(self.path, what, apply)


class RunFolder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    tensorboard_path = property(lambda self: self.path / "tensorboard")  # --tensorboard runs' event files
    transitions_path = property(lambda self: self.path / "transitions.jsonl")  # simic.recording.TRANSITIONS_FILE
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)

    def create(self, config: dict[str, Any]) -> None:
        """Start a new run here; refuses to touch a folder that already holds a run.

        Call it only once everything the run needs has been checked: a run folder
        is never left half-made by an error the checks could have found.
        """
        self.check_new(config.get("mode"))
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, with_format(config))

    def check_new(self, mode: str | None) -> None:
        """Refuse a folder that already holds a run (a `mode` run is to be started in it)."""
        if self.config_path.exists():
            hint = (
                f"Continue it with `esper train {mode} --resume {self.path}`, or choose another --run-dir."
                if mode in RESUMABLE_MODES
                else "Choose another --run-dir."
            )
            raise FileExistsError(f"{self.path} already holds a run. {hint}")

    def saved_config(self, mode: str) -> dict[str, Any]:
        """The config a run of `mode` was started with (for --resume)."""
        saved = self.read_config()
        if saved.get("mode") != mode:
            raise ValueError(f"{self.path} is a '{saved.get('mode')}' run, not a {mode} run")
        return saved["config"]

    def read_config(self) -> dict[str, Any]:
        """config.json, refused when another run-file format wrote it."""
        saved = read_json(self.config_path)
        check_format(saved, self.config_path)
        return saved

    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch_{epoch:04d}.pt"

    def save_checkpoint(self, payload: dict[str, Any], path: Path) -> None:
        save_torch_file(payload, path)

    def checkpoints(self) -> list[Path]:
        """The checkpoints, newest first: final.pt, then by epoch (or round) descending."""
        final = self.checkpoint_dir / FINAL_CHECKPOINT
        epochs = sorted(self.checkpoint_dir.glob("epoch_*.pt"), reverse=True)
        return [final, *epochs] if final.exists() else epochs

    def resume(self, schema: type, apply: Callable[[dict[str, Any]], int]) -> Resumed | None:
        """Restore from the newest readable checkpoint, then truncate the logs to it.

        Temporary files of writes a kill cut off are removed first. `schema` is the
        TypedDict of what the job's checkpoints hold; `apply(payload)`
        loads it and returns the epochs (or rounds) it covers. An unreadable
        checkpoint is skipped with a warning and the one before it is used (None
        when none is left: the run starts over, its logs emptied). One that reads
        but does not fit this run (`apply` fails) is an error: another run wrote it;
        so is one of another run-file format (`RunFormatError`).
        """
        for stale in [*self.path.glob("*.tmp"), *self.checkpoint_dir.glob("*.tmp")]:
            stale.unlink()  # a write that kill -9 cut off; the file under its real name is intact
        skipped = []
        for path in self.checkpoints():
            try:
                payload = load_torch_file(path, "an Esper checkpoint", schema)
            except TorchFileError as err:
                logger.warning("warning: skipping %s", err)
                skipped.append(path)
                continue
            resumed = Resumed(path, payload)
            done = resumed.restore("this run", lambda: apply(payload))  # noqa: B023
            if skipped:
                logger.warning("warning: resuming from the earlier checkpoint %s", path)
            self.truncate_logs(done)
            return resumed
        if skipped:
            logger.warning("warning: no readable checkpoint in %s; the run starts from the beginning", self.path)
        self.truncate_logs(0)
        return None

    def truncate_logs(self, epochs_done: int) -> None:
        """Drop log lines from epochs after the checkpoint; the resumed run writes them again."""
        for path in (self.events_path, self.metrics_path, self.transitions_path):
            if not path.exists():
                continue
            kept = [r for r in read_jsonl(path) if r.get("epoch") is None or r["epoch"] < epochs_done]
            text = "".join(strict_json.dumps(r, default=str) + "\n" for r in kept)
            write_atomic(path, lambda f: f.write(text))  # noqa: B023
