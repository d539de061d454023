"""`esper report DIR` on a compare folder: the arms' table, differences, targets and figures.

The folder is written here in the format the arm runs write (metrics.jsonl lines with
`val_accuracy`, `val_loss` and `flops`; summary.json with `params`, `flops` and
`architecture`), with known numbers, so the page can be checked against them; the
end-to-end test of `esper compare` (test_compare_job.py) makes a real one.
"""

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
from esper.jobs.compare import CompareConfig, CompareFolder, collect, planned_arms, write_results
from esper.jobs.html_report import write_report

EPOCHS = 4
# Final accuracy per arm and seed, training FLOPs per epoch, parameters.
ARMS = {
    "host-only": ([0.90, 0.91, 0.92], 10.0e9, 1_702),
    "grown": ([0.95, 0.97, 0.96], 12.0e9, 5_534),
    "scheduled": ([0.94, 0.95, 0.96], 11.0e9, 5_534),  # on a task with a growth plan (both here)
    "static-final": ([0.96, 0.96, 0.99], 20.0e9, 5_534),
    "static-final-matched": ([0.95, 0.95, 0.95], 20.0e9, 5_534),
    "static-reference": ([0.97, 0.975, 0.98], 200.0e9, 24_058),
    "static-reference-matched": ([0.93, 0.94, 0.95], 200.0e9, 24_058),
}
# Arms stopped by a training-FLOPs cap (the grown run's 48 G): their epochs.
CAPPED_EPOCHS = {"static-final-matched": 3, "static-reference-matched": 1}
CHROMIUM = "/usr/bin/chromium"


def _write_arm_run(path: Path, final: float, per_epoch: float, params: int, epochs: int) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"mode": "heuristic", "config": {"task": "mnist5k-tiny"}, "epochs": EPOCHS, "run_format": 3}))
    lines = []
    for epoch in range(epochs):
        accuracy = final - 0.1 * (epochs - 1 - epoch) / epochs
        flops = {"training": per_epoch, "validation": per_epoch / 10, "counterfactual": 0.0,
                 "cumulative_training": per_epoch * (epoch + 1), "cumulative_validation": per_epoch * (epoch + 1) / 10,
                 "cumulative_counterfactual": 0.0, "inference_per_sample": params * 60.0}  # fmt: skip
        lines.append({"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1.0 - accuracy, "flops": flops})
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (path / "events.jsonl").write_text("")
    summary = {
        "mode": "heuristic", "task": "mnist5k-tiny", "status": "complete", "epochs": EPOCHS,
        "final_val_accuracy": final,
        "params": {"host": params, "added": 0, "total": params},
        "flops": {"inference_per_sample": params * 60.0, "training": per_epoch * epochs,
                  "validation": per_epoch * epochs / 10, "counterfactual": 0.0},
        "architecture": {"host": "CNNHost", "slots": {"block2": ["inverted_bottleneck"], "block3": []}},
    }  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))


def make_compare_folder(root: Path, task: str = "mnist5k-tiny") -> Path:
    """A finished 3-seed compare of `task` with the numbers of ARMS."""
    config = CompareConfig(task=task, seeds=3, epochs=EPOCHS)
    folder = CompareFolder(root)
    root.mkdir(parents=True)
    folder.config_path.write_text(json.dumps({"mode": "compare", "config": config.to_dict(), "run_format": 3}))
    arms = planned_arms(config)
    for seed in config.seed_list:
        for arm in arms:
            finals, per_epoch, params = ARMS[arm]
            epochs = CAPPED_EPOCHS.get(arm, EPOCHS)
            _write_arm_run(folder.run_path(seed, arm), finals[seed], per_epoch, params, epochs)
    write_results(folder, config, collect(folder, config, arms), 600.0, [])
    return root


@pytest.fixture()
def compare_dir(tmp_path: Path) -> Path:
    return make_compare_folder(tmp_path / "compare")


def _figures(page: Path) -> list[str]:
    html = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    for source in sources:
        data = (page.parent / source).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, source
    return sorted(sources)


def _cells(html: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    row = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", html)
    assert row is not None, first
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_compare_json_holds_every_arm_with_the_known_numbers(compare_dir: Path) -> None:
    results = json.loads((compare_dir / "compare.json").read_text())
    assert results["status"] == "complete" and results["runs_done"] == 21
    assert list(results["arms"]) == list(ARMS)
    grown = results["arms"]["grown"]
    assert grown["final_val_accuracy"]["mean"] == pytest.approx(0.96)
    assert grown["training_flops"]["mean"] == pytest.approx(48e9)
    assert results["grown_training_flops_over_static_final"]["mean"] == pytest.approx(0.6)
    assert results["arms"]["static-final-matched"]["training_flops"]["mean"] == pytest.approx(60e9)
    assert results["metrics"] == ["val_accuracy"]


def test_report_of_a_compare_folder_shows_arms_targets_and_figures(compare_dir: Path, capsys) -> None:
    assert main(["report", str(compare_dir)]) == 0
    page = compare_dir / "report" / "report.html"
    assert "report.html" in "".join(capsys.readouterr().out.split())
    assert _figures(page) == ["metric_vs_flops.png", "metric_vs_params.png"]
    html = page.read_text(encoding="utf-8")
    assert _cells(html, "grown")[:3] == ["3", "96.00 ± 0.58", "96.00 ± 0.58"]
    assert _cells(html, "static-reference")[3] == "24,058"  # params
    assert _cells(html, "grown - host-only")[:2] == ["3", "+5.00 ± 0.58"]
    assert _cells(html, "grown training FLOPs / static-final&#x27;s")[1] == "60.0 %"  # the same share on every seed
    assert "missed (aim 50%: missed)" not in html and "met (aim 50%: missed)" in html
    assert "Incomplete compare" not in html and "val loss" not in html
    assert html.count("<td>complete</td>") == 21  # the arm runs table
    assert "<script" not in html and "http" not in html


def test_a_language_task_is_judged_on_loss_too(tmp_path: Path) -> None:
    folder = make_compare_folder(tmp_path / "lm", task="pydoc-chars-tiny")
    html = write_report([folder]).read_text(encoding="utf-8")
    assert "final val loss" in html and "best val loss" in html
    wide = imread(folder / "report" / "metric_vs_flops.png")
    assert wide.shape[1] > 1000  # two panels: accuracy and loss


def test_an_incomplete_compare_says_how_to_continue(compare_dir: Path, tmp_path: Path) -> None:
    (compare_dir / "compare.json").unlink()
    shutil.rmtree(compare_dir / "seed-2" / "static-reference")
    (compare_dir / "seed-2" / "static-final-matched" / "summary.json").unlink()
    html = write_report([compare_dir], tmp_path / "page").read_text(encoding="utf-8")
    assert f"esper compare --resume {compare_dir}" in html
    assert "<td>new</td>" in html and "<td>started</td>" in html
    assert len(_figures(tmp_path / "page" / "report.html")) == 2  # from the runs that finished


def test_a_compare_folder_is_reported_alone(compare_dir: Path, tmp_path: Path, capsys) -> None:
    run = compare_dir / "seed-0" / "grown"
    assert main(["report", str(compare_dir), str(run), "--out", str(tmp_path / "r")]) == 2
    assert "reported on its own" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium not installed: apt-get install chromium")
def test_compare_page_renders_in_headless_chromium(compare_dir: Path, tmp_path: Path) -> None:
    page = write_report([compare_dir], tmp_path / "report")
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
        page.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = imread(shot)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert pixels.std() > 0.05 and len(colours) > 100, "the screenshot is blank"
