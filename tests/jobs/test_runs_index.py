"""`esper runs`: one line per run folder with its progress, result and status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from esper.cli import main
from esper.jobs.report import format_flops
from esper.jobs.runs_index import runs_table
from esper.nissa import read_jsonl


def _render(root: Path) -> list[str]:
    console = Console(width=200, record=True)
    console.print(runs_table(root))
    return console.export_text().splitlines()


def _row(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith(f"│ {name} "))


@pytest.fixture
def runs_root(heuristic_run: Path, interrupted_run: Path, ppo_run: Path, tmp_path: Path) -> Path:
    for run in (heuristic_run, interrupted_run, ppo_run):
        shutil.copytree(
            run, tmp_path / run.name, ignore=shutil.ignore_patterns("checkpoints", "tensorboard")
        )
    (tmp_path / "notes").mkdir()  # not a run folder: left out
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    return tmp_path


def test_one_line_per_run_with_status(runs_root: Path) -> None:
    lines = _render(runs_root)
    grown = _row(lines, "grown").split("│")
    assert [cell.strip() for cell in grown[2:5]] == ["digits", "heuristic", "8/8"]
    assert grown[5].strip().endswith("%") and grown[8].strip() == "complete"
    # The training FLOPs the run spent, as its summary says.
    summary = json.loads((runs_root / "grown" / "summary.json").read_text())
    assert grown[7].strip() == format_flops(summary["flops"]["training"]) and grown[7].strip()[-1] in "MGT"
    interrupted = [cell.strip() for cell in _row(lines, "interrupted").split("│")]
    assert interrupted[4] == "4/8" and interrupted[8] == "interrupted at epoch 4"
    # An unfinished run: the FLOPs its last epoch line counted so far.
    metrics = read_jsonl(runs_root / "interrupted" / "metrics.jsonl")
    assert interrupted[7] == format_flops(metrics[-1]["flops"]["cumulative_training"])
    ppo = [cell.strip() for cell in _row(lines, "ppo").split("│")]
    # PPO: the last round's episodes, mean final accuracy and params added; no FLOPs counted.
    assert ppo[3:9] == ["ppo", "5/5", "82.00%", "40", "-", "complete"]
    assert "unreadable" in _row(lines, "broken")
    assert not any("notes" in line for line in lines)


def test_empty_folder_says_so(tmp_path: Path) -> None:
    assert any("no run folders here" in line for line in _render(tmp_path))


def test_cli_lists_runs_and_refuses_a_missing_folder(
    runs_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", str(runs_root)]) == 0
    assert "grown" in capsys.readouterr().out
    assert main(["runs", str(runs_root / "missing")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().out.split())
