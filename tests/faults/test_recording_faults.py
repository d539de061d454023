"""Faults in recordings and offline learning (issue 10, items 3 and 14).

Non-finite values in transitions.jsonl, as this Esper writes them (null) and as
older versions did (bare NaN / Infinity tokens), are skipped by `esper train
offline` and reported; damaged files and bad flags get one line with the
offending value and leave no run folder behind; the discount follows the shaping
recorded in transitions_meta.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from esper.cli import main
from esper.jobs import offline as offline_job
from esper.jobs.evaluate import evaluate
from esper.nissa import JsonlWriter, read_jsonl
from esper.nissa.run_folder import RunFolder
from esper.simic.recording import META_FILE, TRANSITIONS_FILE

EPISODES, LENGTH = 3, 6
STEPS = EPISODES * (LENGTH - 1)  # the last epoch's decision has no consequence: not recorded
UPDATES = ["--updates", "30", "--batch-size", "8", "--quiet"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are checked as printed: a wide console keeps rich from wrapping them."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-controller episodes recorded by `esper evaluate --record` (the real writer)."""
    folder = tmp_path_factory.mktemp("rec") / "random"
    evaluate("random", "digits", episodes=EPISODES, episode_length=LENGTH, record=folder)
    return folder


def copy_of(recording: Path, tmp_path: Path, name: str = "copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(recording, folder)
    return folder


def edit_lines(folder: Path, edits: dict[int, str]) -> None:
    """Replace whole lines (0-based) of transitions.jsonl with raw text."""
    path = folder / TRANSITIONS_FILE
    lines = path.read_text().splitlines()
    for index, text in edits.items():
        lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def rows_of(folder: Path) -> list[dict]:
    return read_jsonl(folder / TRANSITIONS_FILE)


def train(sources: list[Path], run_dir: Path, *flags: str) -> int:
    return main(["train", "offline", "--from", *map(str, sources), "--run-dir", str(run_dir), *UPDATES, *flags])


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------------------------ non-finite steps


def as_older_versions_wrote(row: dict, field: str, token: str) -> str:
    """The row as a JSON line with the bare token in `field` (its first value, for a list)."""
    value = row[field]
    marked = {**row, field: ["TOKEN", *value[1:]] if isinstance(value, list) else "TOKEN"}
    return json.dumps(marked).replace('"TOKEN"', token)


def test_bare_nan_tokens_of_older_files_are_skipped_counted_and_named(recording, tmp_path, capsys):
    folder = copy_of(recording, tmp_path)
    rows = rows_of(folder)
    assert rows[LENGTH - 2]["done"] and not rows[1]["done"]  # LENGTH - 2 ends episode 1
    edit_lines(folder, {
        1: as_older_versions_wrote(rows[1], "reward", "NaN"),
        2: as_older_versions_wrote(rows[2], "obs", "Infinity"),
        LENGTH - 2: as_older_versions_wrote(rows[LENGTH - 2], "next_obs", "-Infinity"),
    })  # fmt: skip
    assert "NaN" in (folder / TRANSITIONS_FILE).read_text()  # what older versions wrote on a fault
    run = tmp_path / "offline"
    code = main(["train", "offline", "--from", str(folder), "--run-dir", str(run), "--updates", "30", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = summary_of(run)
    # The reward and obs steps are skipped; the last step's next_obs is never used: repaired.
    assert summary["transitions"] == STEPS - 2
    assert summary["skipped_transitions"] == 2 and summary["skipped_by_field"] == {"obs": 1, "reward": 1}
    assert summary["repaired_transitions"] == 1
    assert f"{TRANSITIONS_FILE} line 2: reward" in summary["skipped_note"]
    assert "skipped 2 step(s) with non-finite values (obs 1, reward 1; first: " in out


def test_nulls_written_by_this_esper_are_skipped(recording, tmp_path):
    folder = copy_of(recording, tmp_path)
    rows = rows_of(folder)
    # A NaN loss in one epoch's observation: the next_obs of one step and the obs of the next.
    rows[2] = {**rows[2], "next_obs": [float("nan"), *rows[2]["next_obs"][1:]]}
    rows[3] = {**rows[3], "obs": [float("nan"), *rows[3]["obs"][1:]]}
    (folder / TRANSITIONS_FILE).unlink()
    with JsonlWriter(folder / TRANSITIONS_FILE) as writer:  # the strict writer every job uses
        for row in rows:
            writer.write(row)
    lines = (folder / TRANSITIONS_FILE).read_text().splitlines()
    assert '"next_obs": [null, ' in lines[2] and "NaN" not in "".join(lines)
    run = tmp_path / "offline"
    assert train([folder], run) == 0
    summary = summary_of(run)
    assert summary["transitions"] == STEPS - 2
    assert summary["skipped_by_field"] == {"next_obs": 1, "obs": 1}


def test_a_recording_with_nothing_finite_is_refused_without_a_folder(recording, tmp_path, capsys):
    folder = copy_of(recording, tmp_path)
    rows = rows_of(folder)
    edit_lines(folder, {i: json.dumps({**row, "reward": None}) for i, row in enumerate(rows)})
    run = tmp_path / "offline"
    assert train([folder], run) == 2
    out = capsys.readouterr().out
    assert "no transitions to learn from" in out and f"reward {STEPS}" in out
    assert not run.exists()


# ------------------------------------------------------------------ damaged files: values named


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda row: {**row, "obs": row["obs"][:3]}, "line 3: obs holds 3 values, the recorded layout has"),
        (lambda row: {**row, "action": 999}, "line 3: action 999 is not an action index"),
        (lambda row: {**row, "obs": ["x", *row["obs"][1:]]}, "line 3: obs holds 'x', not a number"),
        (lambda row: {k: v for k, v in row.items() if k != "done"}, "line 3: missing ['done']"),
    ],
)
def test_damaged_rows_are_named_with_their_value(recording, tmp_path, capsys, change, message):
    folder = copy_of(recording, tmp_path)
    edit_lines(folder, {2: json.dumps(change(rows_of(folder)[2]))})
    run = tmp_path / "offline"
    assert train([folder], run) == 2
    out = capsys.readouterr().out
    assert message in out, out
    assert not run.exists()


