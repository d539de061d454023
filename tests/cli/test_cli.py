"""The `esper` command: listing commands, errors as messages, a short real training run."""

from __future__ import annotations

import json

import pytest

from esper.cli import main


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "esper 0.1.0" in capsys.readouterr().out


def test_blueprints_lists_registry_with_param_counts(capsys) -> None:
    assert main(["blueprints", "--topology", "cnn"]) == 0
    out = capsys.readouterr().out
    for name in ("norm", "attention", "depthwise", "conv_light", "conv_heavy"):
        assert name in out
    assert "flex_attention" not in out
    # A width seed's weights are sized by the host layer it widens, not the slot width: no "0 params".
    assert "sized by the" in out and " 0 @ dim" not in out


def test_blueprints_lists_the_mlp_topology(capsys) -> None:
    assert main(["blueprints", "--topology", "mlp"]) == 0
    out = capsys.readouterr().out
    for name in ("norm", "lowrank", "mlp"):
        assert name in out
    assert "conv_light" not in out


def test_tasks_lists_every_task(capsys) -> None:
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "mnist5k", "cifar10", "pydoc-chars", "textfile", "tinystories"):
        assert name in out


def test_train_heuristic_writes_a_summary(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", "heuristic", "--task", "digits", "--epochs", "3", "--run-dir", str(run_dir), "--quiet"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["status"] == "complete"
    assert "final val accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "heuristic", "--task", "nope", "--quiet"], "nope"),
        (["train", "heuristic", "--task", "cifar10", "--data-dir", "/nonexistent", "--quiet"], "--download"),
        (["train", "heuristic", "--resume", "/nonexistent/run", "--quiet"], "run folder"),
    ],
)
def test_user_errors_are_clear_messages(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().out


def test_config_file_with_unknown_key_is_rejected(tmp_path, capsys) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"task": "digits", "learning_rat": 0.1}))
    assert main(["train", "heuristic", "--config", str(config), "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert "learning_rat" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()
