"""Concrete telemetry outputs: crash-safe, strict JSON Lines files and a live rich console."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from esper.leyline import LIFECYCLE_EVENTS, TelemetryEvent, TelemetryEventType
from esper.nissa.strict_json import dumps, loads

logger = logging.getLogger("esper.nissa")


# --------------------------------------------------------------------------- JSON Lines


def _drop_partial_last_line(path: Path) -> None:
    """Cut a half-written final line left by a crash, so appending keeps the file valid."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        keep = 0
        while pos > 0:
            step = min(4096, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline != -1:
                keep = pos + newline + 1
                break
        if keep != end:
            logger.warning("%s: dropping truncated final line (%d bytes)", path, end - keep)
            f.truncate(keep)


class JsonlWriter:
    """Appends one strict JSON object per line (`esper.nissa.strict_json`), flushed per line.

    Append mode lets a resumed run continue the same file; flushing every line
    means a crash loses at most the line being written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _drop_partial_last_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"

    def write(self, record: dict[str, Any]) -> None:
        line = dumps(record)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file written by :class:`JsonlWriter` (see `numbered_jsonl`)."""
    return [record for _, record in numbered_jsonl(path)]


def numbered_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record of a JSON Lines file, so readers can name a line.

    Blank lines are skipped. A final line with no newline that does not parse
    is the trace of a crash mid-write and is skipped; any other line that does
    not parse raises ``ValueError`` naming its line number. Non-finite values
    read as None, bare NaN/Infinity tokens of older files included
    (`esper.nissa.strict_json`).
    """
    with Path(path).open(encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except ValueError as exc:  # json.JSONDecodeError
            if lineno == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}: corrupt JSON on line {lineno}: {exc}") from exc
        yield lineno, record


class JsonlEventOutput:
    """Telemetry output writing each event as one line (typically ``events.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._writer = JsonlWriter(path)

    def __repr__(self) -> str:
        return f"JsonlEventOutput({str(self._writer.path)!r})"

    def handle(self, event: TelemetryEvent) -> None:
        self._writer.write(event.to_dict())

    def close(self) -> None:
        self._writer.close()


# --------------------------------------------------------------------------- console

_STYLES: dict[TelemetryEventType, str] = {
    TelemetryEventType.SEED_GERMINATED: "cyan",
    TelemetryEventType.SEED_STAGE_CHANGED: "blue",
    TelemetryEventType.SEED_FOSSILIZED: "green",
    TelemetryEventType.SEED_CULLED: "red",
    TelemetryEventType.SEED_RESET: "yellow",
    TelemetryEventType.GOVERNOR_ROLLBACK: "bold red",
}

_LABELS: dict[TelemetryEventType, str] = {
    TelemetryEventType.SEED_GERMINATED: "GERMINATED",
    TelemetryEventType.SEED_STAGE_CHANGED: "STAGE",
    TelemetryEventType.SEED_FOSSILIZED: "FOSSILIZED",
    TelemetryEventType.SEED_CULLED: "CULLED",
    TelemetryEventType.SEED_RESET: "RESET",
    TelemetryEventType.GOVERNOR_ROLLBACK: "ROLLBACK",
}


def _epoch_label(epoch: int | None) -> str:
    return "epoch   -" if epoch is None else f"epoch {epoch:>3}"


def format_event_line(event: TelemetryEvent) -> Text:
    """One line such as ``epoch   5  block2  seed-3  conv_light  GERMINATED``."""
    parts = [_epoch_label(event.epoch)]
    parts += [part for part in (event.slot_id, event.seed_id, event.blueprint_id) if part]
    label = _LABELS[event.event_type]
    contribution = event.data.get("counterfactual_contribution")
    if event.event_type == TelemetryEventType.SEED_FOSSILIZED and contribution is not None:
        depth = event.data.get("stack_depth")  # the slot's stack with this seed on top
        label += f" (contribution {contribution:+.3f}" + ("" if depth is None else f", stack of {depth}") + ")"
    parts.append(label)
    if event.message:
        parts.append(event.message)
    # Text (not markup) so ids or messages containing "[...]" print verbatim.
    return Text("  ".join(parts), style=_STYLES[event.event_type])


def _figure(value: Any, spec: str) -> str:
    """A number as `spec` says; "-" for one not measured (None, NaN: e.g. a user's loop's train accuracy)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _format_metrics(data: dict[str, Any]) -> str:
    metrics = (
        f"loss {_figure(data['train_loss'], '.4f')}/{_figure(data['val_loss'], '.4f')}  "
        f"acc {_figure(data['train_accuracy'], '.2%')}/{_figure(data['val_accuracy'], '.2%')}"
    )
    if "active_seeds" in data:
        metrics += f"  seeds {data['active_seeds']}"
    if "params_added" in data:
        metrics += f"  +params {data['params_added']:,}"
    return metrics


class RichConsoleOutput:
    """Live console view of a run: an epoch progress bar plus one line per seed event.

    On a terminal the bar redraws in place; elsewhere (CI, redirected logs) rich
    cannot redraw, so each epoch also prints its metrics as a plain line and the
    final bar is printed when the run finishes.
    """

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console if console is not None else Console()
        self.quiet = quiet
        self._bar: tuple[Progress, TaskID] | None = None

    def handle(self, event: TelemetryEvent) -> None:
        if self.quiet:
            return
        kind = event.event_type
        if kind == TelemetryEventType.RUN_STARTED:
            self._start(event.data)
        elif kind == TelemetryEventType.EPOCH_COMPLETED:
            self._epoch(event)
        elif kind in LIFECYCLE_EVENTS or kind == TelemetryEventType.GOVERNOR_ROLLBACK:
            self.console.print(format_event_line(event))
        elif kind == TelemetryEventType.RUN_FINISHED:
            self.close()

    def _start(self, data: dict[str, Any]) -> tuple[Progress, TaskID]:
        self.close()
        description = " ".join(str(data[key]) for key in ("task", "mode") if key in data)
        progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}", markup=False),
            TimeElapsedColumn(),
            console=self.console,
        )
        task = progress.add_task(
            description or "training", total=data.get("total_epochs"), metrics=""
        )
        progress.start()
        self._bar = (progress, task)
        return self._bar

    def _epoch(self, event: TelemetryEvent) -> None:
        # Without RUN_STARTED (e.g. a resumed run) fall back to a bar of unknown length.
        progress, task = self._bar or self._start({})
        metrics = _format_metrics(event.data)
        progress.update(task, advance=1, metrics=metrics)
        if not self.console.is_terminal:
            line = f"{_epoch_label(event.epoch)}  {metrics}"
            self.console.print(line, markup=False, highlight=False)

    def close(self) -> None:
        """Stop the bar (idempotent); on a non-terminal console this prints its final state."""
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None