def test_corrupt_line_is_named(recording, tmp_path, capsys):
    folder = copy_of(recording, tmp_path)
    edit_lines(folder, {4: '{"obs": [1, 2'})
    assert train([folder], tmp_path / "offline") == 2
    assert "corrupt JSON on line 5" in capsys.readouterr().out
    assert not (tmp_path / "offline").exists()


# ------------------------------------------------------------------ the discount and the shaping


def test_the_recorded_shaping_gamma_is_the_default_discount(recording, tmp_path):
    run = tmp_path / "offline"
    assert train([recording], run) == 0
    recorded = json.loads((recording / META_FILE).read_text())["shaping_gamma"]
    assert summary_of(run)["gamma"] == recorded and summary_of(run)["shaping"] == f"recorded, gamma {recorded}"
    assert torch.load(run / "policy.pt", weights_only=True)["offline"]["gamma"] == recorded


def test_another_discount_is_refused_with_the_flags_to_set(recording, tmp_path, capsys):
    run = tmp_path / "offline"
    assert train([recording], run, "--gamma", "0.95") == 2
    out = capsys.readouterr().out
    assert "shaping computed with gamma 0.99" in out and "not --gamma 0.95" in out
    assert "leave --gamma unset" in out and "--drop-shaping" in out
    assert not run.exists()


def test_dropping_the_shaping_allows_any_discount_and_removes_the_term(recording, tmp_path, monkeypatch):
    learned = {}
    real_train = offline_job.train_offline

    def spy(data, config):
        learned["reward"], learned["gamma"] = data.reward.clone(), config.gamma
        return real_train(data, config)

    monkeypatch.setattr(offline_job, "train_offline", spy)
    run = tmp_path / "offline"
    assert train([recording], run, "--gamma", "0.95", "--drop-shaping") == 0
    rows = rows_of(recording)
    # Both potential-based terms go: the stage shaping and the contribution (a potential on the credit).
    without_shaping = [r["reward"] - r["reward_components"]["shaping"] - r["reward_components"]["contribution"] for r in rows]
    torch.testing.assert_close(learned["reward"], torch.tensor(without_shaping, dtype=torch.float32))
    assert learned["gamma"] == 0.95 and summary_of(run)["shaping"] == "dropped"


