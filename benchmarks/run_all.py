"""Run every benchmark figure and collect its JSON lines in one file.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results.jsonl]

Each script prints its own lines ({"name", "ours", "baseline", "ratio", "target",
"pass"}) as it finishes; this writes all of them to `--out` and exits non-zero if
any figure with a target missed it. `--quick` (fewer repetitions) takes a few
minutes on a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bench_counterfactual
import bench_distributed
import bench_dormant
import bench_epoch
import bench_export
import bench_graft
import bench_incubator
import bench_recompiles
import bench_vec_env
import bench_width_seed
import per

FIGURES = (bench_dormant, bench_graft, bench_incubator, bench_counterfactual, bench_recompiles, bench_epoch, bench_vec_env, per,
           bench_distributed, bench_export, bench_width_seed)  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 10 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.jsonl")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    started = time.perf_counter()
    for module in FIGURES:
        rows += module.main(["--quick"] if args.quick else [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    missed = [row["name"] for row in rows if row["pass"] is False]
    print(f"{len(rows)} figures in {time.perf_counter() - started:.0f} s -> {args.out}; missed: {missed or 'none'}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(any(row["pass"] is False for row in main()))
