"""Depth operators head to head: a copy of a trained block against a zero-initialised one.

    PYTHONPATH=src python benchmarks/depth_operators.py --task mnist5k-tiny --seeds 500 501 502 503 504

Per task, two arms that differ only in the blueprint: the `schedule` controller with a
one-entry plan plants it in the same slot at the same epoch (everything else is the task's).
pydoc-chars-tiny: `stack` (the trained top block copied, issue 20 item 2) against `block`
(today's zero-initialised transformer block), judged on the final val loss (lower is better);
mnist5k-tiny: `deepen` (a conv starting as the identity) against `residual_block`, judged on
the final val accuracy. Prints one line per run, then per seed the paired difference
(operator - today's) and whether each seed was kept (fossilized), and the mean ± SE.
Evidence for docs/grow-the-host.md, not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from esper.jobs.compare_results import mean_se
from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import run_heuristic
from esper.nissa.run_folder import read_jsonl

# task: (slot, fraction of the run at which the seed is planted, metric, operator, today's blueprint)
PAIRS = {
    "pydoc-chars-tiny": ("layer1", 0.25, "val_loss", "stack", "block"),
    "mnist5k-tiny": ("block2", 0.2, "val_accuracy", "deepen", "residual_block"),
}


def one_run(task: str, seed: int, blueprint: str, out: Path) -> dict:
    slot, at, metric, _, _ = PAIRS[task]
    values = {"task": task, "seed": seed, "controller": "schedule", "schedule": [{"at": at, "slot": slot, "blueprint": blueprint}]}
    summary = run_heuristic(build_config(HeuristicRunConfig, values, {}, section="run"), out)
    final = read_jsonl(out / "metrics.jsonl")[-1]
    return {"task": task, "seed": seed, "blueprint": blueprint, metric: final[metric], "kept": bool(summary["architecture"]["slots"][slot])}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(PAIRS), default="mnist5k-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[500, 501, 502, 503, 504])
    args = parser.parse_args(argv)
    _, _, metric, operator, today = PAIRS[args.task]
    rows, differences = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            pair = {bp: one_run(args.task, seed, bp, Path(tmp) / f"{seed}-{bp}") for bp in (operator, today)}
            for row in pair.values():
                print(json.dumps(row), flush=True)
            difference = pair[operator][metric] - pair[today][metric]
            differences.append(difference)
            rows.append({"seed": seed, f"{operator} - {today}": difference, f"{operator} kept": pair[operator]["kept"], f"{today} kept": pair[today]["kept"]})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"task": args.task, "metric": f"final {metric}", "seeds": args.seeds, f"{operator} - {today}": mean_se(differences)}), flush=True)
    return rows


if __name__ == "__main__":
    main()
