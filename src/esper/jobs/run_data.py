"""Read a run folder back, tolerating the traces of an interrupted run.

`esper report` and `esper runs` both look at finished and unfinished runs alike;
this module is the one place that knows the folder layout from the reader's
side and says, in words, what a run folder lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esper.nissa import read_jsonl
from esper.nissa.run_folder import RunFolder, read_json

BASELINE_FILE = "baseline.json"


@dataclass(slots=True)
class RunData:
    """Everything a run folder holds, as plain data.

    ``metrics`` has one record per epoch (heuristic runs) or per round (PPO
    runs, whose records carry a ``round`` key); ``missing`` lists, as
    sentences, what an unfinished or partial run lacks.
    """

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    events: list[dict[str, Any]]
    baseline: dict[str, Any] | None
    summary: dict[str, Any] | None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))

    @property
    def task(self) -> str:
        return str(self.config.get("config", {}).get("task", "?"))

    @property
    def step_key(self) -> str:
        """``round`` for PPO runs (or metrics with rounds), ``epoch`` otherwise."""
        has_rounds = bool(self.metrics) and "round" in self.metrics[0]
        return "round" if has_rounds or self.mode == "ppo" else "epoch"

    @property
    def planned(self) -> int | None:
        """Epochs (or rounds) the run was started for, when config.json says."""
        key = f"{self.step_key}s"
        for source in (self.config, self.config.get("config", {})):
            if isinstance(source.get(key), int):
                return source[key]
        return None

    @property
    def done(self) -> int:
        return len(self.metrics)

    @property
    def complete(self) -> bool:
        return self.summary is not None and self.summary.get("status", "complete") == "complete"

    @property
    def failed(self) -> bool:
        """The run stopped on a fault it could not get past (summary.json says why)."""
        return self.summary is not None and self.summary.get("status") == "failed"

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if self.failed:
            return f"failed: {self.summary.get('reason', 'no reason recorded')}"
        if not self.metrics:
            return f"interrupted before the first {self.step_key}"
        return f"interrupted at {self.step_key} {self.done}"

    def final(self, key: str) -> Any:
        """The summary's ``final_<key>``, else ``key`` in the last metrics record that has it."""
        if self.summary is not None and f"final_{key}" in self.summary:
            return self.summary[f"final_{key}"]
        return next((_mean(m[key]) for m in reversed(self.metrics) if key in m), None)

    def series(self, key: str) -> tuple[list[int], list[Any]]:
        """Steps and values of ``key`` over the metrics records that have a value for it.

        A non-finite value is stored as null (`esper.nissa.strict_json`) and reads as
        None: that step is left out, so a curve has a gap rather than a crash.
        """
        values = ((m[self.step_key], _mean(m.get(key))) for m in self.metrics)
        rows = [(step, value) for step, value in values if value is not None]
        return [r[0] for r in rows], [r[1] for r in rows]

    def series_by_flops(self, key: str) -> tuple[list[float], list[Any]]:
        """Like `series`, with the cumulative training FLOPs at the end of each epoch as x
        (empty for runs that do not count FLOPs: PPO runs)."""
        values = ((m.get("flops"), _mean(m.get(key))) for m in self.metrics)
        rows = [(flops["cumulative_training"], value) for flops, value in values if flops and value is not None]
        return [r[0] for r in rows], [r[1] for r in rows]

    @property
    def training_flops(self) -> float | None:
        """Training FLOPs the run spent (cumulative), when it counted them."""
        if self.summary is not None and self.summary.get("flops") is not None:
            return self.summary["flops"]["training"]
        return next((m["flops"]["cumulative_training"] for m in reversed(self.metrics) if m.get("flops")), None)

    @property
    def final_accuracy(self) -> float | None:
        """Of the grown network; for PPO runs, the mean over the last round's episodes."""
        return self.final("val_accuracy" if self.step_key == "epoch" else "final_val_accuracy")

    @property
    def params_added(self) -> float | None:
        """By the grown network's seeds; for PPO runs, the mean over the last round's episodes."""
        if self.summary is not None and "params_added" in self.summary:
            return self.summary["params_added"]
        return self.final("seed_params" if self.step_key == "epoch" else "params_added")


def _mean(value: Any) -> Any:
    """PPO metrics log per-episode measures as ``{"mean", "std"}``; curves use the mean."""
    return value["mean"] if isinstance(value, dict) and "mean" in value else value


def _read_optional_jsonl(path: Path, missing: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        missing.append(f"{path.name} is missing")
        return []
    return read_jsonl(path)


def load_run(path: str | Path) -> RunData:
    """Load the run folder at ``path``; a folder without config.json is refused."""
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise FileNotFoundError(f"{folder.path} does not exist or is not a folder")
    if not folder.config_path.exists():
        raise ValueError(
            f"{folder.path} is not an Esper run folder (it has no config.json); "
            "give a folder written by `esper train`"
        )
    config = folder.read_config()
    missing: list[str] = []
    metrics = _read_optional_jsonl(folder.metrics_path, missing)
    events = _read_optional_jsonl(folder.events_path, missing)
    summary = read_json(folder.summary_path) if folder.summary_path.exists() else None
    baseline_path = folder.path / BASELINE_FILE
    baseline = read_json(baseline_path) if baseline_path.exists() else None
    run = RunData(folder.path, config, metrics, events, baseline, summary, missing)
    if summary is None:
        planned = "?" if run.planned is None else run.planned
        missing.append(
            f"summary.json is missing: the run stopped after {run.done} of {planned} "
            f"{run.step_key}s (continue it with --resume)"
        )
    if baseline is None and config.get("config", {}).get("baseline"):
        missing.append("baseline.json is missing: the host-only comparison was not trained")
    return run
