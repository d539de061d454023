"""`esper train heuristic --model package.module:factory`, and `--device`/`--precision` on the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from esper.cli import main
from esper.jobs.run_data import load_run
from esper.nissa import read_jsonl

# The user's own module, as it would sit in their project folder.
FACTORIES = textwrap.dedent(
    """
    from torch import nn

    def mlp(data):
        width = data.metadata["in_channels"] * data.metadata["image_size"] ** 2
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
            nn.Linear(16, data.metadata["num_classes"]),
        )
        return model, ["2", "4"]

    def raises(data):
        raise KeyError("in_features")

    def not_a_pair(data):
        return nn.Linear(3, 3)

    def wrong_target(data):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ["2"]

    def wrong_classes(data):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)), ["2"]

    class ReadsValues(nn.Module):
        # A forward that reads a tensor's value: it cannot run on meta tensors.

        def __init__(self, data):
            super().__init__()
            self.body = mlp(data)[0]

        def forward(self, x):
            return self.body(x if x.abs().max().item() < 1e6 else x.clamp(-1e6, 1e6))

    def reads_values(data):
        return ReadsValues(data), ["body.2", "body.4"]

    NOT_CALLABLE = 3
    """
)
# One 8x8 digit through the 64-16-16-10 MLP: a multiply-add is 2 FLOPs; a training step adds
# the backward (both gradients for the second and third layers, the first one's weight only).
MLP_INFERENCE = 2 * (64 * 16 + 16 * 16 + 16 * 10)
MLP_TRAINING = MLP_INFERENCE + 2 * 64 * 16 + 2 * (2 * 16 * 16 + 2 * 16 * 10)
# Plants at the first plateau, which a min_delta of 1.0 makes every epoch after warm-up.
EAGER = {
    "heuristic": {
        "min_epochs_left": 1,
        "germination_cooldown": 1,
        "tracker": {"warmup_epochs": 1, "plateau_patience": 1, "min_delta": 1.0, "stable_loss_change": 100.0},
    }
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project folder holding their factories, as the working folder."""
    (tmp_path / "user_factories_for_esper.py").write_text(FACTORIES)
    (tmp_path / "eager.json").write_text(json.dumps(EAGER))
    monkeypatch.chdir(tmp_path)
    # --model imports from the working folder (as `python -m` does): undo that after the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "user_factories_for_esper", raising=False)
    return tmp_path


def _train(*extra: str) -> int:
    return main(["train", "heuristic", "--task", "digits", "--quiet", *extra])


def test_a_users_model_grows_with_run_folder_and_resumes(project: Path) -> None:
    model = ["--model", "user_factories_for_esper:mlp", "--config", "eager.json", "--epochs", "6"]
    assert _train(*model, "--run-dir", "whole", "--checkpoint-every", "2") == 0
    run = load_run(project / "whole")
    assert run.complete and run.config["config"]["model"] == "user_factories_for_esper:mlp"
    assert run.summary["seeds"]["germinated"] >= 1 and run.summary["params_added"] > 0
    assert run.summary["host_params"] == 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert set(run.summary["final_slots"]) == {"2", "4"}
    germinated = [e for e in read_jsonl(project / "whole" / "events.jsonl") if e["event_type"] == "seed_germinated"]
    assert germinated and germinated[0]["data"]["topology"] == "mlp"  # the grafted slots' own topology

    # Interrupted after epoch 4's checkpoint: --resume imports the factory again.
    assert _train(*model, "--run-dir", "cut", "--checkpoint-every", "2") == 0
    for name in ("final.pt", "epoch_0006.pt"):
        (project / "cut" / "checkpoints" / name).unlink()
    (project / "cut" / "summary.json").unlink()
    assert main(["train", "heuristic", "--resume", "cut", "--quiet"]) == 0

    def lines(name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(project / name / "metrics.jsonl")]

    assert lines("cut") == lines("whole")


def test_a_users_model_run_counts_its_flops(project: Path) -> None:
    from esper.runtime import get_task

    assert _train("--model", "user_factories_for_esper:mlp", "--epochs", "2", "--run-dir", "run") == 0
    metrics = read_jsonl(project / "run" / "metrics.jsonl")
    first = metrics[0]["flops"]
    assert first["inference_per_sample"] == MLP_INFERENCE  # nothing grown yet
    spec = get_task("digits")
    train, val = spec.load_data().loaders(spec.batch_size, 0, spec.max_train_batches, spec.max_val_batches)
    assert first["training"] == MLP_TRAINING * sum(len(y) for _, y in train)
    assert first["validation"] == MLP_INFERENCE * sum(len(y) for _, y in val)
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["flops"]["training"] == metrics[-1]["flops"]["cumulative_training"] == 2 * first["training"]
    assert summary["architecture"] == {"host": "user_factories_for_esper:mlp", "slots": {"2": [], "4": []}}


