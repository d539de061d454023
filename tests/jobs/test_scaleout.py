"""Runs on two real processes (gloo on CPU) match the same run on one.

- heuristic, `esper train heuristic --nproc 2` (the shortcut, through torchrun): each
  rank trains on half of every batch of 128, and the run matches one process at batch
  128: the same lifecycle events and decisions, per-epoch losses within 1e-4. The host
  is an MLP (mnist5k-mlp): with BatchNorm, per-rank batch statistics differ from one
  process's on CPU (SyncBatchNorm is CUDA-only).
- PPO (DD-PPO), `torchrun ... -m esper train ppo` (torchrun itself): 3 environments over
  2 processes (1 and 2), 2 rounds, both warm-started from a recorded run (fitted on rank 0,
  sent to the others); after the first update the policy matches one process's with 3
  environments, and so do the normaliser and the recorded transitions.

Rank 0 alone writes: each run folder holds the files one process writes, and nothing
else appears in the working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_support import esper, esper_env

from esper.cli import main

EAGER = {
    "min_epochs_left": 1,
    "germination_cooldown": 1,
    "tracker": {"warmup_epochs": 1, "plateau_patience": 1, "min_delta": 1.0, "stable_loss_change": 100.0},
}
HEURISTIC = ["train", "heuristic", "--task", "mnist5k-mlp", "--epochs", "6", "--blueprints", "norm", "lowrank",
             "--checkpoint-every", "3", "--quiet"]  # fmt: skip
PPO = ["train", "ppo", "--task", "digits", "--rounds", "2", "--envs", "3", "--episode-length", "4", "--checkpoint-every", "1",
       "--update-epochs", "2", "--no-target-kl", "--blueprints", "norm", "attention", "depthwise", "--quiet"]  # fmt: skip


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")}


@pytest.fixture(scope="module")
def heuristic_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("heuristic")
    config = folder / "eager.json"
    config.write_text(json.dumps({"heuristic": EAGER}))
    one, two = folder / "one", folder / "two"
    assert main([*HEURISTIC, "--config", str(config), "--run-dir", str(one)]) == 0
    work = folder / "cwd"
    work.mkdir()
    done = esper(*HEURISTIC, "--config", str(config), "--run-dir", str(two), "--nproc", "2", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return one, two, work


def test_heuristic_on_two_ranks_matches_one_process(heuristic_runs):
    one, two, _ = heuristic_runs
    alone, shared = _metrics(one), _metrics(two)
    assert [m["epoch"] for m in shared] == list(range(6))
    germinated = [t for m in shared for t in m["transitions"] if t["to_stage"] == "GERMINATED"]
    assert germinated, "the eager heuristic plants a seed within 6 epochs"
    for a, b in zip(alone, shared, strict=True):
        assert b["transitions"] == a["transitions"]
        assert b["actions"] == a["actions"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-3)
        assert b["seed_params"] == a["seed_params"]
        # FLOPs are the global run's: the ranks' shares summed, one process's count.
        assert b["flops"] == pytest.approx(a["flops"]) and b["flops"]["training"] > 0


def test_rank_zero_alone_writes_the_run_folder(heuristic_runs):
    one, two, work = heuristic_runs
    assert _files(two) == _files(one)
    assert list(work.iterdir()) == []  # no rank wrote a default run folder of its own
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["processes"] == 2
    assert json.loads((two / "config.json").read_text())["processes"] == 2


@pytest.fixture(scope="module")
def ppo_runs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ppo")
    one, two, recorded = folder / "one", folder / "two", folder / "recorded"
    # Both runs are warm-started from a recorded one: rank 0 fits the policy, every rank gets it.
    assert main([*PPO, "--rounds", "1", "--run-dir", str(recorded)]) == 0
    warm = ["--warm-start", str(recorded), "--warm-start-updates", "50"]
    assert main([*PPO, *warm, "--run-dir", str(one)]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, "-m", "esper", "--threads", "1", *PPO, *warm, "--run-dir", str(two)],
                          env=esper_env(), capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return one, two


def test_ppo_on_two_ranks_matches_one_process_after_the_first_update(ppo_runs):
    one, two = ppo_runs
    alone = torch.load(one / "checkpoints" / "epoch_0001.pt", weights_only=True)
    shared = torch.load(two / "checkpoints" / "epoch_0001.pt", weights_only=True)
    for name, value in alone["model"].items():
        torch.testing.assert_close(shared["model"][name], value, rtol=0, atol=1e-5)
    assert torch.equal(shared["normalizer"]["mean"], alone["normalizer"]["mean"])  # the same K rows
    assert torch.equal(shared["generator"], alone["generator"])  # the same draws
    first = [line for line in (one / "transitions.jsonl").read_text().splitlines() if '"epoch": 0,' in line]
    assert first and (two / "transitions.jsonl").read_text().startswith("\n".join(first))


def test_ppo_on_two_ranks_logs_every_environment_once(ppo_runs):
    one, two = ppo_runs
    alone, shared = _metrics(one), _metrics(two)
    assert [m["round"] for m in shared] == [0, 1]
    assert shared[0]["return"] == pytest.approx(alone[0]["return"])
    assert shared[0]["actions"] == alone[0]["actions"]
    assert _files(two) == _files(one)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["warm_start"] == json.loads((one / "summary.json").read_text())["warm_start"]
    events = [json.loads(line) for line in (two / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event_type"] == "run_started")
    assert started["message"] == "3 environments over 2 processes: 1, 2"
