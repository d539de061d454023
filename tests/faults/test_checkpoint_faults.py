"""Corrupt, empty, hostile and mismatched checkpoints and policies.

Every such file gets one line naming it and what is wrong (exit 2), never torch's
advice to load with weights_only=False, and a payload inside is never run. On
--resume an unreadable latest checkpoint is skipped with a warning and the run
continues from the one before it, to the same metrics as a run never interrupted.
"""

from __future__ import annotations

import builtins
import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from policy_files import write_untrained_policy

from esper.cli import main
from esper.nissa.run_folder import RunFolder

HEURISTIC_EPOCHS = 6
PPO_ROUNDS = 3
# Named, not "all of the topology": other tests may register test-only blueprints in this process.
CNN_BLUEPRINTS = ("norm", "attention", "depthwise", "conv_light", "conv_heavy")
PPO_ARGS = ["--envs", "2", "--episode-length", "3", "--update-epochs", "1", "--checkpoint-every", "1",
            "--blueprints", *CNN_BLUEPRINTS]  # fmt: skip


class _Payload:
    """Unpickling this would create the file `marker`: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert "Traceback" not in output and "weights_only" not in output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: ")
    for text in expected:
        assert text in output, output
    return output


def _metrics(run_dir: Path) -> str:
    """metrics.jsonl byte for byte, but for the wall-clock seconds of each line."""
    return re.sub(r'"seconds": [0-9.eE+-]+', '"seconds": _', (run_dir / "metrics.jsonl").read_text())


# --------------------------------------------------------------------------- bad files


def _corrupt(path: Path, kind: str, tmp_path: Path) -> None:
    """Replace `path` with a bad file of the given kind."""
    match kind:
        case "random bytes":
            path.write_bytes(torch.Generator().manual_seed(0).seed().to_bytes(8, "little") * 64)
        case "empty":
            path.write_bytes(b"")
        case "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        case "pickle payload":
            path.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED")))
        case "torch payload":
            torch.save({"trainer": _Payload(tmp_path / "PWNED")}, path)
        case "list":
            torch.save([1, 2, 3], path)
        case "partial dict":
            torch.save({"trainer": {}}, path)
        case "text":
            shutil.copyfile("/etc/passwd" if Path("/etc/passwd").exists() else __file__, path)


BAD_KINDS = ["random bytes", "empty", "truncated", "pickle payload", "torch payload", "list", "partial dict", "text"]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    """A real policy.pt for digits, as `esper train ppo` writes it (untrained: the format is what matters)."""
    return write_untrained_policy(tmp_path_factory.mktemp("policy") / "policy.pt", ("block2", "block3"), CNN_BLUEPRINTS,
                                  episode_length=3)  # fmt: skip


def test_a_good_policy_file_evaluates(policy_file, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(["evaluate", "--policy", str(policy_file), "--episodes", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["task"] == "digits"


def test_a_policy_on_another_task_is_refused_with_the_way_to_transfer_it(policy_file, capsys) -> None:
    argv = ["evaluate", "--policy", str(policy_file), "--task", "mnist5k", "--episodes", "1"]
    _fails_cleanly(capsys, argv, "trained on task 'digits', not 'mnist5k'", "esper compare --transfer")


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_policy_file_is_one_clear_line(kind, policy_file, tmp_path, capsys) -> None:
    path = tmp_path / "policy.pt"
    shutil.copyfile(policy_file, path)
    _corrupt(path, kind, tmp_path)
    _fails_cleanly(capsys, ["evaluate", "--policy", str(path), "--episodes", "1"], str(path))
    assert not (tmp_path / "PWNED").exists()


def test_etc_passwd_as_policy(capsys) -> None:
    if not Path("/etc/passwd").exists():
        pytest.skip("no /etc/passwd here")
    _fails_cleanly(capsys, ["evaluate", "--policy", "/etc/passwd"], "/etc/passwd", "not a torch file")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p.pop("normalizer"), "'normalizer' is missing"),
        (lambda p: p.update(format="something-else"), "'format'"),
        (lambda p: p.update(episode_length="3"), "'episode_length' should be a valid integer"),
        (lambda p: p.update(model={"w": [1.0]}), "'model.w' should be an instance of Tensor"),
        (lambda p: p.update(slot_ids=["block2"]), "does not match"),  # the weights are for two slots
        (lambda p: p.update(network={"kind": "gru"}), "does not match"),
        (lambda p: p.update(reward={"rent_weight": "high"}), "reward.rent_weight"),
    ],
)
def test_a_policy_of_the_wrong_structure_is_named(change, expected, policy_file, tmp_path, capsys) -> None:
    payload = torch.load(policy_file, weights_only=True)
    change(payload)
    path = tmp_path / "policy.pt"
    torch.save(payload, path)
    _fails_cleanly(capsys, ["evaluate", "--policy", str(path), "--episodes", "1"], str(path), expected)


def test_a_folder_or_a_missing_file_as_policy(tmp_path, capsys) -> None:
    _fails_cleanly(capsys, ["evaluate", "--policy", str(tmp_path)], str(tmp_path), "not a file")
    _fails_cleanly(capsys, ["evaluate", "--policy", str(tmp_path / "nope.pt")], "does not exist")


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def heuristic_reference(tmp_path_factory) -> Path:
    """An uninterrupted heuristic run, checkpointed every 2 epochs."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    argv = ["train", "heuristic", "--epochs", str(HEURISTIC_EPOCHS), "--checkpoint-every", "2", "--seed", "4",
            "--blueprints", *CNN_BLUEPRINTS]  # fmt: skip
    assert main([*argv, "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def _crashed_copy(reference: Path, run_dir: Path) -> Path:
    """The reference as a crash right after its last epoch checkpoint leaves it (logs complete)."""
    shutil.copytree(reference, run_dir)
    for name in ("summary.json", "curriculum.json", "checkpoints/final.pt"):
        (run_dir / name).unlink(missing_ok=True)
    return run_dir


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_resume_skips_a_corrupt_latest_checkpoint(kind, heuristic_reference, tmp_path, caplog, capsys) -> None:
    run_dir = _crashed_copy(heuristic_reference, tmp_path / "run")
    latest = run_dir / "checkpoints" / f"epoch_{HEURISTIC_EPOCHS:04d}.pt"
    _corrupt(latest, kind, tmp_path)
    cut_off = latest.with_name(latest.name + ".tmp")  # what a kill mid-write leaves
    cut_off.write_bytes(b"PK\x03\x04")
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    assert not cut_off.exists()
    warnings = caplog.text
    assert str(latest) in warnings and "epoch_0004.pt" in warnings
    assert not (tmp_path / "PWNED").exists()
    assert _metrics(run_dir) == _metrics(heuristic_reference)
    # The corrupt file was written again by the resumed run, and reads as a checkpoint.
    assert set(torch.load(latest, weights_only=True)) >= {"trainer", "controller"}


def test_resume_with_no_readable_checkpoint_starts_over(heuristic_reference, tmp_path, caplog) -> None:
    run_dir = _crashed_copy(heuristic_reference, tmp_path / "run")
    for path in RunFolder(run_dir).checkpoints():
        _corrupt(path, "empty", tmp_path)
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    assert "starts from the beginning" in caplog.text
    assert _metrics(run_dir) == _metrics(heuristic_reference)


def test_a_checkpoint_of_another_run_is_an_error(heuristic_reference, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    assert main(["train", "heuristic", "--epochs", "2", "--checkpoint-every", "2", "--slots", "block2",
                 "--run-dir", str(other), "--quiet"]) == 0  # fmt: skip
    run_dir = _crashed_copy(heuristic_reference, tmp_path / "run")
    latest = run_dir / "checkpoints" / f"epoch_{HEURISTIC_EPOCHS:04d}.pt"
    shutil.copyfile(other / "checkpoints" / "epoch_0002.pt", latest)
    capsys.readouterr()
    before = (run_dir / "metrics.jsonl").read_bytes()
    _fails_cleanly(capsys, ["train", "heuristic", "--resume", str(run_dir), "--quiet"], str(latest), "does not match")
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing truncated for a refused resume


def test_ppo_resume_skips_a_corrupt_latest_checkpoint(tmp_path, caplog) -> None:
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    argv = ["train", "ppo", "--rounds", str(PPO_ROUNDS), *PPO_ARGS, "--quiet"]
    assert main([*argv, "--run-dir", str(reference)]) == 0
    _crashed_copy(reference, run_dir)
    _corrupt(run_dir / "checkpoints" / f"epoch_{PPO_ROUNDS:04d}.pt", "truncated", tmp_path)
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        assert main(["train", "ppo", "--resume", str(run_dir), "--quiet"]) == 0
    assert f"epoch_{PPO_ROUNDS:04d}.pt" in caplog.text
    assert _metrics(run_dir) == _metrics(reference)


def test_a_corrupt_curriculum_file_is_named(heuristic_reference, tmp_path, capsys) -> None:
    bad = tmp_path / "curriculum.json"
    for content in ("{not json", "[1, 2]", json.dumps({"blueprints": ["norm"]})):
        bad.write_text(content)
        argv = ["train", "heuristic", "--curriculum", str(bad), "--run-dir", str(tmp_path / "run"), "--quiet"]
        _fails_cleanly(capsys, argv, str(bad))
        assert not (tmp_path / "run").exists()
