"""A rank of a two-process run that dies or hangs: the run stops with a line naming it, and resumes.

The runs are real `python -m esper ... --nproc 2` launches (torchrun's agent and two
ranks); a rank is killed or frozen from outside once a few epochs are logged. A killed
rank is reported by torchrun's agent, which stops the other; a frozen one is named by
rank 0 once the process group's timeout (`--dist-timeout`) runs out.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from distributed_support import esper, esper_command, esper_env, rank_pids

from esper.cli import main

BLUEPRINTS = ["--blueprints", "norm", "lowrank"]
HEURISTIC = ["train", "heuristic", "--task", "mnist5k-mlp", "--epochs", "16", "--checkpoint-every", "2", *BLUEPRINTS, "--quiet"]


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_rank(argv: list[str], run_dir: Path, after_lines: int, sig: signal.Signals) -> tuple[subprocess.Popen, dict[int, int]]:
    """Launch `ARGV --run-dir RUN_DIR --nproc 2`; send `sig` to rank 1 once metrics.jsonl has `after_lines` lines."""
    launcher = subprocess.Popen(esper_command(*argv, "--run-dir", str(run_dir), "--nproc", "2"), env=esper_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while _lines(run_dir / "metrics.jsonl") < after_lines and launcher.poll() is None:
        if time.monotonic() > deadline:
            launcher.kill()
            pytest.fail("the run logged nothing within two minutes")
        time.sleep(0.005)
    ranks = rank_pids(launcher.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], sig)
    return launcher, ranks


def test_a_killed_rank_stops_the_run_with_its_name_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    launcher, _ = _stop_rank(HEURISTIC, run_dir, after_lines=4, sig=signal.SIGKILL)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 2, out
    line = " ".join(out.split())
    assert "rank 1 was killed by SIGKILL; torchrun stopped the other ranks" in line
    assert f"continue with: esper train heuristic --resume {run_dir} --nproc 2" in line
    assert "Traceback" not in out
    assert not (run_dir / "summary.json").exists()
    # Resumed on one process (another number of processes than it started with).
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2
    assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    assert _epochs(run_dir) == list(range(16))
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 1  # what it runs on now
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_a_frozen_rank_is_named_once_the_timeout_runs_out(tmp_path):
    run_dir = tmp_path / "run"
    argv = [*HEURISTIC[:5], "200", *HEURISTIC[6:], "--dist-timeout", "3"]
    started = time.monotonic()
    launcher, ranks = _stop_rank(argv, run_dir, after_lines=3, sig=signal.SIGSTOP)
    try:
        while _alive(ranks[0]):  # rank 0 gives up after the timeout and says why
            assert time.monotonic() - started < 60, "rank 0 still waits for the frozen rank after a minute"
            time.sleep(0.05)
    finally:
        os.kill(ranks[1], signal.SIGKILL)  # torchrun's SIGTERM cannot stop a frozen process
    out, _ = launcher.communicate(timeout=120)
    line = " ".join(out.split())
    assert launcher.returncode == 2, out
    assert re.search(r"rank 0: error: rank 1 stopped responding during epoch \d+ of 200 \(its process died or is frozen\)", line), out
    assert "rank 0 stopped waiting for them in all_reduce" in line
    assert f"continue with: esper train heuristic --resume {run_dir}" in line


@pytest.mark.slow
def test_a_ppo_run_that_lost_a_rank_resumes_on_the_same_number_of_processes(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", "ppo", "--task", "digits", "--rounds", "6", "--envs", "2", "--episode-length", "4",
            "--checkpoint-every", "1", "--update-epochs", "1", "--blueprints", "norm", "attention", "--quiet"]  # fmt: skip
    launcher, _ = _stop_rank(argv, run_dir, after_lines=2, sig=signal.SIGKILL)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 2 and "rank 1 was killed by SIGKILL" in out, out
    done = esper("train", "ppo", "--resume", str(run_dir), "--nproc", "2", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == list(range(6))
    assert (run_dir / "policy.pt").exists()
