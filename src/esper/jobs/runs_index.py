"""`esper runs`: one line per run folder, to find the run worth a report."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from esper.jobs.report import format_flops
from esper.jobs.run_data import load_run


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders directly under ``root`` (sorted by name); other folders are skipped."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} does not exist or is not a folder; runs are written to ./runs by default"
        )
    return [path for path in sorted(root.iterdir()) if (path / "config.json").is_file()]


_COLUMNS = (
    ("run", "left"),
    ("task", "left"),
    ("mode", "left"),
    ("done/planned", "right"),
    ("final accuracy", "right"),
    ("params added", "right"),
    ("training FLOPs", "right"),
    ("status", "left"),
)


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def runs_table(root: Path) -> Table:
    """A rich table of the runs under ``root``: name, task, mode, progress, results, status."""
    table = Table(title=f"Runs in {root}")
    for header, justify in _COLUMNS:
        table.add_column(header, justify=justify)
    run_dirs = find_run_dirs(root)
    for path in run_dirs:
        try:
            run = load_run(path)
        except ValueError as err:  # one damaged folder must not hide the others
            table.add_row(
                Text(path.name), "", "", "", "", "", "", Text(f"unreadable: {err}", style="red")
            )
            continue
        planned = "?" if run.planned is None else str(run.planned)
        table.add_row(
            Text(run.name),
            Text(run.task),
            run.mode,
            f"{run.done}/{planned}",
            _fmt(run.final_accuracy, ".2%"),
            _fmt(run.params_added, ",.0f"),
            format_flops(run.training_flops),
            Text(run.status, style="green" if run.complete else "red" if run.failed else "yellow"),
        )
    if not run_dirs:
        table.caption = "no run folders here"
    return table
