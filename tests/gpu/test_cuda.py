"""CUDA: runs on a GPU, in every precision (skipped without one; scripts/gpu_check.sh runs them).

Written without a GPU at hand (the CI machine has none): each test says what it expects
of the device, so a failure on a GPU machine points at the behaviour, not at the test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import esper
from esper.cli import main
from esper.leyline import Action, ActionKind, SeedStage
from esper.nissa import read_jsonl
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.tolaria.precision import resolve_device
from esper.tolaria.trainer import train_epoch, validate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EAGER = {
    "heuristic": {
        "min_epochs_left": 1,
        "germination_cooldown": 1,
        "tracker": {"warmup_epochs": 1, "plateau_patience": 1, "min_delta": 1.0, "stable_loss_change": 100.0},
    }
}
PRECISIONS = ["fp32", "fp16-mixed", "bf16"]


def _precisions() -> list[str]:
    return [p for p in PRECISIONS if p != "bf16" or torch.cuda.is_bf16_supported()]


def test_cuda_resolves_to_an_indexed_device_and_a_missing_index_is_refused() -> None:
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=f"this machine has {torch.cuda.device_count()} CUDA"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("precision", _precisions())
def test_a_seed_germinates_and_trains_on_the_gpu(precision: str) -> None:
    trainer = build_trainer(get_task("digits"), get_task("digits").load_data(), 0, device="cuda", precision=precision)
    inputs, targets = next(iter(trainer.train_loader))
    assert inputs.is_cuda and targets.is_cuda  # the loader moves each batch
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    slot = trainer.model.seed_slots["block2"]
    assert all(p.is_cuda for p in slot.seed.parameters())  # seeds follow the slot's device
    records = []
    for _ in range(5):
        records.append(trainer.run_epoch())
        trainer.end_epoch()
    assert slot.stage in (SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY)
    assert all(r.rollback is None for r in records) and records[-1].val_accuracy > records[0].val_accuracy
    assert slot.state.metrics.seed_gradient_norm_ratio > 0


def _sync_warnings(run) -> int:
    """How many synchronising CUDA calls `run()` makes (torch's sync debug mode warns on each)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_epoch_metrics_accumulate_on_the_gpu_with_one_sync_per_epoch() -> None:
    trainer = build_trainer(get_task("digits"), get_task("digits").load_data(), 0, device="cuda")
    model, optimizers = trainer.model, trainer.optimizers
    train_epoch(model, trainer.train_loader, optimizers)  # warm up: lazy CUDA initialisation
    # No live seed: nothing reads gradient norms, so the epoch's one read-back is the only sync.
    assert _sync_warnings(lambda: train_epoch(model, trainer.train_loader, optimizers)) == 1
    assert _sync_warnings(lambda: validate(model, trainer.val_loader)) == 1


def test_the_grower_keeps_seeds_and_the_users_optimiser_on_the_gpu() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(256, 12, device="cuda"), torch.randint(0, 3, (256,), device="cuda")
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).cuda()
    grown = esper.graft(model, ["1"], x[:2])
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-2)

    @torch.no_grad()
    def accuracy(m: nn.Module) -> float:
        return (m(x).argmax(1) == y).float().mean().item()

    class Plant:
        def decide(self, signals):
            return [Action(ActionKind.GERMINATE, "1", "mlp")] if signals.epoch == 0 else []

    grower = esper.Grower(grown, optimizer, accuracy, controller=Plant())
    for _ in range(4):
        for batch in torch.randperm(256, device="cuda").split(32):
            loss = nn.functional.cross_entropy(grown(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        grower.end_epoch(train_loss=loss.item())
    seed_groups = [g for g in optimizer.param_groups if "slot_id" in g]
    assert seed_groups and all(p.is_cuda for g in seed_groups for p in g["params"])
    assert grown.seed_slots["1"].stage == SeedStage.BLENDING


@pytest.mark.parametrize("precision", _precisions())
def test_train_heuristic_on_cuda_and_its_checkpoint_loads_on_the_cpu(precision: str, tmp_path: Path) -> None:
    (tmp_path / "eager.json").write_text(json.dumps(EAGER))
    argv = ["train", "heuristic", "--task", "digits", "--epochs", "4", "--device", "cuda", "--precision", precision,
            "--config", str(tmp_path / "eager.json"), "--run-dir", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(lines) == 4 and all(line["val_accuracy"] is not None for line in lines)
    state = torch.load(tmp_path / "run" / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert ("scaler" in state["trainer"]) == (precision == "fp16-mixed")  # the loss scale resumes too


def test_ppo_and_evaluate_run_their_hosts_on_cuda(tmp_path: Path) -> None:
    argv = ["train", "ppo", "--task", "digits", "--rounds", "1", "--envs", "2", "--episode-length", "3",
            "--device", "cuda", "--run-dir", str(tmp_path / "ppo"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--policy", str(tmp_path / "ppo" / "policy.pt"), "--episodes", "1", "--episode-length", "3",
            "--device", "cuda", "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(report.read_text())["episodes"] == 1


@pytest.mark.parametrize(
    "script",
    [
        "grow_gpt.py",
        pytest.param(
            "grow_resnet.py",
            marks=pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="needs torchvision"),
        ),
    ],
)
def test_the_examples_run_on_cuda(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--epochs", "2", "--max-batches", "2", "--device", "cuda"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
