"""The spread of a task's static reference over seeds, with and without a learning-rate warmup.

    PYTHONPATH=src python benchmarks/reference_spread.py --task pydoc-chars-tiny \
        --first-seed 300 --seeds 10 --warmup 0 0.05 [--stop-after 2]

Each run is `esper compare`'s `static-reference` arm (`jobs.compare.arm_config`, built by
`jobs.heuristic.prepare_run`, its epochs run as the job runs them, without a run folder), with
the run-config key `lr_warmup` set (0: none). `--stop-after N` ends each run after its first N
epochs of the planned ones (the schedule still spans the whole plan): the early picture, where
an unlucky seed sits on the unigram plateau. Prints one line per run and, per warmup, the spread
of the last epoch's val accuracy and loss and of epoch 0's over the seeds: mean, SE, sd, range.
Evidence for docs, not a test: an epoch of pydoc-chars-tiny's 5-layer reference is ~50 s on a
lightly loaded 2-core machine, a whole run ~17 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from esper.jobs.compare import CompareConfig, arm_config
from esper.jobs.compare_results import mean_se
from esper.jobs.heuristic import prepare_run
from esper.tolaria import EpochLoop


def reference_run(task: str, seed: int, warmup: float, stop_after: int | None) -> dict:
    """One static-reference run (its first `stop_after` epochs); its per-epoch metrics."""
    config = arm_config(CompareConfig(task=task, run={"lr_warmup": warmup}), "static-reference", seed, None)
    prepared = prepare_run(config)
    loop = EpochLoop(prepared.trainer, prepared.epochs)
    metrics = []
    result = loop.start()
    while result is not None and len(metrics) < (stop_after or prepared.epochs):
        metrics.append(dataclasses.asdict(result.record))
        result = None if len(metrics) == stop_after else loop.step(prepared.controller.decide(result.signals))
    return {
        "warmup": warmup,
        "seed": seed,
        "epochs": len(metrics),
        "last_val_accuracy": metrics[-1]["val_accuracy"],
        "last_val_loss": metrics[-1]["val_loss"],
        "epoch0_train_loss": metrics[0]["train_loss"],
        "epoch0_val_accuracy": metrics[0]["val_accuracy"],
        "val_accuracy": [round(m["val_accuracy"], 4) for m in metrics],
    }


def spread(values: list[float]) -> dict:
    stats = mean_se(values)
    sd = stats["se"] * math.sqrt(stats["n"]) if stats["se"] is not None else None
    return {"mean": stats["mean"], "se": stats["se"], "sd": sd, "min": min(values), "max": max(values), "n": stats["n"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pydoc-chars-tiny")
    parser.add_argument("--first-seed", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--warmup", type=float, nargs="+", default=[0.0], help="lr_warmup values (fractions of the run)")
    parser.add_argument("--stop-after", type=int, default=None, help="epochs to run of the planned ones (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for warmup in args.warmup:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = reference_run(args.task, seed, warmup, args.stop_after)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for warmup in args.warmup:
        runs = [r for r in rows if r["warmup"] == warmup]
        summary = {
            "warmup": warmup,
            "seeds": [r["seed"] for r in runs],
            **{key: spread([r[key] for r in runs]) for key in ("last_val_accuracy", "last_val_loss", "epoch0_train_loss", "epoch0_val_accuracy")},
        }
        print(json.dumps(summary), flush=True)
    return rows


if __name__ == "__main__":
    main()
