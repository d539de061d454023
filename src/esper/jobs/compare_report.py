"""compare.json as tables: the same rows for the console (`esper compare`) and the HTML page
(`esper report DIR`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

Rows = tuple[list[str], list[list[str]]]


def si(value: float | None) -> str:
    """A count in SI units (FLOPs, to 3 significant digits): 9.31e10 -> '93.1 G'."""
    if value is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def _pm(stats: dict[str, Any] | None, fmt: str, scale: float = 1.0) -> str:
    """'mean ± SE'; just the mean with one seed, or when every seed has the same value."""
    if stats is None or stats["mean"] is None:
        return "-"
    mean = format(stats["mean"] * scale, fmt)
    se = format(stats["se"] * scale, fmt.removeprefix("+")) if stats["se"] else None
    return mean if se is None else f"{mean} ± {se}"


def _si_pm(stats: dict[str, Any] | None) -> str:
    if stats is None or stats["mean"] is None:
        return "-"
    return si(stats["mean"]) if not stats["se"] else f"{si(stats['mean'])} ± {si(stats['se'])}"


def arm_rows(results: dict[str, Any]) -> Rows:
    with_loss = "val_loss" in results["metrics"]
    header = ["arm", "seeds", "final val acc %", "best val acc %"]
    header += ["final val loss", "best val loss"] if with_loss else []
    header += ["params", "inference FLOPs/sample", "training FLOPs", "validation + counterfactual FLOPs",
               "training FLOPs to reach (never)"]  # fmt: skip
    rows = []
    for arm, stats in results["arms"].items():
        row = [arm, str(len(stats["seeds"])), _pm(stats["final_val_accuracy"], ".2f", 100),
               _pm(stats["best_val_accuracy"], ".2f", 100)]  # fmt: skip
        if with_loss:
            row += [_pm(stats["final_val_loss"], ".4f"), _pm(stats["best_val_loss"], ".4f")]
        evaluation = stats["validation_flops"]["mean"] + stats["counterfactual_flops"]["mean"]
        reach = stats.get("training_flops_to_reach")
        row += [
            _pm(stats["params"], ",.0f"),
            _si_pm(stats["inference_flops_per_sample"]),
            _si_pm(stats["training_flops"]),
            si(evaluation),
            "-" if reach is None else f"{_si_pm(reach)} ({reach['never_reached']})",
        ]
        rows.append(row)
    return header, rows


def difference_rows(results: dict[str, Any]) -> Rows:
    with_loss = "val_loss" in results["metrics"]
    header = ["paired over seeds", "seeds", "final val acc (points)"] + (["final val loss"] if with_loss else [])
    rows = []
    for pair, measures in results["differences"].items():
        accuracy = measures["final_val_accuracy"]
        row = [pair, str(accuracy["n"]), _pm(accuracy, "+.2f", 100)]
        if with_loss:
            row.append(_pm(measures["final_val_loss"], "+.4f"))
        rows.append(row)
    for key, label in (("grown_training_flops_over_static_final", "grown training FLOPs / static-final's"),
                       ("policy_training_flops_over_grown", "policy training FLOPs / grown's"),
                       ("policy_training_flops_over_scheduled", "policy training FLOPs / scheduled's"),
                       ("grown_training_flops_over_static_reference", "grown training FLOPs / static-reference's"),
                       ("scheduled_training_flops_over_static_reference",
                        "scheduled training FLOPs / static-reference's")):  # fmt: skip
        fraction = results.get(key)
        if fraction is not None:
            rows.append([label, str(fraction["n"]), _pm(fraction, ".1f", 100) + " %"] + (["-"] if with_loss else []))
    return header, rows


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "missed"


def target_rows(results: dict[str, Any]) -> Rows:
    rows = []
    for target in results["targets"]:
        if target.get("metric") == "final_val_loss":
            numbers = f"{_pm(target['difference'], '+.4f')} nats"
        else:
            numbers = f"{_pm(target['difference'], '+.2f', 100)} points"
        verdict = _verdict(target["met"])
        if "training_flops_fraction" in target:
            numbers += f"; {_pm(target['training_flops_fraction'], '.1f', 100)} % of the FLOPs"
        if "aim_met" in target:
            verdict += f" (aim {target.get('aim', 0.5):.0%}: {_verdict(target['aim_met'])})"
        rows.append([target["target"], numbers, verdict])
    return ["target", "numbers (mean ± SE)", "verdict"], rows


def print_compare(results: dict[str, Any], console: Console) -> None:
    grower = "heuristic" if results["controller"] == "heuristic" else f"heuristic and policy {results['controller']}"
    title = (f"{results['task']}: {grower} growth vs static networks, "
             f"{results['epochs']} epochs, seeds {results['seeds'][0]}-{results['seeds'][-1]}")  # fmt: skip
    for caption, (header, rows) in (
        (title, arm_rows(results)),
        ("paired differences", difference_rows(results)),
        ("targets", target_rows(results)),
    ):
        table = Table(title=caption)
        # The first column names the row (an arm, a pair, a target): kept legible in a narrow terminal.
        names = min(24, max((len(row[0]) for row in rows), default=0))
        table.add_column(header[0], min_width=names)
        for column in header[1:]:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if results["status"] != "complete":
        console.print(f"incomplete: {results['runs_done']} of {results['runs_planned']} arm runs finished")
    for failure in results["failed"]:
        console.print(f"[red]not in the statistics:[/] {failure}", highlight=False)
