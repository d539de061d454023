"""`esper compare`'s bad input: one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.cli import main


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "nope"], "Unknown task 'nope'. Available: digits"),
        (["--seeds", "0"], "'seeds' must be >= 1, got 0"),
        (["--epochs", "0"], "'epochs' must be >= 1, got 0"),
        (["--controller", "missing/policy.pt"], "policy file missing/policy.pt does not exist"),
        (["--controller", "none"], "--controller must be 'heuristic' or a policy.pt"),
        (["--task", "digits", "--arms", "grown", "static-reference"],
         "task 'digits' has no static reference host; tasks with one: mnist5k-tiny"),
        (["--arms", "grown", "wide"], "unknown arm(s) ['wide']"),
        (["--arms", "static-final"], "add the grown arm"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_write_nothing(argv, message, tmp_path: Path, capsys) -> None:
    out = tmp_path / "compare"
    assert main(["compare", "--task", "digits", "--quiet", *argv, "--out", str(out)]) == 2
    printed = _words(capsys.readouterr().out)
    assert printed.startswith("error: ") and message in printed
    assert "Traceback" not in printed
    assert not out.exists()


def test_a_run_config_key_compare_sets_itself_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "arms.json"
    config.write_text(json.dumps({"seed": 3, "heuristic": {}}))
    out = tmp_path / "compare"
    assert main(["compare", "--task", "digits", "--config", str(config), "--out", str(out)]) == 2
    assert "compare sets seed for each arm itself" in _words(capsys.readouterr().out)
    assert not out.exists()


def test_a_bad_run_config_key_is_named(tmp_path: Path, capsys) -> None:
    config = tmp_path / "arms.json"
    config.write_text(json.dumps({"heuristik": {}}))
    out = tmp_path / "compare"
    assert main(["compare", "--task", "digits", "--config", str(config), "--out", str(out)]) == 2
    assert "Unknown config key(s): run.heuristik" in _words(capsys.readouterr().out)
    assert not out.exists()


def test_an_out_folder_holding_something_else_is_left_alone(tmp_path: Path, capsys) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["compare", "--task", "digits", "--out", str(out)]) == 2
    assert "already holds something else than a compare" in _words(capsys.readouterr().out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_needs_a_compare_folder_and_no_other_settings(tmp_path: Path, capsys) -> None:
    assert main(["compare", "--resume", str(tmp_path)]) == 2
    assert "is not an `esper compare` folder" in _words(capsys.readouterr().out)
    assert main(["compare", "--resume", str(tmp_path), "--seeds", "2"]) == 2
    assert "continues a compare with its own settings; drop --seeds" in _words(capsys.readouterr().out)
    assert main(["compare", "--task", "digits"]) == 2
    assert "give --out DIR" in _words(capsys.readouterr().out)
