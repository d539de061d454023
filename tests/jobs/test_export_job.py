"""`esper export RUN_DIR --out FILE`: the grown network of a finished run as a plain model file."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.cli import main
from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import prepare_run, run_heuristic

# A plan that keeps two seeds on digits in 12 epochs: an identity layer, then a norm on top.
PLAN = [{"at": 0.0, "slot": "block2", "blueprint": "deepen"}, {"at": 0.0, "slot": "block3", "blueprint": "norm"}]


CONFIG = HeuristicRunConfig(task="digits", epochs=12, seed=3, controller="schedule", schedule=PLAN)


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run_heuristic(CONFIG, run_dir)
    return run_dir


def test_the_exported_file_loads_without_esper_and_computes_what_the_grown_network_does(grown_run, tmp_path, capsys) -> None:
    out = tmp_path / "grown.pt2"
    assert main(["export", str(grown_run), "--out", str(out)]) == 0
    assert "load it with torch.export.load(FILE).module()" in " ".join(capsys.readouterr().out.split())
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    # A fresh interpreter that never imports esper: the file holds the whole network.
    script = (
        "import sys, torch\n"
        f"model = torch.export.load({str(out)!r}).module()\n"
        f"y = model(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"torch.save(y, {str(tmp_path / 'y.pt')!r})\n"
        "assert not any(name.startswith('esper') for name in sys.modules), 'esper was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    # The grown network as the run left it: its model rebuilt from the final checkpoint.
    trainer = prepare_run(CONFIG, resume=True).trainer
    trainer.load_state_dict(torch.load(grown_run / "checkpoints" / "final.pt", weights_only=True)["trainer"])
    model = trainer.model.eval()
    with torch.no_grad(), contextlib.ExitStack() as live_seeds_off:
        for slot in model.seed_slots.values():
            live_seeds_off.enter_context(slot.force_alpha(0.0))
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=0, atol=1e-5)


def test_what_is_not_a_finished_heuristic_run_is_refused_and_nothing_is_written(grown_run, tmp_path, capsys) -> None:
    out = tmp_path / "never.pt2"
    unfinished = tmp_path / "unfinished"
    shutil.copytree(grown_run, unfinished)
    (unfinished / "checkpoints" / "final.pt").unlink()
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    controller = tmp_path / "ppo"
    shutil.copytree(grown_run, controller)
    saved = json.loads((controller / "config.json").read_text())
    (controller / "config.json").write_text(json.dumps({**saved, "mode": "ppo"}))
    cases = {
        str(tmp_path / "nothing"): "is not an Esper run folder",
        str(unfinished): "is not a finished run (status: failed)",
        str(controller): "is a 'ppo' run, which trains a controller, not a network",
    }
    for run_dir, message in cases.items():
        assert main(["export", run_dir, "--out", str(out)]) == 2
        printed = " ".join(capsys.readouterr().out.split())
        assert message in printed and "Traceback" not in printed
    assert main(["export", str(grown_run), "--out", str(tmp_path / "no-such-folder" / "x.pt2")]) == 2
    assert not out.exists() and not (tmp_path / "no-such-folder").exists()


def test_a_language_model_exports_with_any_batch_and_sequence_length_up_to_its_context(tmp_path) -> None:
    run_dir, out = tmp_path / "lm", tmp_path / "lm.pt2"
    run_heuristic(HeuristicRunConfig(task="pydoc-chars-tiny", epochs=1, controller="none"), run_dir)
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    model = torch.export.load(out).module()
    for batch, tokens in ((1, 64), (3, 5)):  # 64: pydoc-chars-tiny's context
        assert model(torch.zeros(batch, tokens, dtype=torch.long)).shape[:2] == (batch, tokens)
