"""Every bundled offline task's DEFAULT `esper train heuristic` grows a seed that is kept.

Run as a user would (task defaults for epochs, slots, blueprints, lifecycle and the
heuristic), on seed 100: the defaults were tuned on seeds 100-109 only, seeds 0-4
are kept for reported results. cifar10 and tinystories need data that is not bundled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import run_heuristic
from esper.nissa import read_jsonl

SLOW = pytest.mark.slow  # over ~10 s on this 2-core machine
TASKS = [
    pytest.param("digits", {}, id="digits"),
    pytest.param("mnist5k-mlp", {}, id="mnist5k-mlp"),
    pytest.param("mnist5k", {}, id="mnist5k", marks=SLOW),
    pytest.param("mnist5k-tiny", {}, id="mnist5k-tiny", marks=SLOW),
    pytest.param("pydoc-chars", {}, id="pydoc-chars", marks=SLOW),
    pytest.param("pydoc-chars-tiny", {}, id="pydoc-chars-tiny", marks=SLOW),
    # Any UTF-8 text: the source of a module that ships with Python.
    pytest.param("textfile", {"path": argparse.__file__}, id="textfile", marks=SLOW),
]


@pytest.mark.parametrize(("task", "options"), TASKS)
def test_the_default_run_of_every_offline_task_fossilizes_a_seed(task: str, options: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    summary = run_heuristic(HeuristicRunConfig(task=task, seed=100, task_options=options), run_dir)
    assert summary["status"] == "complete"
    assert summary["seeds"]["fossilized"] >= 1, summary["seeds"]
    # The kept seeds are the grown network: each slot's stack, counted as parameters added.
    kept = [blueprint for stack in summary["architecture"]["slots"].values() for blueprint in stack]
    assert len(kept) == summary["seeds"]["fossilized"]
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    fossil_params = sum(f["params"] for stack in last["fossils"].values() for f in stack)
    assert 0 < fossil_params <= summary["params"]["added"]
