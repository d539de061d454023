"""What every benchmark script shares: fixed threads, interleaved timing, the JSON-line row.

A figure compares "ours" with a baseline measured in the same process. The two are
timed alternately (A B, B A, A B, ...), so drift on a shared machine (another
process, thermal, frequency) hits both alike; `ours` and `baseline` are the
medians of the repetitions and `ratio` the median of the side-by-side pairs'
ratios. On this 2-core VM two identical arms still differ by up to ~1.5% from
run to run (memory placement, page faults in the allocator), so a figure with a
2% budget sits close to the noise. Every row has the keys of `benchmarks/per.py`:
    {"name", "ours", "baseline", "ratio", "target", "pass"}
`ratio` is always ours relative to the baseline in the direction the figure's
docstring states; `pass` compares it with `target` in that direction. Lines
given for context only have `target` and `pass` null.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# One intra-op thread: the embedded hosts are small and run fastest on one, and a
# fixed count keeps figures comparable across runs (the machine has 2 cores).
THREADS = 1


def setup() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)


def parse(doc: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (run_all --quick: < 10 min)")
    return parser.parse_args(argv)


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds of every call of every subject, in the order they ran."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median of per-pair time ratios: calls made side by side, so slow drift cancels."""
        pairs = zip(self.samples[numerator], self.samples[denominator], strict=True)
        return statistics.median(n / d for n, d in pairs)


def interleaved(subjects: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """Time `repeats` calls of each subject, alternating between subjects (A B, B A, ...)."""
    for _ in range(warmup):
        for fn in subjects.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in subjects}
    order = list(subjects)
    for _ in range(repeats):
        for name in order:
            start = time.perf_counter()
            subjects[name]()
            times[name].append(time.perf_counter() - start)
        order.reverse()
    return Timings(times)


def row(name: str, ours: float, baseline: float, ratio: float, target: float, higher_is_better: bool) -> dict:
    passed = ratio >= target if higher_is_better else ratio <= target
    return {
        "name": name,
        "ours": round(ours, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ratio, 3),
        "target": target,
        "pass": passed,
    }


def reference_row(name: str, ours: float, baseline: float, ratio: float) -> dict:
    """A line for context only (target and pass null), like per.py's cpprb lines."""
    return {"name": name, "ours": round(ours, 4), "baseline": round(baseline, 4), "ratio": round(ratio, 3), "target": None, "pass": None}


def emit(rows: list[dict]) -> list[dict]:
    for item in rows:
        print(json.dumps(item), flush=True)
    return rows


def train_throughput(
    name: str, target: float, ours: Callable[[], object], baseline: Callable[[], object], steps: int, repeats: int
) -> list[dict]:
    """Train steps/s of `ours` vs `baseline` (each call runs `steps` steps); higher is better."""
    timings = interleaved({"ours": ours, "baseline": baseline}, repeats)
    ratio = timings.ratio("baseline", "ours")  # = throughput ratio ours / baseline
    ours_rate, base_rate = steps / timings.median("ours"), steps / timings.median("baseline")
    return emit([row(name, ours_rate, base_rate, ratio, target, higher_is_better=True)])
