"""Errors that checks can find leave no run folder behind, and a used folder says how to go on."""

from __future__ import annotations

import pytest

from esper.cli import main
from esper.nissa.run_folder import RunFolder


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "heuristic", "--slots", "block9"], "block9"),
        (["train", "heuristic", "--blueprints", "nope"], "nope"),
        (["train", "heuristic", "--task", "textfile", "--text-path", "missing.txt"], "missing.txt"),
        (["train", "heuristic", "--curriculum", "missing.json"], "missing.json"),
        (["train", "heuristic", "--chooser", "rotation", "--curriculum", "c.json"], "curriculum"),
        (["train", "heuristic", "--epochs", "0"], "epochs"),
        (["train", "ppo", "--slots", "block9"], "block9"),
        (["train", "ppo", "--blueprints", "nope"], "nope"),
        (["train", "ppo", "--episode-length", "1"], "episode_length"),
        (["train", "ppo", "--network-kind", "gru"], "gru"),
    ],
)
def test_an_error_found_by_the_checks_leaves_no_folder(argv, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--run-dir", "run", "--quiet"]) == 2
    output = capsys.readouterr().out.strip()
    assert output.startswith("error: ") and expected in output and len(output.splitlines()) == 1, output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("mode", "resumable"), [("heuristic", True), ("ppo", True), ("offline", False)])
def test_a_used_folder_offers_resume_only_where_it_exists(mode, resumable, tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create({"mode": mode, "config": {}})
    with pytest.raises(FileExistsError) as err:
        folder.create({"mode": mode, "config": {}})
    message = str(err.value)
    assert "choose another --run-dir" in message.lower()
    assert (f"esper train {mode} --resume {folder.path}" in message) == resumable
    assert ("--resume" in message) == resumable
