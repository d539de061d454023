"""`esper report`: the page references every figure, figures are real PNGs, partial runs say what is missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from esper.cli import main
from esper.jobs import report_figures as figures
from esper.jobs.html_report import write_report
from esper.jobs.report import format_flops
from esper.jobs.run_data import load_run
from esper.nissa import read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = "/usr/bin/chromium"


def _words(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def _figures(page: Path) -> list[str]:
    """Figure files the page references; asserts each exists beside it and is a non-empty PNG."""
    html = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    for source in sources:
        figure = page.parent / source
        assert not Path(source).is_absolute() and figure.is_file(), source
        assert figure.read_bytes().startswith(PNG_SIGNATURE), source
        assert figure.stat().st_size > 5_000, f"{source} is suspiciously small"
    assert sorted(sources) == sorted(p.name for p in page.parent.glob("*.png")), (
        "unreferenced or missing figures"
    )
    return sources


def test_report_of_a_real_run_references_every_figure(heuristic_run: Path, tmp_path: Path) -> None:
    page = write_report([heuristic_run], tmp_path / "report")
    assert page == tmp_path / "report" / "report.html"
    assert sorted(_figures(page)) == ["accuracy-flops.png", "accuracy.png", "lifecycle.png", "params.png"]
    html = page.read_text(encoding="utf-8")
    assert "final val accuracy (host only)" in html  # the run has a baseline
    summary = json.loads((heuristic_run / "summary.json").read_text())
    assert f"<td>training FLOPs</td><td>{format_flops(summary['flops']['training'])}</td>" in html
    assert "<td>inference FLOPs per sample</td>" in html and "<td>fossils per slot</td>" in html
    assert "Per blueprint" in html and "<td>norm</td>" in html  # the seed planted at epoch 1
    assert "Incomplete run" not in html
    assert "<script" not in html and "http" not in html  # self-contained


def test_cli_report_defaults_to_a_folder_inside_the_run(
    heuristic_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(heuristic_run)]) == 0
    assert (heuristic_run / "report" / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out


def test_interrupted_run_report_says_what_is_missing(interrupted_run: Path, tmp_path: Path) -> None:
    page = write_report([interrupted_run], tmp_path)
    html = page.read_text(encoding="utf-8")
    assert "Incomplete run" in html
    assert "summary.json is missing: the run stopped after 4 of 8 epochs" in html
    assert "baseline.json is missing" in html
    assert "interrupted at epoch 4" in html
    assert len(_figures(page)) == 4


def test_run_that_stopped_before_its_first_epoch_still_gets_a_page(tmp_path: Path) -> None:
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(
        '{"mode": "heuristic", "config": {"task": "digits"}, "epochs": 5, "run_format": 3}'
    )
    html = write_report([run_dir]).read_text(encoding="utf-8")
    assert "metrics.jsonl is missing" in html and "stopped after 0 of 5 epochs" in html
    assert html.count("no data in this run") == 4 and "<img" not in html


def test_curves_can_be_drawn_against_the_training_flops_spent(heuristic_run: Path) -> None:
    run = load_run(heuristic_run)
    metrics = read_jsonl(heuristic_run / "metrics.jsonl")
    spent = [m["flops"]["cumulative_training"] for m in metrics]
    fig = figures.accuracy_loss(run, by="flops")
    accuracy = fig.axes[0]
    curves = {line.get_label(): list(line.get_xdata()) for line in accuracy.get_lines()}
    assert curves["val (grown)"] == spent and spent == sorted(spent)
    assert curves["val (host only)"] == run.baseline["cumulative_training_flops"]
    assert accuracy.get_xlabel() == "cumulative training FLOPs"


def test_ppo_run_report_plots_training_rewards_and_actions(ppo_run: Path, tmp_path: Path) -> None:
    page = write_report([ppo_run], tmp_path)
    assert sorted(_figures(page)) == ["actions.png", "ppo.png", "rewards.png"]
    html = page.read_text(encoding="utf-8")
    assert "<td>final mean return</td><td>0.6000</td>" in html
    assert "host only" not in html and "governor rollbacks" not in html  # heuristic-run rows


def test_several_runs_are_overlaid_and_compared_side_by_side(
    heuristic_run: Path,
    interrupted_run: Path,
    ppo_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(heuristic_run), str(interrupted_run), str(ppo_run)]) == 0
    page = tmp_path / "report" / "report.html"
    figures = _figures(page)
    assert "comparison.png" in figures and "decisions.png" in figures  # the two heuristic runs grew
    assert {"run1-lifecycle.png", "run2-lifecycle.png", "run3-ppo.png"} <= set(figures)
    header = re.search(
        r"<h2>Comparison</h2>\s*<table><thead><tr>(.*?)</tr>", page.read_text(encoding="utf-8")
    )
    assert header is not None
    assert header.group(1) == "<th>measure</th><th>grown</th><th>interrupted</th><th>ppo</th>"


def test_a_folder_that_is_not_a_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an Esper run folder" in _words(capsys.readouterr().out)
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _words(capsys.readouterr().out)
    assert not (tmp_path / "report").exists()


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium not installed: apt-get install chromium"
)
def test_page_renders_in_headless_chromium(heuristic_run: Path, tmp_path: Path) -> None:
    page = write_report([heuristic_run], tmp_path / "report")
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert pixels.std() > 0.05 and len(colours) > 100, "the screenshot is blank"


def test_planted_seeds_are_the_runs_germinations_with_their_outcomes(heuristic_run: Path) -> None:
    """The decisions figure's data: one entry per germinated seed, its outcome as summary.json counts it."""
    run = load_run(heuristic_run)
    planted = figures.planted_seeds(run)
    counts = run.summary["seeds"]
    assert len(planted) == counts["germinated"] >= 1
    assert sum(outcome == "fossilized" for *_, outcome in planted) == counts["fossilized"]
    assert sum(outcome == "culled" for *_, outcome in planted) == counts["culled"]
    assert {slot for _, slot, _, _ in planted} <= set(run.summary["final_slots"])
    assert figures.growth_decisions({"one": [run], "nothing": []}) is not None
    assert figures.growth_decisions({"nothing": []}) is None
