"""The run folder: config, events, metrics, checkpoints and summary of one run.

Everything is written so that a crash loses at most the epoch in progress:
JSON files are written to a temporary name and renamed, JSONL files are
flushed line by line, checkpoints are saved atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from esper.nissa import read_jsonl, strict_json

CHECKPOINT_DIR = "checkpoints"
FINAL_CHECKPOINT = "final.pt"


def write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strict_json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return strict_json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: is this an Esper run folder?") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


class RunFolder:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    transitions_path = property(lambda self: self.path / "transitions.jsonl")  # simic.recording.TRANSITIONS_FILE
    checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)

    def create(self, config: dict[str, Any]) -> None:
        """Start a new run here; refuses to touch a folder that already holds a run."""
        if self.config_path.exists():
            raise FileExistsError(
                f"{self.path} already holds a run. Continue it with --resume {self.path}, "
                "or choose another --run-dir."
            )
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, config)

    def saved_config(self, mode: str) -> dict[str, Any]:
        """The config a run of `mode` was started with (for --resume)."""
        saved = read_json(self.config_path)
        if saved.get("mode") != mode:
            raise ValueError(f"{self.path} is a '{saved.get('mode')}' run, not a {mode} run")
        return saved["config"]

    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch_{epoch:04d}.pt"

    def save_checkpoint(self, payload: dict[str, Any], path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def latest_checkpoint(self) -> Path | None:
        final = self.checkpoint_dir / FINAL_CHECKPOINT
        if final.exists():
            return final
        epochs = sorted(self.checkpoint_dir.glob("epoch_*.pt"))
        return epochs[-1] if epochs else None

    @staticmethod
    def load_checkpoint(path: Path) -> dict[str, Any]:
        return torch.load(path, map_location="cpu", weights_only=True)

    def truncate_logs(self, epochs_done: int) -> None:
        """Drop log lines from epochs after the checkpoint; the resumed run writes them again."""
        for path in (self.events_path, self.metrics_path, self.transitions_path):
            if not path.exists():
                continue
            kept = [r for r in read_jsonl(path) if r.get("epoch") is None or r["epoch"] < epochs_done]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(strict_json.dumps(r, default=str) + "\n" for r in kept))
            os.replace(tmp, path)
