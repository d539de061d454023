"""The figures of `esper compare`: each arm's metric against training compute and against size.

Built like every report figure (`report_figures`): the object API on an Agg canvas, never
pyplot; a function returns None when there is nothing to plot yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from esper.jobs.compare_results import REACH_FRACTION, ArmRun, mean_se

ARM_COLOURS = {
    "host-only": "#969696",
    "grown": "#238b45",
    "policy": "#6a51a3",
    "static-final": "#2171b5",
    "static-final-matched": "#6baed6",
    "scheduled": "#cb181d",
    "static-reference": "#d94801",
    "static-reference-matched": "#fd8d3c",
}
# Arms that share a size (grown, static-final, static-final-matched) stay apart by marker.
ARM_MARKERS = {"host-only": "o", "grown": "o", "policy": "v", "static-final": "s", "static-final-matched": "D",
               "scheduled": "P", "static-reference": "^", "static-reference-matched": "<"}  # fmt: skip
METRIC_LABELS = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}
GRID_POINTS = 200


def _series(run: ArmRun, metric: str) -> list[float]:
    return run.val_accuracy if metric == "val_accuracy" else run.val_loss


def mean_curve(runs: Sequence[ArmRun], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FLOPs grid, mean, SE) of `metric` over seeds, each seed's curve interpolated linearly
    on a common grid of cumulative training FLOPs: from where the last seed's first epoch
    ends to where the first seed's run ends (the range every seed covers), log-spaced."""
    xs = [np.asarray(run.cumulative_training_flops, dtype=float) for run in runs]
    ys = [np.asarray(_series(run, metric), dtype=float) for run in runs]
    low, high = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.geomspace(low, high, GRID_POINTS) if 0 < low < high else np.array([high])
    curves = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)])
    se = curves.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(grid)
    return grid, curves.mean(axis=0), se


def _mean_se(values: list[float]) -> tuple[float, float]:
    """compare.json's mean ± SE, as numbers to draw (no SE with one seed: no error bar)."""
    stats = mean_se(values)
    return stats["mean"], stats["se"] or 0.0


def _panels(
    runs: Mapping[str, Sequence[ArmRun]], metrics: Sequence[str]
) -> tuple[dict[str, Sequence[ArmRun]], Figure | None, list[tuple[Axes, str]]]:
    """The arms with finished runs, and a figure with one panel per metric (no figure and no
    panels when no arm has a run yet)."""
    present = {arm: arm_runs for arm, arm_runs in runs.items() if arm_runs}
    if not present:
        return present, None, []
    fig = Figure(figsize=(6 * len(metrics), 4.2), layout="constrained")
    return present, fig, list(zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True))


def metric_against_flops(runs: Mapping[str, Sequence[ArmRun]], metrics: Sequence[str]) -> Figure | None:
    """Each arm's metric against cumulative training FLOPs: mean over seeds with a ±SE band."""
    present, fig, panels = _panels(runs, metrics)
    for ax, metric in panels:
        for arm, arm_runs in present.items():
            grid, mean, se = mean_curve(arm_runs, metric)
            colour = ARM_COLOURS.get(arm)
            label = f"{arm} (n={len(arm_runs)})"
            if len(grid) == 1:
                ax.errorbar(grid, mean, yerr=se, fmt="o", color=colour, label=label)
                continue
            ax.plot(grid, mean, color=colour, label=label)
            ax.fill_between(grid, mean - se, mean + se, color=colour, alpha=0.2, linewidth=0)
        goal = "static-reference" if present.get("static-reference") else "static-final"
        if metric == "val_accuracy" and present.get(goal):
            final, _ = _mean_se([run.val_accuracy[-1] for run in present[goal]])
            ax.axhline(REACH_FRACTION * final, color=ARM_COLOURS[goal], linestyle=":",
                       linewidth=1, label=f"{REACH_FRACTION:.0%} of {goal}'s final")  # fmt: skip
        _style(ax, "cumulative training FLOPs", METRIC_LABELS[metric])
        ax.set_xscale("log")
    return fig


def metric_against_params(runs: Mapping[str, Sequence[ArmRun]], metrics: Sequence[str]) -> Figure | None:
    """Each arm's final metric against its parameters: mean ± SE over seeds on both axes."""
    present, fig, panels = _panels(runs, metrics)
    for ax, metric in panels:
        for arm, arm_runs in present.items():
            params, params_se = _mean_se([float(run.params) for run in arm_runs])
            final, final_se = _mean_se([_series(run, metric)[-1] for run in arm_runs])
            ax.errorbar([params], [final], xerr=[params_se], yerr=[final_se], fmt=ARM_MARKERS.get(arm, "o"),
                        capsize=4, markersize=7, color=ARM_COLOURS.get(arm), alpha=0.85,
                        label=f"{arm} (n={len(arm_runs)})")  # fmt: skip
        _style(ax, "parameters", f"final {METRIC_LABELS[metric]}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    return fig


def _style(ax: Axes, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
