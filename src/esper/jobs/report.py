"""Console rendering of a run summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def format_flops(value: float | None) -> str:
    """FLOPs with an SI prefix and 3 significant digits: 283k, 1.19T ("-" when unknown)."""
    if value is None:
        return "-"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def format_architecture(slots: dict[str, list[str]]) -> str:
    """"block2: residual_block, residual_block; block3: -": each slot's stack of fossils."""
    return "; ".join(f"{slot}: {', '.join(stack) or '-'}" for slot, stack in slots.items())


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{summary['task']} - {summary['mode']} - {summary['epochs']} epochs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("final val accuracy (grown)", _pct(summary["final_val_accuracy"]))
    table.add_row("final val accuracy (host only)", _pct(summary["host_only_val_accuracy"]))
    table.add_row("host params", f"{summary['host_params']:,}")
    table.add_row("params added by seeds", f"{summary['params_added']:,}")
    flops = summary["flops"]  # None: not counted
    if flops is not None:
        table.add_row("inference FLOPs per sample", format_flops(flops["inference_per_sample"]))
        table.add_row("training FLOPs (run)", format_flops(flops["training"]))
        table.add_row("validation + counterfactual FLOPs (run)", format_flops(flops["validation"] + flops["counterfactual"]))
    if "architecture" in summary:
        table.add_row("fossils per slot (the grown network)", format_architecture(summary["architecture"]["slots"]))
        if "widths" in summary["architecture"]:
            widths = summary["architecture"]["widths"]
            table.add_row("layer widths per slot (merged)", "; ".join(f"{s}: {' -> '.join(map(str, w))}" for s, w in widths.items()))
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
