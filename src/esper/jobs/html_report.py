"""`esper report`: one self-contained HTML page (plus PNG figures beside it) per set of runs.

The page has no scripts and no external resources, so it can be mailed,
archived or opened from a CI artifact as is; figures are referenced by
relative path, so the folder can be moved whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from esper import __version__
from esper.jobs import compare
from esper.jobs import report_figures as figures
from esper.jobs.compare_report import arm_rows, difference_rows, target_rows
from esper.jobs.report import format_architecture, format_flops
from esper.jobs.run_data import RunData, load_run
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import BlueprintAnalytics
from esper.nissa.run_folder import read_json
from esper.runtime import get_task

PAGE = "report.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em auto; padding: 0 1.5em; max-width: 1080px; color: #222; }
h1 { border-bottom: 2px solid #41ab5d; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
.missing { background: #fff4e5; border-left: 4px solid #fd8d3c; padding: .5em 1em; }
.absent { color: #888; font-style: italic; }
footer { margin-top: 3em; color: #888; font-size: .8em; }
"""

# Figures of a run, by the kind of metrics it holds: (file suffix, caption, builder).
FigureSpec = tuple[str, str, Callable[[RunData], Figure | None]]
_HEURISTIC_FIGURES: list[FigureSpec] = [
    ("accuracy", "Accuracy and loss per epoch", figures.accuracy_loss),
    (
        "accuracy-flops",
        "Accuracy and loss against the training FLOPs spent (host only dashed: equal compute)",
        functools.partial(figures.accuracy_loss, by="flops"),
    ),
    (
        "lifecycle",
        (
            "Seed lifecycle per slot: its seeds one after another (stage bands, alpha), "
            "germinate / fossilize / cull, and the fossils in the slot's stack"
        ),
        figures.lifecycle,
    ),
    ("params", "Parameters over time", figures.parameters),
]
_PPO_FIGURES: list[FigureSpec] = [
    ("ppo", "PPO training per round", figures.ppo_curves),
    ("rewards", "Reward components per round", figures.reward_components),
    ("actions", "Action frequencies per round", figures.action_frequencies),
]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig: Figure | None, out: Path, name: str, caption: str) -> str:
    """Save ``fig`` as ``out/name`` and return its HTML, or a note when there was nothing to plot."""
    if fig is None:
        return f'<p class="absent">{escape(caption)}: no data in this run.</p>'
    figures.save_png(fig, out / name)
    return f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _analytics(run: RunData) -> BlueprintAnalytics:
    analytics = BlueprintAnalytics()
    for record in run.events:
        analytics.handle(TelemetryEvent.from_dict(record))
    return analytics


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _seed_counts(run: RunData) -> str:
    per_blueprint = _analytics(run).summary().values()
    return " / ".join(
        str(sum(b[k] for b in per_blueprint)) for k in ("germinated", "fossilized", "culled")
    )


def _epochs_only(measure: Callable[[RunData], Any]) -> Callable[[RunData], Any]:
    """A measure read from a grown run's lifecycle events; PPO runs do not log those."""
    return lambda run: measure(run) if run.step_key == "epoch" else "-"


def _inference_flops(run: RunData) -> float | None:
    if run.summary is not None and run.summary.get("flops") is not None:
        return run.summary["flops"]["inference_per_sample"]
    return next((m["flops"]["inference_per_sample"] for m in reversed(run.metrics) if m.get("flops")), None)


def _architecture(run: RunData) -> str:
    """Each slot's stack, from the summary (or, for an unfinished run, the last epoch's line)."""
    if run.summary is not None and "architecture" in run.summary:
        return format_architecture(run.summary["architecture"]["slots"])
    last = next((m["fossils"] for m in reversed(run.metrics) if "fossils" in m), None)
    if last is None:
        return "-"
    return format_architecture({slot: [f["blueprint_id"] for f in stack] for slot, stack in last.items()})