def test_a_users_model_that_cannot_run_on_meta_trains_without_flops(
    project: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = ["--model", "user_factories_for_esper:reads_values", "--config", "eager.json", "--epochs", "5"]
    with caplog.at_level("WARNING", logger="esper.tolaria"):
        assert _train(*model, "--baseline", "--run-dir", "run") == 0
    assert all(line["flops"] is None for line in read_jsonl(project / "run" / "metrics.jsonl"))
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["flops"] is None and summary["seeds"]["germinated"] >= 1  # it grew all the same
    warnings = [r.getMessage() for r in caplog.records if "FLOPs are not counted" in r.getMessage()]
    assert len(warnings) == 2  # one per run: the grown one and its host-only baseline
    assert "cannot count the FLOPs of ReadsValues" in warnings[0] and len(warnings[0].splitlines()) == 1
    assert load_run(project / "run").training_flops is None  # `esper runs` and reports show "-"
    # A growth budget needs those counts: one line, exit 2, nothing written.
    capsys.readouterr()
    assert _train(*model, "--max-params-added", "5000", "--run-dir", "budget") == 2
    output = capsys.readouterr().out.strip()
    assert output.startswith("error: the growth budget") and "ReadsValues" in output and len(output.splitlines()) == 1
    assert not (project / "budget").exists()


def test_a_growth_budget_holds_for_a_users_model(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", "user_factories_for_esper:mlp", "--config", "eager.json", "--epochs", "8"]
    assert _train(*model, "--max-params-added", "300", "--run-dir", "run") == 0
    added = [line["seed_params"] for line in read_jsonl(project / "run" / "metrics.jsonl")]
    assert 0 < max(added) <= 300  # it grew, within the budget all along
    # Smaller than any mlp blueprint on these 16-wide slots: refused before anything is written.
    capsys.readouterr()
    assert _train(*model, "--max-params-added", "10", "--run-dir", "tiny") == 2
    output = capsys.readouterr().out.strip()
    assert "is smaller than any blueprint" in output and len(output.splitlines()) == 1
    assert not (project / "tiny").exists()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("user_factories_for_esper:raises", "the factory raised KeyError: 'in_features'"),
        ("user_factories_for_esper:not_a_pair", "must return (model, targets)"),
        ("user_factories_for_esper:wrong_target", "Unknown target '2'"),
        ("user_factories_for_esper:wrong_classes", "the task needs logits of shape (2, 10)"),
        ("user_factories_for_esper:NOT_CALLABLE", "is a int, not a function"),
        ("user_factories_for_esper:missing", "has no 'missing'"),
        ("no_such_module_here:build", "there is no module 'no_such_module_here' here"),
        ("user_factories_for_esper.mlp", "not of the form package.module:factory"),
    ],
)
def test_a_factory_that_does_not_work_is_one_line_and_nothing_is_written(
    project: Path, capsys: pytest.CaptureFixture[str], model: str, expected: str
) -> None:
    assert _train("--model", model, "--run-dir", "run") == 2
    output = capsys.readouterr().out.strip()
    assert output.startswith("error: --model") and expected in output and "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert not (project / "run").exists() and not (project / "runs").exists()


def test_slots_do_not_go_with_a_model(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train("--model", "user_factories_for_esper:mlp", "--slots", "2", "--run-dir", "run") == 2
    assert "the factory's targets are the slots" in capsys.readouterr().out
    assert not (project / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "heuristic", "--task", "digits", "--run-dir", "run"],
        ["train", "ppo", "--task", "digits", "--rounds", "1", "--envs", "1", "--run-dir", "run"],
        ["evaluate", "--policy", "heuristic", "--episodes", "1", "--json", "run/eval.json"],
    ],
    ids=["heuristic", "ppo", "evaluate"],
)
@pytest.mark.parametrize("device", ["cuda:7", "mps", "tpu"])
def test_a_device_that_is_not_there_is_one_line_and_nothing_is_written(
    argv: list[str], device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7 or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{device} is there on this machine")
    monkeypatch.chdir(tmp_path)
    if argv[0] == "evaluate":
        Path("run").mkdir()
    assert main([*argv, "--quiet", "--device", device] if argv[0] == "train" else [*argv, "--device", device]) == 2
    output = capsys.readouterr().out.strip()
    assert output.startswith("error: ") and device.split(":")[0] in output and len(output.splitlines()) == 1
    assert [p.name for p in tmp_path.rglob("*")] == (["run"] if argv[0] == "evaluate" else [])


def test_bf16_autocast_runs_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _train("--epochs", "2", "--precision", "bf16", "--run-dir", "run") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["device"], config["precision"]) == ("cpu", "bf16")
    assert all(line["val_accuracy"] > 0.1 for line in read_jsonl(tmp_path / "run" / "metrics.jsonl"))