@pytest.mark.parametrize("written", [None, 1, 99])
def test_a_recording_of_another_run_file_format_is_refused_in_one_line(recording, tmp_path, capsys, written):
    """Files an older Esper wrote (no format number: format 1, or an older one) or a newer one."""
    folder = copy_of(recording, tmp_path)
    meta = json.loads((folder / META_FILE).read_text())
    meta.pop("run_format")
    if written is not None:
        meta["run_format"] = written
    meta["esper_version"] = "0.0.9"
    (folder / META_FILE).write_text(json.dumps(meta))
    run = tmp_path / "offline"
    assert train([folder, recording], run) == 2
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert f"{folder / META_FILE} was written by Esper 0.0.9 in run-file format {written or 1}; " in line
    assert ("upgrade Esper" if written == 99 else "run it again with this Esper") in line
    assert not run.exists()


# ------------------------------------------------------------------ the run folder


def test_a_failure_in_training_leaves_no_folder(recording, tmp_path, monkeypatch, capsys):
    def diverge(data, config):
        raise RuntimeError("offline training diverged at update 3: loss nan")

    monkeypatch.setattr(offline_job, "train_offline", diverge)
    run = tmp_path / "offline"
    assert train([recording], run) == 2
    assert "diverged at update 3: loss nan" in capsys.readouterr().out
    assert not run.exists()


def test_a_failure_while_writing_removes_what_was_written(recording, tmp_path, monkeypatch):
    def full_disk(self, payload, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(RunFolder, "save_checkpoint", full_disk)
    made = tmp_path / "made"
    with pytest.raises(OSError, match="No space left"):
        offline_job.run_offline(offline_job.OfflineRunConfig(sources=[str(recording)], offline={"updates": 5}), made)
    assert not made.exists()
    empty = tmp_path / "empty"  # a folder the user made for the run: kept, and left empty again
    empty.mkdir()
    with pytest.raises(OSError, match="No space left"):
        offline_job.run_offline(offline_job.OfflineRunConfig(sources=[str(recording)], offline={"updates": 5}), empty)
    assert empty.is_dir() and not any(empty.iterdir())


def test_a_used_run_dir_is_refused_before_training_without_resume_advice(recording, tmp_path, capsys):
    run = tmp_path / "offline"
    assert train([recording], run) == 0
    before = sorted(p.name for p in run.iterdir())
    assert train([recording], run) == 2
    out = capsys.readouterr().out
    assert "is not empty; choose another --run-dir" in out and "--resume" not in out
    assert sorted(p.name for p in run.iterdir()) == before
    file = tmp_path / "a-file"
    file.write_text("")
    assert train([recording], file / "run") == 2
    assert "is a file, not a folder" in capsys.readouterr().out


# ------------------------------------------------------------------ strict files from real jobs


def test_every_file_a_recording_run_writes_is_strict_json(recording, tmp_path):
    run = tmp_path / "offline"
    assert train([recording], run) == 0

    def refuse(token: str):
        raise ValueError(f"bare {token} is not JSON")

    for path in [*recording.iterdir(), *run.iterdir()]:
        if path.suffix == ".json":
            json.loads(path.read_text(), parse_constant=refuse)
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line, parse_constant=refuse)


def test_report_and_runs_read_metrics_with_nan_from_older_versions(tmp_path):
    run = tmp_path / "runs" / "grown"
    assert main(["train", "heuristic", "--task", "digits", "--epochs", "3", "--run-dir", str(run), "--quiet"]) == 0
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    # A rolled-back epoch's loss, as versions before the strict rule wrote it.
    metrics[1] = metrics[1].replace('"train_loss": ', '"train_loss": NaN, "was": ', 1)
    (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.html").exists()
    assert main(["runs", str(tmp_path / "runs")]) == 0