def _summary_rows(runs: list[RunData]) -> list[list[Any]]:
    """Measures down, runs across: one column per run, for side-by-side reading."""
    rollback = TelemetryEventType.GOVERNOR_ROLLBACK.value
    measures: list[tuple[str, Callable[[RunData], Any]]] = [
        ("task", lambda r: r.task),
        ("mode", lambda r: r.mode),
        ("status", lambda r: r.status),
        (
            "done / planned",
            lambda r: f"{r.done} / {'?' if r.planned is None else r.planned} {r.step_key}s",
        ),
        ("final val accuracy", lambda r: _pct(r.final_accuracy)),
        (
            "final val accuracy (host only)",
            lambda r: _pct(r.baseline and r.baseline["final_val_accuracy"]),
        ),
        ("best val accuracy", lambda r: _pct(max(r.series("val_accuracy")[1], default=None))),
        ("host params", lambda r: _count(r.final("host_params"))),
        ("params added by seeds", lambda r: _count(r.params_added)),
        ("training FLOPs", lambda r: format_flops(r.training_flops)),
        ("inference FLOPs per sample", lambda r: format_flops(_inference_flops(r))),
        ("fossils per slot", _epochs_only(_architecture)),
        ("seeds germinated / fossilized / culled", _epochs_only(_seed_counts)),
        (
            "governor rollbacks",
            _epochs_only(lambda r: sum(e["event_type"] == rollback for e in r.events)),
        ),
        (
            "final mean return",
            lambda r: "-" if r.final("return") is None else f"{r.final('return'):.4f}",
        ),
    ]
    rows = [[label, *(measure(run) for run in runs)] for label, measure in measures]
    # A measure no run has (accuracy for PPO runs, return for heuristic ones) is left out.
    return [row for row in rows if any(cell != "-" for cell in row[1:])]


def _blueprint_table(run: RunData) -> str:
    summary = _analytics(run).summary()
    if not summary:
        return '<p class="absent">No seed was germinated in this run.</p>'
    rows = [
        [
            name,
            stats["germinated"],
            stats["fossilized"],
            stats["culled"],
            "-" if stats["mean_contribution"] is None else f"{stats['mean_contribution']:+.4f}",
            f"{stats['params_added']:,}",
        ]
        for name, stats in summary.items()
    ]
    header = [
        "blueprint",
        "germinated",
        "fossilized",
        "culled",
        "mean contribution (fossilized)",
        "params added",
    ]
    return "<h3>Per blueprint</h3>" + _table(header, rows)


def _run_section(run: RunData, out: Path, prefix: str, with_summary: bool) -> str:
    parts = [f"<h2>{escape(run.name)}</h2>", f"<p><code>{escape(str(run.path))}</code></p>"]
    if run.missing:
        notes = "".join(f"<li>{escape(note)}</li>" for note in run.missing)
        parts.append(f'<div class="missing"><strong>Incomplete run.</strong><ul>{notes}</ul></div>')
    if with_summary:
        parts.append(_table(["measure", run.name], _summary_rows([run])))
    specs = _PPO_FIGURES if run.step_key == "round" else _HEURISTIC_FIGURES
    parts += [
        _figure(build(run), out, f"{prefix}{suffix}.png", caption)
        for suffix, caption, build in specs
    ]
    if run.step_key == "epoch":
        parts.append(_blueprint_table(run))
    return "\n".join(parts)


def _comparison_section(runs: list[RunData], out: Path) -> str:
    return "\n".join(
        [
            "<h2>Comparison</h2>",
            _table(["measure", *(run.name for run in runs)], _summary_rows(runs)),
            _figure(figures.comparison(runs), out, "comparison.png", "Runs overlaid"),
            _figure(
                figures.growth_decisions(
                    {f"run {i}: {run.name}": [run] for i, run in enumerate(runs, start=1) if run.step_key == "epoch"}
                ),
                out, "decisions.png", "Where, what and when each run grew, and what became of its seeds",
            ),
        ]
    )


def default_out(run_dirs: list[Path]) -> Path:
    """RUN_DIR/report for one run, ./report for several."""
    return run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report")


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write report.html and its figures into ``out``; returns the page's path.

    Every folder is loaded before anything is written, so a wrong path fails
    fast with the loader's message and leaves no half-made report behind. A
    folder of `esper compare` gets its own page (`_compare_sections`).
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    if any(compare.is_compare_folder(path) for path in run_dirs):
        if len(run_dirs) > 1:
            raise ValueError("an `esper compare` folder is reported on its own: give it alone")
        return _compare_page(run_dirs[0], out)
    runs = [load_run(path) for path in run_dirs]
    out = default_out(run_dirs) if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    several = len(runs) > 1
    sections = [_comparison_section(runs, out)] if several else []
    sections += [
        _run_section(run, out, f"run{index}-" if several else "", with_summary=not several)
        for index, run in enumerate(runs, start=1)
    ]
    return _write_page(out, "Esper report: " + ", ".join(run.name for run in runs), sections)


