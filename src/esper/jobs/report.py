"""Console rendering of a run summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{summary['task']} - {summary['mode']} - {summary['epochs']} epochs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("final val accuracy (grown)", _pct(summary["final_val_accuracy"]))
    table.add_row("final val accuracy (host only)", _pct(summary["host_only_val_accuracy"]))
    table.add_row("host params", f"{summary['host_params']:,}")
    table.add_row("params added by seeds", f"{summary['params_added']:,}")
    seeds = summary["seeds"]
    table.add_row("seeds germinated / fossilized / culled", f"{seeds['germinated']} / {seeds['fossilized']} / {seeds['culled']}")
    table.add_row("governor rollbacks", str(summary["rollbacks"]))
    console.print(table)
    if summary["blueprints"]:
        per = Table(title="per blueprint")
        for column in ("blueprint", "germinated", "fossilized", "culled", "mean contribution", "params"):
            per.add_column(column)
        for name, stats in summary["blueprints"].items():
            mean = stats["mean_contribution"]
            per.add_row(
                name, str(stats["germinated"]), str(stats["fossilized"]), str(stats["culled"]),
                "-" if mean is None else f"{mean:+.4f}", f"{stats['params_added']:,}",
            )
        console.print(per)
