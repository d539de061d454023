"""Scale-out: the same run on 2 processes (torchrun, gloo) against 1 process.

    python benchmarks/bench_distributed.py [--quick]

ppo_env_epochs_per_s_2proc: `esper train ppo` on `digits` with 4 environments (DD-PPO:
2 environments a process) against the same run in one process (no torchrun, no process
group: today's single-process path). Environment-epochs per second = environments x
episode length / a round's seconds (rollout + update, as metrics.jsonl logs them;
process start and data loading are left out). ratio = ours / baseline (higher is
better), target >= 1.7 with 2 processes on a 2-core machine.

heuristic_epochs_per_s_2proc: `esper train heuristic` on `mnist5k` (a CNN; each rank
trains half of every batch and the gradients are all-reduced after every step) against
one process, host epochs per second from the logged epoch seconds. For context (no
target): a host this small is cheap per batch next to an all-reduce per step.

Each arm is a fresh `python -m esper` process (the 2-process arm through `--nproc 2`),
run alternately; a figure is the median of the pairs' ratios. How many CPU cores the
machine has is printed with the figures: on a machine shared with other work the two
processes compete for them too.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _timing

import esper

SOURCES = str(Path(esper.__file__).parents[1])


def _run(argv: list[str], nproc: int) -> list[dict]:
    """Run `python -m esper ARGV` on `nproc` processes (1: plainly, no torchrun); its metrics lines."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        command = [sys.executable, "-m", "esper", "--threads", "1", *argv, "--quiet", "--run-dir", str(run_dir)]
        if nproc > 1:
            command += ["--nproc", str(nproc)]
        env = {**os.environ, "PYTHONPATH": SOURCES}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _seconds(lines: list[dict]) -> float:
    """The median logged seconds of a unit (round or epoch), the first (warm-up) left out."""
    return statistics.median(line["seconds"] for line in lines[1:])


def _compare(argv: list[str], repeats: int) -> tuple[float, float, float]:
    """(2-process seconds per unit, 1-process seconds per unit, median paired speed-up)."""
    pairs = []
    for i in range(repeats):
        order = (1, 2) if i % 2 == 0 else (2, 1)  # alternate, so drift hits both alike
        seconds = {nproc: _seconds(_run(argv, nproc)) for nproc in order}
        pairs.append((seconds[2], seconds[1]))
    two = statistics.median(p[0] for p in pairs)
    one = statistics.median(p[1] for p in pairs)
    return two, one, statistics.median(p[1] / p[0] for p in pairs)


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    repeats, rounds, length, epochs = (2, 4, 10, 5) if args.quick else (3, 6, 25, 8)
    envs = 4
    ppo = ["train", "ppo", "--task", "digits", "--envs", str(envs), "--rounds", str(rounds),
           "--episode-length", str(length), "--checkpoint-every", str(rounds)]  # fmt: skip
    two, one, speedup = _compare(ppo, repeats)
    work = envs * length
    rows = [_timing.row("ppo_env_epochs_per_s_2proc", work / two, work / one, speedup, 1.7, higher_is_better=True)]
    heuristic = ["train", "heuristic", "--task", "mnist5k", "--epochs", str(epochs), "--checkpoint-every", str(epochs)]
    two, one, speedup = _compare(heuristic, repeats)
    rows.append(_timing.reference_row("heuristic_epochs_per_s_2proc", 1 / two, 1 / one, speedup))
    print(f"bench_distributed: {os.cpu_count()} CPU cores on this machine", file=sys.stderr)
    return _timing.emit(rows)


if __name__ == "__main__":
    main()