def _compare_page(path: Path, out: Path | None) -> Path:
    folder = compare.CompareFolder(path)
    config = folder.saved_config()
    arms = compare.planned_arms(config)
    results = read_json(folder.results_path) if folder.results_path.exists() else None
    out = default_out([path]) if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    sections = _compare_sections(folder, config, arms, results)
    built = compare.build_figures(compare.collect(folder, config, arms), config)
    sections += [_figure(fig, out, name, compare.FIGURES[name]) for name, fig in built.items()]
    growers = {"heuristic": "grown", "schedule": "scheduled", f"policy {Path(config.controller).parent.name}": "policy"}
    grown = {name: [load_run(folder.run_path(seed, arm)) for seed in config.seed_list
                    if compare.arm_state(folder.run_path(seed, arm)) == "complete"]
             for name, arm in growers.items() if arm in arms}  # fmt: skip
    caption = f"Where, what and when {' and '.join(grown) or 'the controller'} grew (all seeds)"
    sections.append(_figure(figures.growth_decisions(grown), out, "decisions.png", caption))
    sections.append(_arm_runs_section(folder, config, arms))
    return _write_page(out, f"Esper compare: {config.task} ({path.resolve().name})", sections)


def _compare_sections(
    folder: compare.CompareFolder,
    config: compare.CompareConfig,
    arms: list[str],
    results: dict[str, Any] | None,
) -> list[str]:
    """Settings, the arms' statistics, the paired differences and the targets."""
    seeds = config.seed_list
    facts = [
        ["task", config.task],
        ["controller", config.controller],
        ["epochs", str(config.epochs or get_task(config.task).epochs)],
        ["seeds", f"{seeds[0]}-{seeds[-1]} ({len(seeds)})"],
        ["arms", ", ".join(arms)],
    ]
    if results is not None:
        facts.append(["arm runs finished", f"{results['runs_done']} of {results['runs_planned']}"])
        facts.append(["wall time", f"{results['wall_seconds'] / 60:.1f} min"])
    parts = ["<h2>Compare</h2>", _table(["setting", "value"], facts)]
    if results is None or results["status"] != "complete":
        parts.append(
            '<div class="missing"><strong>Incomplete compare.</strong> Continue it with '
            f"<code>esper compare --resume {escape(str(folder.path))}</code>.</div>"
        )
    if results is None:
        return parts
    if results["failed"]:
        items = "".join(f"<li>{escape(failure)}</li>" for failure in results["failed"])
        parts.append(f'<div class="missing"><strong>Not in the statistics:</strong><ul>{items}</ul></div>')
    for heading, (header, rows) in (
        ("Arms (mean ± SE over seeds)", arm_rows(results)),
        ("Grown against the others (paired by seed)", difference_rows(results)),
        ("Targets", target_rows(results)),
    ):
        parts += [f"<h2>{escape(heading)}</h2>", _table(header, rows)]
    threshold = results["reach"]["threshold"]
    if threshold is not None:
        parts.append(
            f"<p>Training FLOPs to reach: until the first epoch at {100 * threshold:.2f}% val "
            "accuracy or more (99% of static-final's final, mean over seeds); in brackets the "
            "seeds that never reached it.</p>"
        )
    return parts


def _arm_runs_section(folder: compare.CompareFolder, config: compare.CompareConfig, arms: list[str]) -> str:
    """Each seed's arm runs and their state; each is a run folder of its own."""
    rows = [
        [f"seed {seed}", *(compare.arm_state(folder.run_path(seed, arm)) for arm in arms)]
        for seed in config.seed_list
    ]
    example = escape(str(folder.run_path(config.seed_list[0], "grown")))
    note = f"<p>Each arm run is a run folder with a report of its own: <code>esper report {example}</code>.</p>"
    return "<h2>Arm runs</h2>" + _table(["seed", *arms], rows) + note


def _write_page(out: Path, title: str, sections: list[str]) -> Path:
    stamp = datetime.now().isoformat(timespec="seconds")
    page = out / PAGE
    page.write_text(
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{escape(title)}</h1>\n"
        + "\n".join(sections)
        + f"\n<footer>Made by esper {escape(__version__)} on {stamp}.</footer>\n</body></html>\n",
        encoding="utf-8",
    )
    return page
