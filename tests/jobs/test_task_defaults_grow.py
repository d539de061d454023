"""Every bundled offline task's DEFAULT `esper train heuristic` grows seeds that are kept.

Run as a user would (task defaults for epochs, slots, blueprints, lifecycle and the
heuristic). Whether one run keeps a seed depends on its trajectory, and a trajectory is
only reproducible on the machine (CPU kernels, package versions) that ran it: on another
machine the same seed is, in effect, another draw. So the claim is a statistic over several
seeds with a margin, never one seed's outcome. The defaults were tuned on seeds 100-109;
a fast task's default run kept a seed on 12 and 13 of seeds 100-115 (digits, mnist5k-mlp),
so "at least half of 8" fails by chance with probability under 3%.
cifar10 and tinystories need data that is not bundled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import run_heuristic
from esper.nissa import read_jsonl

SLOW = pytest.mark.slow  # over ~10 s a run on this 2-core machine
FAST_SEEDS = range(100, 108)  # a run takes ~2 s
SLOW_SEEDS = range(100, 103)
TASKS = [
    pytest.param("digits", {}, FAST_SEEDS, id="digits"),
    pytest.param("mnist5k-mlp", {}, FAST_SEEDS, id="mnist5k-mlp"),
    pytest.param("mnist5k", {}, SLOW_SEEDS, id="mnist5k", marks=SLOW),
    pytest.param("mnist5k-tiny", {}, SLOW_SEEDS, id="mnist5k-tiny", marks=SLOW),
    pytest.param("pydoc-chars", {}, SLOW_SEEDS, id="pydoc-chars", marks=SLOW),
    pytest.param("pydoc-chars-tiny", {}, SLOW_SEEDS, id="pydoc-chars-tiny", marks=SLOW),
    # Any UTF-8 text: the source of a module that ships with Python.
    pytest.param("textfile", {"path": argparse.__file__}, SLOW_SEEDS, id="textfile", marks=SLOW),
]


def _kept_seeds(task: str, options: dict, seed: int, run_dir: Path) -> int:
    """One default run: how many seeds it fossilized, after checking what holds for any run."""
    summary = run_heuristic(HeuristicRunConfig(task=task, seed=seed, task_options=options), run_dir)
    assert summary["status"] == "complete"
    # The kept seeds are the grown network: each slot's stack, counted as parameters added.
    kept = [blueprint for stack in summary["architecture"]["slots"].values() for blueprint in stack]
    assert len(kept) == summary["seeds"]["fossilized"]
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    fossil_params = sum(f["params"] for stack in last["fossils"].values() for f in stack)
    assert (fossil_params > 0) == bool(kept)
    assert fossil_params <= summary["params"]["added"]
    return len(kept)


@pytest.mark.parametrize(("task", "options", "seeds"), TASKS)
def test_the_default_run_of_every_offline_task_keeps_a_seed_on_most_seeds(
    task: str, options: dict, seeds: range, tmp_path: Path
) -> None:
    kept = {seed: _kept_seeds(task, options, seed, tmp_path / f"run-{seed}") for seed in seeds}
    keeping = [seed for seed, n in kept.items() if n > 0]
    assert 2 * len(keeping) >= len(kept), f"seeds kept per run: {kept}"
