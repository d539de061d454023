"""Reproduce the README's results table: grown vs host-only on the embedded tasks.

    .venv/bin/python scripts/results_table.py [--tasks digits mnist5k] [--seeds 0 1 2] [--out runs/results]

Each (task, seed) is a real `esper train heuristic --baseline` run; the table
reports mean ± std over seeds of final and best validation accuracy, and the
training FLOPs each arm spent (mean over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
from pathlib import Path

from esper.cli import main as esper
from esper.jobs.report import format_flops


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def _baseline_flops(run_dir: Path) -> float:
    """The training FLOPs the run's host-only baseline spent."""
    return json.loads((run_dir / "baseline.json").read_text())["cumulative_training_flops"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "mnist5k", "mnist5k-tiny", "mnist5k-mlp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/results")
    args = parser.parse_args()
    rows = ["| task | epochs | seeds | host-only final acc % | grown final acc % | grown best acc % | params added (host params) | germinated / fossilized / culled | training FLOPs grown / host only |",
            "|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        summaries = []
        for seed in args.seeds:
            run_dir = Path(args.out) / f"{task}-seed{seed}"
            argv = ["train", "heuristic", "--task", task, "--seed", str(seed), "--baseline", "--quiet"]
            argv += ["--resume", str(run_dir)] if (run_dir / "config.json").exists() else ["--run-dir", str(run_dir)]
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                code = esper(argv)
            if code != 0:
                raise SystemExit(f"run {run_dir} failed:\n{log.getvalue()}")
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
        seeds = [sum(s["seeds"][k] for s in summaries) for k in ("germinated", "fossilized", "culled")]
        added = statistics.mean(s["params_added"] for s in summaries)
        rows.append(
            f"| {task} | {summaries[0]['epochs']} | {len(summaries)} "
            f"| {_mean_std([s['host_only_val_accuracy'] for s in summaries])} "
            f"| {_mean_std([s['final_val_accuracy'] for s in summaries])} "
            f"| {_mean_std([s['best_val_accuracy'] for s in summaries])} "
            f"| {added:.0f} ({summaries[0]['host_params']:,}) | {' / '.join(map(str, seeds))} "
            f"| {format_flops(statistics.mean(s['flops']['training'] for s in summaries))} / "
            f"{format_flops(statistics.mean(_baseline_flops(run_dir.parent / f'{task}-seed{seed}') for seed in args.seeds))} |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
