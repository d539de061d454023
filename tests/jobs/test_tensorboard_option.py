"""`esper train heuristic --tensorboard` logs the run into RUN_DIR/tensorboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from esper.nissa import read_jsonl


def test_heuristic_run_writes_tensorboard_when_asked(heuristic_run: Path) -> None:
    accumulator = EventAccumulator(str(heuristic_run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    metrics = read_jsonl(heuristic_run / "metrics.jsonl")
    logged = accumulator.Scalars("accuracy/val")
    assert [e.step for e in logged] == [m["epoch"] for m in metrics]
    assert [e.value for e in logged] == pytest.approx(
        [m["val_accuracy"] for m in metrics], rel=1e-6
    )
    slots = {f"slot/{slot}/{name}" for slot in metrics[0]["slots"] for name in ("alpha", "stage")}
    assert slots <= set(accumulator.Tags()["scalars"])


PPO_TINY = {"rounds": 3, "envs": 2, "episode_length": 3, "checkpoint_every": 1,
            "ppo": {"update_epochs": 1, "num_minibatches": 1}, "tensorboard": True}  # fmt: skip
PPO_CURVES = ("return/mean", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def _scalars(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def test_ppo_run_logs_every_round_and_resume_appends(tmp_path: Path) -> None:
    from esper.jobs.ppo import PPORunConfig, run_ppo
    from esper.simic.rewards import COMPONENTS

    run = tmp_path / "run"
    run_ppo(PPORunConfig(**PPO_TINY), run)
    # A crash after round 2: round 3 is played again on resume and must not show twice.
    (run / "checkpoints" / "final.pt").unlink()
    (run / "checkpoints" / "epoch_0003.pt").unlink()
    run_ppo(None, run, resume=True)
    accumulator = _scalars(run / "tensorboard")
    metrics = read_jsonl(run / "metrics.jsonl")
    for curve in PPO_CURVES:
        assert [e.step for e in accumulator.Scalars(f"ppo/{curve}")] == [0, 1, 2], curve
    assert [e.value for e in accumulator.Scalars("ppo/entropy")] == pytest.approx([m["entropy"] for m in metrics])
    for component in COMPONENTS:
        per_step = [e.value for e in accumulator.Scalars(f"ppo/rewards_mean_per_step/{component}")]
        expected = [sum(m["rewards_per_step"][component]) / len(m["rewards_per_step"][component]) for m in metrics]
        assert per_step == pytest.approx(expected, abs=1e-6)
        assert f"ppo/rewards/{component}" in accumulator.Tags()["scalars"]


def test_ppo_run_without_the_flag_writes_no_tensorboard(tmp_path: Path) -> None:
    from esper.jobs.ppo import PPORunConfig, run_ppo

    run_ppo(PPORunConfig(**{**PPO_TINY, "rounds": 1, "tensorboard": False}), tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists()
