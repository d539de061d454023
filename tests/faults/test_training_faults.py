"""Training faults injected into real runs: from a seed, the host, the data, validation.

What must hold (issue 10): a fault from a seed is rolled back and only that seed
is culled, and heuristic and PPO runs go on; a fault in the host is rolled back
and no seed is blamed nor charged to the curriculum; a fault no rollback cures
stops the run, "failed" with the reason and a non-zero exit; validation is
watched too; after a rollback every surviving seed is back at the last good
epoch along with the host. The fault blueprints are in conftest.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from esper.cli import main
from esper.jobs.runs_index import runs_table
from esper.leyline import Action, ActionKind, SeedStage
from esper.nissa import read_jsonl
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.runtime.tasks import TaskSpec
from esper.simic.curriculum import BlueprintCurriculum
from esper.tolaria import EpochLoop, MorphogeneticTrainer


def _heuristic(run_dir: Path, config: Path, epochs: int, *extra: str) -> int:
    argv = ["train", "heuristic", "--task", "digits", "--epochs", str(epochs), "--config", str(config)]
    return main([*argv, "--run-dir", str(run_dir), "--quiet", *extra])


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "metrics.jsonl")


def _moves(metrics: list[dict[str, Any]], to_stage: str) -> list[dict[str, Any]]:
    return [move for line in metrics for move in line["transitions"] if move["to_stage"] == to_stage]


def _governor_culls(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in _moves(metrics, "CULLED") if m["reason"].startswith("governor rollback")]


def _all_finite(metrics: list[dict[str, Any]]) -> bool:
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return all(math.isfinite(line[key]) for line in metrics for key in keys)


# ------------------------------------------------------------------ a seed goes bad
def test_a_nan_seed_is_rolled_back_and_culled_and_the_run_completes(tmp_path: Path, eager_config: Path) -> None:
    run_dir = tmp_path / "nan"
    assert _heuristic(run_dir, eager_config, 8, "--blueprints", "fault_nan") == 0
    metrics = _metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rollbacks"] >= 1
    rolled_back = [line for line in metrics if line["rollback"]]
    assert all("non-finite" in line["rollback"] for line in rolled_back)
    # Each rollback culled the seed that went NaN, and nothing else.
    culls = _governor_culls(metrics)
    assert len(culls) == len(rolled_back) and {c["blueprint_id"] for c in culls} == {"fault_nan"}
    assert _all_finite(metrics)  # the rolled-back epochs report the last good train loss
    # The curriculum was told: every fault_nan seed that ended failed.
    stats = BlueprintCurriculum.load(run_dir / "curriculum.json").get_stats("fault_nan")
    assert stats["successes"] == 0 and stats["trials"] == len(_moves(metrics, "CULLED")) >= len(culls)


def test_ppo_survives_rollbacks_and_logs_every_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "ppo"
    argv = ["train", "ppo", "--task", "digits", "--rounds", "2", "--envs", "2", "--episode-length", "8"]
    assert main([*argv, "--blueprints", "fault_nan", "--run-dir", str(run_dir), "--quiet"]) == 0
    rounds = _metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1]
    assert sum(r["rollbacks"] for r in rounds) >= 1, "the NaN seed should have forced a rollback"
    assert all(math.isfinite(r["return"]["mean"]) and math.isfinite(r["policy_loss"]) for r in rounds)
    transitions = read_jsonl(run_dir / "transitions.jsonl")
    assert any("rollback" in row["outcomes"] for row in transitions)
    assert all(math.isfinite(x) for row in transitions for x in row["obs"] + row["next_obs"])


def test_an_exploding_seed_is_rolled_back_and_culled(tmp_path: Path, eager_config: Path) -> None:
    run_dir = tmp_path / "explode"
    # block3: only the head follows it, so BatchNorm cannot absorb the explosion in training.
    assert _heuristic(run_dir, eager_config, 8, "--blueprints", "fault_explode", "--slots", "block3") == 0
    metrics = _metrics(run_dir)
    explosions = [line for line in metrics if line["rollback"] and "loss explosion" in line["rollback"]]
    assert explosions
    assert [c["blueprint_id"] for c in _governor_culls(metrics)] == ["fault_explode"] * len(explosions)
    assert _all_finite(metrics)


def test_validation_collapse_is_rolled_back_and_the_seed_culled(tmp_path: Path, eager_config: Path) -> None:
    run_dir = tmp_path / "eval"
    assert _heuristic(run_dir, eager_config, 10, "--blueprints", "fault_eval_explode") == 0
    metrics = _metrics(run_dir)
    collapses = [line for line in metrics if line["rollback"] and "val loss" in line["rollback"]]
    assert collapses, "the seed explodes only in eval mode: only validation can catch it"
    assert len(_governor_culls(metrics)) == len(collapses)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final_val_accuracy"] > 0.9


# ------------------------------------------------------------------ the host goes bad
def test_nan_in_a_host_weight_blames_no_blending_seed(tmp_path: Path, eager_config: Path, monkeypatch) -> None:
    real_end_epoch = MorphogeneticTrainer.end_epoch
    poisoned: list[dict[str, Any]] = []

    def poison_the_host_once_a_seed_blends(self: MorphogeneticTrainer) -> None:
        real_end_epoch(self)  # the governor's snapshot is taken before the fault
        blending = [s for s in self.slots.values() if s.stage == SeedStage.BLENDING and s.alpha > 0]
        if blending and not poisoned:
            with torch.no_grad():
                next(iter(self.model.host_parameters())).view(-1)[0] = float("nan")
            poisoned.append({"epoch": self.epoch, "seed_id": blending[0].state.seed_id})

    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", poison_the_host_once_a_seed_blends)
    run_dir = tmp_path / "host"
    assert _heuristic(run_dir, eager_config, 10, "--blueprints", "norm") == 0
    assert poisoned, "a norm seed should have been blending"
    metrics = _metrics(run_dir)
    (line,) = [m for m in metrics if m["rollback"]]
    assert line["epoch"] == poisoned[0]["epoch"] and "the host" in line["rollback"]
    assert _governor_culls(metrics) == []
    # The blending seed lives on: it is still in its slot after the rollback.
    seed_id = poisoned[0]["seed_id"]
    assert any(r is not None and r["seed_id"] == seed_id for r in line["slots"].values())
    # The curriculum is told exactly the seeds that really ended, none for the rollback.
    stats = BlueprintCurriculum.load(run_dir / "curriculum.json").get_stats("norm")
    assert stats["trials"] == len(_moves(metrics, "CULLED")) + len(_moves(metrics, "FOSSILIZED"))
    assert stats["trials"] - stats["successes"] == len(_moves(metrics, "CULLED"))


def _nan_pixel(monkeypatch) -> None:
    real_load = TaskSpec.load_data

    def load_with_one_nan_pixel(self: TaskSpec, **options):
        data = real_load(self, **options)
        data.train_inputs[7, 0, 3, 3] = float("nan")
        return data

    monkeypatch.setattr(TaskSpec, "load_data", load_with_one_nan_pixel)


def test_a_nan_pixel_stops_the_run_failed_after_k_rollbacks(tmp_path: Path, eager_config: Path, monkeypatch, capsys) -> None:
    _nan_pixel(monkeypatch)
    runs = tmp_path / "runs"
    run_dir = runs / "data"
    assert _heuristic(run_dir, eager_config, 10) != 0
    out = capsys.readouterr().out
    assert "3 consecutive rollbacks" in out and "the host or the data" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "3 consecutive rollbacks" in summary["reason"] and "the host or the data" in summary["reason"]
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [0, 1, 2]  # every epoch up to the failure is kept
    assert all(m["rollback"] for m in metrics) and _all_finite(metrics)
    assert not (run_dir / "checkpoints" / "final.pt").exists()  # a failed run is not resumable as done
    console = Console(width=300, record=True)
    console.print(runs_table(runs))
    assert "failed: 3 consecutive rollbacks" in console.export_text()


def test_the_rollback_limit_is_a_config_field(tmp_path: Path, monkeypatch) -> None:
    _nan_pixel(monkeypatch)
    config = tmp_path / "patient.json"
    config.write_text(json.dumps({"max_consecutive_rollbacks": 1}))
    assert _heuristic(tmp_path / "run", config, 10) != 0
    assert [m["epoch"] for m in _metrics(tmp_path / "run")] == [0]


# ------------------------------------------------------------------ consistent restore
def _state(trainer: MorphogeneticTrainer, slot_id: str) -> dict[str, Any]:
    """What a rollback must put back: the host, the seed in `slot_id`, its optimiser state."""
    seed_params = list(trainer.slots[slot_id].seed.parameters())
    return {
        "host": [p.detach().clone() for p in trainer.model.host_parameters()],
        "seed": [p.detach().clone() for p in seed_params],
        "momentum": [trainer.optimizers.seeds.state[p]["momentum_buffer"].clone() for p in seed_params],
        "ratio": trainer.slots[slot_id].state.metrics.seed_gradient_norm_ratio,
    }


def test_after_an_explosion_the_surviving_seed_is_back_at_the_last_good_epoch() -> None:
    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0)
    loop = EpochLoop(trainer, total_epochs=12)
    result = loop.start()
    result = loop.step([Action(ActionKind.GERMINATE, "block2", "norm")])
    result = loop.step([Action(ActionKind.GERMINATE, "block3", "fault_explode")])
    last_good = None
    while result is not None and not result.record.rollback:
        last_good = _state(trainer, "block2")  # the state the next epoch starts from
        result = loop.step([])
    assert result is not None, "the fault_explode seed should have exploded within 12 epochs"
    assert "loss explosion" in result.record.rollback
    assert trainer.slots["block3"].stage == SeedStage.CULLED
    survivor = trainer.slots["block2"]
    assert survivor.stage in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.SHADOWING)
    now = _state(trainer, "block2")
    for name in ("host", "seed", "momentum"):
        assert all(torch.equal(a, b) for a, b in zip(now[name], last_good[name], strict=True)), name
    assert now["ratio"] == last_good["ratio"]
    assert trainer.optimizers.slot_order() == ["block2"]


def test_a_forward_that_raises_midway_says_how_to_continue(tmp_path, monkeypatch, capsys) -> None:
    """A user model whose forward raises in epoch 3 (a device error, say): one line, and the resume command."""
    (tmp_path / "flaky_model.py").write_text(
        "from torch import nn\n"
        "class Flaky(nn.Module):\n"
        "    forwards = 0\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            Flaky.forwards += 1\n"
        "            if Flaky.forwards == 30:\n"
        "                raise RuntimeError('CUDA error: an illegal memory access was encountered')\n"
        "        return self.body(x)\n"
        "def flaky(data):\n"
        "    return Flaky(), ['body.2']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    argv = ["train", "heuristic", "--model", "flaky_model:flaky", "--epochs", "4", "--checkpoint-every", "1"]
    assert main([*argv, "--run-dir", str(run_dir), "--quiet"]) == 2
    output = " ".join(capsys.readouterr().out.split())
    assert "Traceback" not in output and output.startswith("error: CUDA error: an illegal memory access")
    assert output.endswith(f"continue with: esper train heuristic --resume {run_dir}")
    assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0  # the fault is gone
    assert len(_metrics(run_dir)) == 4
