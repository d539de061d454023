"""`--resume` with flags: what can change (training longer) is applied, anything else is refused in
one line with exit 2 and nothing touched; a complete run resumed as it is stays as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.cli import main
from esper.nissa import read_jsonl
from esper.nissa.run_folder import read_json

HEURISTIC = ["train", "heuristic", "--task", "digits", "--quiet"]
PPO = ["train", "ppo", "--task", "digits", "--envs", "2", "--episode-length", "3", "--quiet"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _one_error_line(capsys, *expected: str) -> None:
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert output.startswith("error: ")
    for text in expected:
        assert text in output, output


@pytest.fixture(scope="module")
def finished_heuristic(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("heuristic") / "run"
    assert main([*HEURISTIC, "--epochs", "3", "--checkpoint-every", "2", "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def finished_ppo(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ppo") / "run"
    assert main([*PPO, "--rounds", "2", "--run-dir", str(run)]) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--seed", "3"], "--seed"),
        (["--task", "mnist5k", "--epochs", "5"], "--task"),
        (["--blueprints", "norm", "--tensorboard"], "--blueprints, --tensorboard"),
        (["--config", "other.json"], "--config"),
    ],
)
def test_a_heuristic_resume_refuses_flags_it_cannot_apply(flags, named, finished_heuristic, tmp_path, capsys) -> None:
    run = _copy(finished_heuristic, tmp_path)
    before = _files(run)
    assert main(["train", "heuristic", "--resume", str(run), *flags, "--quiet"]) == 2
    _one_error_line(capsys, named, "--resume", "--epochs")
    assert _files(run) == before


def test_a_ppo_resume_refuses_flags_it_cannot_apply(finished_ppo, tmp_path, capsys) -> None:
    run = _copy(finished_ppo, tmp_path)
    before = _files(run)
    assert main(["train", "ppo", "--resume", str(run), "--ent-coef", "0.1", "--seed", "1", "--quiet"]) == 2
    _one_error_line(capsys, "--seed", "--ent-coef", "--rounds")
    assert _files(run) == before


@pytest.mark.parametrize("kind", ["heuristic", "ppo"])
def test_resuming_a_complete_run_says_so_and_changes_nothing(kind, finished_heuristic, finished_ppo, tmp_path, capsys) -> None:
    run = _copy(finished_heuristic if kind == "heuristic" else finished_ppo, tmp_path)
    before = _files(run)
    assert main(["train", kind, "--resume", str(run)]) == 0
    assert "is complete" in capsys.readouterr().out
    assert _files(run) == before  # no second run_started / run_finished pair, no checkpoint rewritten


def test_a_shorter_epochs_than_done_is_refused(finished_heuristic, tmp_path, capsys) -> None:
    run = _copy(finished_heuristic, tmp_path)
    before = _files(run)
    assert main(["train", "heuristic", "--resume", str(run), "--epochs", "2", "--quiet"]) == 2
    _one_error_line(capsys, "3 epochs done", "--epochs 2")
    assert _files(run) == before


def test_more_epochs_train_a_finished_heuristic_run_longer(finished_heuristic, tmp_path) -> None:
    run = _copy(finished_heuristic, tmp_path)
    assert main(["train", "heuristic", "--resume", str(run), "--epochs", "5", "--quiet"]) == 0
    assert [line["epoch"] for line in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    summary = read_json(run / "summary.json")
    assert summary["status"] == "complete" and summary["epochs"] == 5
    assert read_json(run / "config.json")["config"]["epochs"] == 5
    assert read_json(run / "transitions_meta.json")["episode_length"] == 5
    # The first session's final checkpoint stays, as the checkpoint of the epochs it covers.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt", "epoch_0004.pt", "final.pt"]
    # Resumed again as it now is: complete, nothing appended.
    before = _files(run)
    assert main(["train", "heuristic", "--resume", str(run), "--epochs", "5", "--quiet"]) == 0
    assert _files(run) == before


def test_more_rounds_train_a_finished_ppo_run_longer(finished_ppo, tmp_path) -> None:
    run = _copy(finished_ppo, tmp_path)
    assert main(["train", "ppo", "--resume", str(run), "--rounds", "3", "--quiet"]) == 0
    assert [line["round"] for line in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]
    summary = read_json(run / "summary.json")
    assert summary["status"] == "complete" and summary["rounds"] == 3 and summary["rounds_this_session"] == 1


def test_more_epochs_carry_an_interrupted_run_on_to_the_new_end(finished_heuristic, tmp_path) -> None:
    """A run cut off after its epoch-2 checkpoint (no final.pt, no summary yet) goes on to the new end."""
    run = _copy(finished_heuristic, tmp_path)
    (run / "checkpoints" / "final.pt").unlink()
    (run / "summary.json").unlink()
    assert main(["train", "heuristic", "--resume", str(run), "--epochs", "4", "--quiet"]) == 0
    assert [line["epoch"] for line in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3]
    assert read_json(run / "summary.json")["epochs"] == 4
