"""Matplotlib figures of a run: what grew, when, and what it was worth.

Figures are built with the object API on an Agg canvas (never pyplot), so
reports render headless and leave no global plotting state behind. Every
function returns ``None`` when the run holds no data for its figure, and the
page says so instead of showing an empty plot.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from esper.jobs.run_data import RunData
from esper.leyline import FAILURE_STAGES, SeedLedger, SeedStage, TelemetryEventType

STAGE_COLOURS = {
    "GERMINATED": "#c6dbef",
    "TRAINING": "#6baed6",
    "BLENDING": "#9e9ac8",
    "SHADOWING": "#fdae6b",
    "PROBATIONARY": "#fdd049",
    "FOSSILIZED": "#74c476",
    "CULLED": "#fb6a4a",
    "EMBARGOED": "#bdbdbd",
    "RESETTING": "#e0e0e0",
}

STACK_COLOUR = "#006d2c"

# Lifecycle events marked on the swimlane: (marker, colour, legend label).
EVENT_MARKERS = {
    TelemetryEventType.SEED_GERMINATED.value: ("^", "#08519c", "germinate"),
    TelemetryEventType.SEED_FOSSILIZED.value: ("*", "#006d2c", "fossilize"),
    TelemetryEventType.SEED_CULLED.value: ("X", "#a50f15", "cull"),
}

# PPO training curves, in display order: metrics key -> title.
PPO_CURVES = {
    "return": "mean episode return",
    "final_val_accuracy": "episode final val accuracy",
    "params_added": "params added per episode",
    "entropy": "policy entropy",
    "approx_kl": "approx. KL",
    "explained_variance": "explained variance",
    "policy_loss": "policy loss",
    "value_loss": "value loss",
    "clip_fraction": "clip fraction",
}


def save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to a PNG at ``path`` through the Agg canvas."""
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def _axes_grid(count: int, columns: int = 2, row_height: float = 3.0) -> tuple[Figure, list[Axes]]:
    rows = -(-count // columns)
    fig = Figure(figsize=(10, row_height * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for spare in axes[count:]:
        spare.set_visible(False)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and rounds are whole
    return fig, axes[:count]


def _germination_epochs(run: RunData) -> list[int]:
    return [
        e["epoch"]
        for e in run.events
        if e["event_type"] == TelemetryEventType.SEED_GERMINATED.value
    ]


# The x axes a run's curves can be drawn against: epochs, or the training FLOPs spent so far.
X_AXES = {"epoch": "epoch", "flops": "cumulative training FLOPs"}


def _series(run: RunData, key: str, by: str) -> tuple[list[Any], list[Any]]:
    return run.series(key) if by == "epoch" else run.series_by_flops(key)


def _host_only_curve(run: RunData, by: str) -> tuple[list[Any], list[float]] | None:
    """The baseline's val accuracy against `by` (None when the run has no baseline, or one
    without FLOPs and the axis is FLOPs)."""
    if run.baseline is None:
        return None
    host_only = run.baseline["val_accuracy"]
    if by == "epoch":
        return list(range(len(host_only))), host_only
    spent = run.baseline.get("cumulative_training_flops")
    if spent is None or None in spent:  # a model whose FLOPs could not be counted
        return None
    return spent, host_only


def accuracy_loss(run: RunData, by: str = "epoch") -> Figure | None:
    """Accuracy and loss per epoch, or against the training FLOPs spent (`by="flops"`), so a
    grown run and its host-only baseline (dashed) compare at equal compute too."""
    steps, val_acc = _series(run, "val_accuracy", by)
    if not steps:
        return None
    xlabel = X_AXES[by]
    fig, (acc, loss) = _axes_grid(2)
    acc.plot(*_series(run, "train_accuracy", by), color="C0", alpha=0.4, lw=1, label="train (grown)")
    acc.plot(steps, val_acc, color="C0", lw=2, label="val (grown)")
    host_only = _host_only_curve(run, by)
    if host_only is not None:
        acc.plot(*host_only, color="0.35", ls="--", lw=1.5, label="val (host only)")
    at = {epoch: epoch for epoch in steps} if by == "epoch" else _flops_at_epoch(run)
    for epoch in _germination_epochs(run):
        if epoch in at:
            acc.axvline(at[epoch], color="#08519c", ls=":", lw=1)
    acc.set(title="accuracy (dotted: germinations)", xlabel=xlabel, ylabel="accuracy")
    acc.legend(loc="lower right", fontsize="small")
    loss.plot(*_series(run, "train_loss", by), color="C1", alpha=0.6, label="train")
    loss.plot(*_series(run, "val_loss", by), color="C1", lw=2, label="val")
    loss.set(title="loss", xlabel=xlabel, ylabel="loss", yscale="log")
    loss.legend(fontsize="small")
    if by == "flops":
        for ax in (acc, loss):
            ax.xaxis.set_major_locator(MaxNLocator())  # FLOPs are not whole epochs
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    return fig


def _flops_at_epoch(run: RunData) -> dict[int, float]:
    """Epoch -> cumulative training FLOPs at its end."""
    return {m["epoch"]: m["flops"]["cumulative_training"] for m in run.metrics if m.get("flops")}


def _slot_ids(run: RunData) -> list[str]:
    """Slots in order of first appearance in the metrics, then any only named by events."""
    seen = dict.fromkeys(slot for m in run.metrics for slot in m.get("slots", {}))
    seen.update(dict.fromkeys(e["slot_id"] for e in run.events if e["event_type"] in EVENT_MARKERS))
    return list(seen)


def _slot_report(record: dict[str, Any], slot_id: str) -> dict[str, Any] | None:
    """The seed report of ``slot_id`` in one metrics record; None for an empty slot."""
    return (record.get("slots") or {}).get(slot_id)


def _blended_alpha(report: dict[str, Any] | None) -> float:
    """Alpha that reaches the output: none from an empty slot or a culled seed (whose
    report keeps its last alpha through embargo)."""
    if report is None or SeedStage[report["stage"]] in FAILURE_STAGES:
        return 0.0
    return report["alpha"]


def _stack_depth(record: dict[str, Any], slot_id: str) -> int:
    """How many fossils ``slot_id``'s stack holds in one metrics record."""
    return len((record.get("fossils") or {}).get(slot_id, []))


def _seed_and_stage(report: dict[str, Any] | None) -> tuple[str | None, str | None]:
    return (None, None) if report is None else (report["seed_id"], report["stage"])


def _draw_lane(ax: Axes, run: RunData, slot_id: str) -> None:
    """One slot's seeds one after another: a band per seed and stage, its alpha, lifecycle
    markers (a star where a seed is fossilized into the slot's stack), and the stack's depth."""
    reports = [(m["epoch"], _slot_report(m, slot_id)) for m in run.metrics]
    # Consecutive epochs of the same seed in the same stage form one band.
    for (_, stage), group in groupby(reports, key=lambda item: _seed_and_stage(item[1])):
        span = [epoch for epoch, _ in group]
        if stage in STAGE_COLOURS:
            ax.axvspan(span[0] - 0.5, span[-1] + 0.5, color=STAGE_COLOURS[stage], alpha=0.8, lw=0)
    ax.step(
        [epoch for epoch, _ in reports],
        [_blended_alpha(report) for _, report in reports],
        where="mid",
        color="black",
        lw=1.5,
    )
    for event in run.events:
        style = EVENT_MARKERS.get(event["event_type"])
        if style is None or event["slot_id"] != slot_id:
            continue
        marker, colour, _ = style
        ax.plot(event["epoch"], 1.12, marker=marker, color=colour, ms=9, clip_on=False)
        ax.annotate(
            event["blueprint_id"] or "",
            (event["epoch"], 1.12),
            xytext=(5, 3),
            textcoords="offset points",
            fontsize="small",
            color=colour,
        )
    ax.set_ylim(-0.05, 1.3)
    ax.set_yticks([0, 0.5, 1])
    ax.set_ylabel(f"{slot_id}\nalpha")
    depths = [_stack_depth(m, slot_id) for m in run.metrics]
    if any(depths):
        stack = ax.twinx()
        stack.step([m["epoch"] for m in run.metrics], depths, where="mid", color=STACK_COLOUR, ls="--", lw=1.5)
        stack.set_ylim(-0.05 * max(depths), 1.3 * max(depths))
        stack.yaxis.set_major_locator(MaxNLocator(integer=True))
        stack.set_ylabel("fossils", color=STACK_COLOUR)


def lifecycle(run: RunData) -> Figure | None:
    """One swimlane per slot: stage as coloured bands, alpha as a line, lifecycle markers."""
    slots = _slot_ids(run)
    if not slots or not run.metrics:
        return None
    fig = Figure(figsize=(10, 1.6 * len(slots) + 1.2), layout="constrained")
    lanes = fig.subplots(len(slots), 1, sharex=True, squeeze=False)[:, 0]
    for ax, slot_id in zip(lanes, slots, strict=True):
        _draw_lane(ax, run, slot_id)
    lanes[-1].set_xlabel("epoch")
    lanes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    lanes[-1].set_xlim(run.metrics[0]["epoch"] - 0.5, run.metrics[-1]["epoch"] + 0.5)
    handles = [Patch(color=colour, label=stage.lower()) for stage, colour in STAGE_COLOURS.items()]
    handles.append(Line2D([], [], color="black", label="alpha"))
    handles.append(Line2D([], [], color=STACK_COLOUR, ls="--", label="fossils in the stack"))
    handles += [
        Line2D([], [], marker=marker, color=colour, ls="", label=label)
        for marker, colour, label in EVENT_MARKERS.values()
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=7, fontsize="small")
    return fig


def parameters(run: RunData) -> Figure | None:
    """Total parameters against the host's, and what each slot's seed adds: the price of growth."""
    epochs, host = run.series("host_params")
    if not epochs:
        return None
    _, seeds = run.series("seed_params")
    slots = _slot_ids(run)
    fig, axes = _axes_grid(2 if slots else 1)
    total = axes[0]
    total.plot(epochs, host, color="#6baed6", ls="--", label="host")
    total.plot(
        epochs,
        [h + s for h, s in zip(host, seeds, strict=True)],
        color="#238b45",
        label="host + seeds",
    )
    total.set(title="parameters", xlabel="epoch", ylabel="parameters")
    total.legend(fontsize="small")
    if not slots:
        return fig
    per_slot = axes[1]
    added = [
        [
            (_slot_report(m, slot) or {}).get("params", 0)
            + sum(f["params"] for f in (m.get("fossils") or {}).get(slot, []))
            for m in run.metrics
        ]
        for slot in slots
    ]
    per_slot.stackplot([m["epoch"] for m in run.metrics], added, labels=slots)
    per_slot.set(title="parameters added per slot (stack and live seed)", xlabel="epoch", ylabel="parameters")
    per_slot.legend(loc="upper left", fontsize="small")
    return fig


def ppo_curves(run: RunData) -> Figure | None:
    """The PPO diagnostics present in the metrics, one panel each, per round."""
    present = {key: title for key, title in PPO_CURVES.items() if run.series(key)[0]}
    if not present:
        return None
    fig, axes = _axes_grid(len(present), columns=3, row_height=2.6)
    for ax, (key, title) in zip(axes, present.items(), strict=True):
        ax.plot(*run.series(key), lw=1.5)
        ax.set(title=title, xlabel="round")
    return fig


def reward_components(run: RunData) -> Figure | None:
    """Each reward term per round, so a term that dominates (or games) the reward shows."""
    rounds, components = run.series("rewards")
    names = list(dict.fromkeys(name for terms in components for name in terms))
    if not names:
        return None
    fig, (ax,) = _axes_grid(1, columns=1)
    for name in names:
        ax.plot(rounds, [terms.get(name, 0.0) for terms in components], label=name)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(title="reward components", xlabel="round", ylabel="reward")
    ax.legend(fontsize="small")
    return fig


def _counts_by_kind(actions: dict[str, float]) -> dict[str, float]:
    """``{"GERMINATE block2 norm": n, ...}`` summed by action kind (the first word)."""
    kinds: dict[str, float] = {}
    for action, count in actions.items():
        kind = action.split()[0]
        kinds[kind] = kinds.get(kind, 0.0) + count
    return kinds


def action_frequencies(run: RunData) -> Figure | None:
    """Share of each action kind per round, stacked: what the controller learned to do."""
    rounds, per_round = run.series("actions")
    counts = [_counts_by_kind(actions) for actions in per_round]
    kinds = list(dict.fromkeys(kind for c in counts for kind in c))
    if not kinds:
        return None
    totals = [sum(c.values()) or 1 for c in counts]
    shares = [[c.get(kind, 0) / t for c, t in zip(counts, totals, strict=True)] for kind in kinds]
    fig, (ax,) = _axes_grid(1, columns=1)
    ax.stackplot(rounds, shares, labels=kinds)
    ax.set(title="action frequencies", xlabel="round", ylabel="share of actions", ylim=(0, 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


# Curves overlaid when comparing runs: (metrics key, x axis) -> (title, x label, y label).
COMPARED = {
    ("val_accuracy", "epoch"): ("validation accuracy (dashed: host only)", "epoch", "accuracy"),
    ("val_accuracy", "flops"): ("validation accuracy at equal compute", X_AXES["flops"], "accuracy"),
    ("seed_params", "epoch"): ("parameters added by seeds", "epoch", "parameters"),
    ("return", "epoch"): ("mean episode return", "round", "return"),
}


def comparison(runs: list[RunData]) -> Figure | None:
    """Several runs overlaid, one colour per run, for the curves any of them has."""
    present = [(key, by) for key, by in COMPARED if any(_series(run, key, by)[0] for run in runs)]
    if not present:
        return None
    fig, axes = _axes_grid(len(present), columns=min(2, len(present)))
    for ax, (key, by) in zip(axes, present, strict=True):
        for index, run in enumerate(runs):
            steps, values = _series(run, key, by)
            if not steps:
                continue
            colour = f"C{index % 10}"
            ax.plot(steps, values, color=colour, lw=1.5, label=run.name)
            host_only = _host_only_curve(run, by) if key == "val_accuracy" else None
            if host_only is not None:
                ax.plot(*host_only, color=colour, ls="--", lw=1)
        title, xlabel, ylabel = COMPARED[key, by]
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if by == "flops":
            ax.xaxis.set_major_locator(MaxNLocator())
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.legend(fontsize="small")
    return fig


# What became of a planted seed, in the decisions figure.
OUTCOME_COLOURS = {"fossilized": "C2", "culled": "C3", "live at the end": "C0"}


def planted_seeds(run: RunData) -> list[tuple[int, str, str, str]]:
    """(germination epoch, slot, blueprint, outcome) of every seed the run planted, from its
    lifecycle events (outcome: fossilized, culled, or live at the end)."""
    ledger = SeedLedger()
    for event in run.events:
        ledger.record_event(event)
    return [(s.epoch, s.slot_id, s.blueprint_id, s.fate or "live at the end") for s in ledger.seeds.values()]


def growth_decisions(groups: dict[str, list[RunData]]) -> Figure | None:
    """Where, what and when each group of runs grows (a group: one controller's runs, e.g. a
    compare's grown arm over its seeds): seeds planted per run by germination epoch, by slot and
    by blueprint, each bar split by what became of the seeds."""
    planted = {name: [seed for run in runs for seed in planted_seeds(run)] for name, runs in groups.items()}
    planted = {name: seeds for name, seeds in planted.items() if seeds}
    if not planted:
        return None
    fig = Figure(figsize=(12, 2.8 * len(planted)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(planted), 3, squeeze=False)
    columns = ((0, "when: germination epoch"), (1, "where: slot"), (2, "what: blueprint"))
    for row, (name, seeds) in zip(axes, planted.items(), strict=True):
        per_run = 1 / len(groups[name])
        for ax, (column, title) in zip(row, columns, strict=True):
            categories = sorted({seed[column] for seed in seeds})
            # Epochs on a numeric axis (gaps show), slots and blueprints as labelled bars.
            positions = categories if column == 0 else [str(c) for c in categories]
            bottom = [0.0] * len(categories)
            for outcome, colour in OUTCOME_COLOURS.items():
                heights = [per_run * sum(1 for s in seeds if s[column] == c and s[3] == outcome) for c in categories]
                ax.bar(positions, heights, bottom=bottom, color=colour, label=outcome)
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
            ax.set_title(title, fontsize="medium")
            ax.tick_params(axis="x", labelsize="small")
        row[0].set_ylabel(f"{name}\nseeds per run")
        row[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = [seed[0] for seeds in planted.values() for seed in seeds]
    for row in axes:  # one time axis for every group
        row[0].set_xlim(min(epochs) - 1, max(epochs) + 1)
    axes[0][0].legend(fontsize="small")
    return fig
