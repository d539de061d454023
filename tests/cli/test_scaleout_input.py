"""Bad scale-out input: one line saying what to change, exit 2, no process started, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper.cli import main

PPO = ["train", "ppo", "--task", "digits", "--rounds", "1", "--envs", "2", "--episode-length", "3", "--quiet"]
HEURISTIC = ["train", "heuristic", "--task", "digits", "--epochs", "2", "--quiet"]


def _refused(argv: list[str], run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    out = capsys.readouterr().out
    assert not run_dir.exists(), "nothing is written"
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out
    return " ".join(out.split())


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([*PPO, "--nproc", "0"], "--nproc must be >= 1 (processes on this machine), got 0"),
        ([*PPO, "--nproc", "3"], "3 processes for 2 environments: every process steps at least one; use --envs 3"),
        ([*PPO, "--nproc", "2", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        ([*PPO, "--nnodes", "2", "--rdzv-endpoint", "node0:29400"], "--nnodes and --rdzv-endpoint go with --nproc"),
        ([*PPO, "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "node0"], "--rdzv-endpoint must be HOST:PORT"),
        ([*HEURISTIC, "--nproc", "65"], "65 processes cannot share task digits's batch of 128"),
        ([*HEURISTIC, "--dist-timeout", "0"], "--dist-timeout must be > 0 seconds, got 0.0"),
    ],
    ids=[
        "nproc-0",
        "more-processes-than-envs",
        "multi-node-without-rendezvous",
        "nnodes-without-nproc",
        "endpoint-without-port",
        "batch-too-small",
        "timeout-0",
    ],
)
def test_bad_scaleout_input_is_refused_before_anything_starts(argv, says, tmp_path, capsys):
    assert says in _refused(argv, tmp_path / "run", capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_nccl_without_cuda_is_refused(tmp_path, capsys):
    assert "the nccl backend needs CUDA GPUs" in _refused([*HEURISTIC, "--dist-backend", "nccl"], tmp_path / "run", capsys)


def test_nproc_under_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert "under torchrun, leave --nproc out" in _refused([*PPO, "--nproc", "2"], tmp_path / "run", capsys)


def test_a_folder_holding_a_run_is_refused_before_launching(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"mode": "ppo", "config": {}}')
    assert main([*PPO, "--run-dir", str(run_dir), "--nproc", "2"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"{run_dir} already holds a run. Continue it with `esper train ppo --resume {run_dir}`" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_resuming_on_more_processes_than_the_runs_environments_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*PPO, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert main(["train", "ppo", "--resume", str(run_dir), "--nproc", "3"]) == 2
    assert "3 processes for 2 environments" in " ".join(capsys.readouterr().out.split())
    assert sorted(p.name for p in run_dir.rglob("*")) == before
