"""The examples run as a user runs them (a fresh process, the script's own flags), at tiny settings.

grow_resnet needs torchvision (the `vision` extra: `make test-vision`); without it, it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ["--epochs", "2", "--max-batches", "2"]


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_grow_gpt_runs_at_tiny_settings(tmp_path: Path) -> None:
    out = _run("grow_gpt.py", *TINY, "--run-dir", str(tmp_path / "run"))
    assert "next-character accuracy" in out and "blocks.0:" in out and "blocks.1:" in out
    summary = _summary(tmp_path / "run")
    assert summary["mode"] == "grower" and summary["status"] == "complete" and summary["epochs"] == 2


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="needs the vision extra: make test-vision")
def test_grow_resnet_runs_at_tiny_settings(tmp_path: Path) -> None:
    out = _run("grow_resnet.py", *TINY, "--run-dir", str(tmp_path / "run"))
    assert "validation accuracy" in out and "layer2:" in out and "layer3:" in out
    summary = _summary(tmp_path / "run")
    assert summary["task"] == "ResNet (own loop)" and summary["status"] == "complete"


@pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None, reason="needs the graft-widen extra")
def test_grow_mlp_wider_runs_at_tiny_settings(tmp_path: Path) -> None:
    out = _run("grow_mlp_wider.py", *TINY, "--run-dir", str(tmp_path / "run"))
    assert "validation accuracy" in out and "fc1 widths 8" in out and "exported: fc1 Linear" in out
    summary = _summary(tmp_path / "run")
    assert summary["mode"] == "grower" and summary["status"] == "complete" and summary["epochs"] == 2
