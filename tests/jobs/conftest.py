"""Run folders for the report and `esper runs` tests.

- ``heuristic_run``: one short REAL run made through the CLI (8 digits epochs,
  host-only baseline, TensorBoard), with a heuristic eager enough to plant a
  seed at epoch 1 so the lifecycle has something to show.
- ``interrupted_run``: a copy of it cut off as a crash leaves it (no summary,
  metrics stopping after 4 epochs with a half-written line).
- ``ppo_run``: a synthetic folder in the format `esper train ppo`
  (src/esper/jobs/ppo.py) writes, the fixture that documents what the report
  reads: config.json ``{"mode": "ppo", "config": {"rounds": N, ...}, "run_format": 3}``;
  metrics.jsonl one record per round with ``round``, ``return``,
  ``final_val_accuracy`` and ``params_added`` (each ``{"mean", "std"}`` over the
  round's episodes), ``policy_loss``, ``value_loss``, ``entropy``,
  ``approx_kl``, ``clip_fraction``, ``explained_variance``, ``rewards`` (reward
  term -> mean per episode) and ``actions`` (action -> count per episode, named
  "KIND [slot [blueprint]]"); events.jsonl with one ``ppo_update`` event per
  round; summary.json. Every key is optional: the report plots those present.
- ``digits_policy``: an untrained policy.pt for digits, as `esper train ppo` writes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from policy_files import write_untrained_policy

from esper.cli import main
from esper.leyline import TelemetryEvent, TelemetryEventType

EPOCHS = 8
INTERRUPTED_AFTER = 4
# Plant at the first plateau, which a min_delta of 1.0 makes every epoch after warm-up.
EAGER_HEURISTIC = {
    "min_epochs_left": 1,
    "germination_cooldown": 1,
    "tracker": {
        "warmup_epochs": 1,
        "plateau_patience": 1,
        "min_delta": 1.0,
        "stable_loss_change": 100.0,
    },
}
PPO_ROUNDS = 5


@pytest.fixture(scope="session")
def heuristic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("config") / "eager.json"
    config.write_text(json.dumps({"heuristic": EAGER_HEURISTIC}))
    run_dir = tmp_path_factory.mktemp("runs") / "grown"
    argv = [
        "train",
        "heuristic",
        "--task",
        "digits",
        "--epochs",
        str(EPOCHS),
        "--run-dir",
        str(run_dir),
    ]
    assert main([*argv, "--baseline", "--tensorboard", "--quiet", "--config", str(config)]) == 0
    return run_dir


@pytest.fixture(scope="session")
def interrupted_run(heuristic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "interrupted"
    shutil.copytree(
        heuristic_run,
        run_dir,
        ignore=shutil.ignore_patterns("checkpoints", "tensorboard", "report"),
    )
    (run_dir / "summary.json").unlink()
    (run_dir / "baseline.json").unlink()
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text(
        "".join(metrics[:INTERRUPTED_AFTER]) + metrics[INTERRUPTED_AFTER][:20]
    )
    return run_dir


def _ppo_record(round_: int) -> dict:
    return {
        "round": round_,
        "epoch": round_,
        "return": {"mean": -1.0 + 0.4 * round_, "std": 0.3},
        "final_val_accuracy": {"mean": 0.7 + 0.03 * round_, "std": 0.05},
        "params_added": {"mean": 10.0 * round_, "std": 4.0},
        "policy_loss": 0.1 / (round_ + 1),
        "value_loss": 1.0 / (round_ + 1),
        "entropy": 1.6 - 0.2 * round_,
        "approx_kl": 0.01 * (round_ + 1),
        "clip_fraction": 0.05 * round_,
        "explained_variance": 0.15 * round_,
        "rewards": {"contribution": 0.1 * round_, "rent": -0.02, "shaping": 0.05},
        "actions": {
            "WAIT": 20.0 - 2 * round_,
            "GERMINATE block2 norm": 1.0 + round_,
            "GERMINATE block3 attention": 1.0,
            "FOSSILIZE block2": 0.5 * round_,
            "CULL block3": 0.5,
        },
    }


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "ppo"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(
        json.dumps({"mode": "ppo", "config": {"task": "digits", "rounds": PPO_ROUNDS}, "run_format": 3})
    )
    records = [_ppo_record(r) for r in range(PPO_ROUNDS)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    events = [TelemetryEvent(TelemetryEventType.PPO_UPDATE, data=r).to_dict() for r in records]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "summary.json").write_text(
        json.dumps({"mode": "ppo", "task": "digits", "rounds": PPO_ROUNDS, "status": "complete"})
    )
    return run_dir


@pytest.fixture(scope="module")
def digits_policy(tmp_path_factory) -> Path:
    return write_untrained_policy(tmp_path_factory.mktemp("policy") / "policy.pt", ("block2", "block3"), ("norm", "attention"))
