"""Disk and permission faults: one line with the path and the OS reason, and how to continue.

Tests run as root in CI, where permission bits stop nothing, so the faults are
injected: the OSError the OS would raise is raised from the write path itself
(opening a file, writing a checkpoint, renaming into place). After each fault
what was written must still be valid, no temporary file is left, and once the
fault is gone `--resume` finishes the run with the metrics of a run never stopped.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from esper.cli import main
from esper.jobs import evaluate as evaluate_job
from esper.nissa import JsonlWriter, read_jsonl

EPOCHS = 6
# Named, not "all of the topology": other tests may register test-only blueprints in this process.
BLUEPRINTS = ["--blueprints", "norm", "attention", "depthwise", "conv_light", "conv_heavy"]
TRAIN = ["train", "heuristic", "--epochs", str(EPOCHS), "--checkpoint-every", "2", "--seed", "5", *BLUEPRINTS, "--quiet"]


def _one_error_line(capsys, code: int, *expected: str) -> str:
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert code == 2, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert lines[-1].startswith("error: ") and all(not line.startswith("error") for line in lines[:-1]), output
    for text in expected:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def _metrics(run_dir: Path) -> str:
    return re.sub(r'"seconds": [0-9.eE+-]+', '"seconds": _', (run_dir / "metrics.jsonl").read_text())


def _no_temporary_files(run_dir: Path) -> None:
    assert [p for p in run_dir.rglob("*.tmp")] == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    assert main([*TRAIN, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _resume_matches(run_dir: Path, reference: Path, capsys) -> None:
    """The fault is gone: the command the message gave finishes the run as if never stopped."""
    assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    assert _metrics(run_dir) == _metrics(reference)
    _no_temporary_files(run_dir)


def _fail_opening(monkeypatch, matches, err: int) -> None:
    """Path.open raises the OSError `err` for paths `matches(path, mode)` accepts."""
    real_open = Path.open

    def faulty_open(self, mode="r", *args, **kwargs):
        if matches(self, mode):
            raise OSError(err, os.strerror(err), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", faulty_open)


def test_full_disk_while_writing_a_checkpoint(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if obj.get("trainer", {}).get("epoch") == 4 and "controller" in obj:  # checkpoints/epoch_0004.pt
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_full)
    code = main([*TRAIN, "--run-dir", str(run_dir)])
    line = _one_error_line(capsys, code, str(run_dir / "checkpoints" / "epoch_0004.pt"), "No space left on device",
                           f"esper train heuristic --resume {run_dir}")  # fmt: skip
    assert line.count("\n") == 0
    _no_temporary_files(run_dir)
    # What was written stays valid: the logs parse, the earlier checkpoint loads, no half checkpoint.
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 4
    assert not (run_dir / "checkpoints" / "epoch_0004.pt").exists()
    assert "trainer" in torch.load(run_dir / "checkpoints" / "epoch_0002.pt", weights_only=True)
    monkeypatch.undo()
    _resume_matches(run_dir, reference, capsys)


def test_full_disk_while_logging_metrics(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    real_write = JsonlWriter.write
    written = []

    def write_until_full(self, record):
        if self.path.name == "metrics.jsonl":
            written.append(record)
            if len(written) == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, record)

    monkeypatch.setattr(JsonlWriter, "write", write_until_full)
    code = main([*TRAIN, "--run-dir", str(run_dir)])
    _one_error_line(capsys, code, str(run_dir), "No space left on device", f"esper train heuristic --resume {run_dir}")
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 4
    monkeypatch.undo()
    _resume_matches(run_dir, reference, capsys)


def test_immutable_metrics_file(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    _fail_opening(monkeypatch, lambda path, mode: path.name == "metrics.jsonl" and "a" in mode, errno.EPERM)
    code = main([*TRAIN, "--run-dir", str(run_dir)])
    _one_error_line(capsys, code, str(run_dir / "metrics.jsonl"), "Operation not permitted",
                    f"esper train heuristic --resume {run_dir}")  # fmt: skip
    monkeypatch.undo()
    _resume_matches(run_dir, reference, capsys)


def test_unwritable_checkpoints_folder(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    _fail_opening(monkeypatch, lambda path, mode: path.parent.name == "checkpoints" and "w" in mode, errno.EACCES)
    code = main([*TRAIN, "--run-dir", str(run_dir)])
    _one_error_line(capsys, code, str(run_dir / "checkpoints" / "epoch_0002.pt"), "Permission denied",
                    f"esper train heuristic --resume {run_dir}")  # fmt: skip
    assert list((run_dir / "checkpoints").iterdir()) == []
    monkeypatch.undo()
    _resume_matches(run_dir, reference, capsys)


def test_failed_rename_leaves_the_previous_file_intact(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "checkpoints" / "final.pt").unlink()
    summary_before = (run_dir / "summary.json").read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "summary.json":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    code = main(["train", "heuristic", "--resume", str(run_dir), "--quiet"])
    _one_error_line(capsys, code, str(run_dir / "summary.json"), "Input/output error", "--resume")
    assert (run_dir / "summary.json").read_bytes() == summary_before
    _no_temporary_files(run_dir)


def test_read_only_run_folder_on_resume_loses_nothing(reference, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "checkpoints" / "final.pt").unlink()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    _fail_opening(monkeypatch, lambda path, mode: "w" in mode or "a" in mode, errno.EROFS)
    code = main(["train", "heuristic", "--resume", str(run_dir), "--quiet"])
    _one_error_line(capsys, code, str(run_dir), "Read-only file system", f"esper train heuristic --resume {run_dir}")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_read_only_parent_of_a_new_run(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if tmp_path / "ro" in (self, *self.parents):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code = main([*TRAIN, "--run-dir", str(run_dir)])
    line = _one_error_line(capsys, code, "Read-only file system", "Nothing was written")
    assert "--resume" not in line
    assert not (tmp_path / "ro").exists()


def test_a_parent_that_is_a_file_keeps_its_brackets(tmp_path, capsys) -> None:
    blocker = tmp_path / "runs[old]"
    blocker.write_text("not a folder")
    code = main([*TRAIN, "--run-dir", str(blocker / "run")])
    _one_error_line(capsys, code, str(blocker), "Not a directory")
    assert blocker.read_text() == "not a folder"


def test_evaluate_checks_its_outputs_before_the_work(tmp_path, monkeypatch, capsys) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran although its output cannot be written")

    monkeypatch.setattr(evaluate_job, "play", never)
    missing = tmp_path / "missing" / "dir" / "out.json"
    code = main(["evaluate", "--policy", "heuristic", "--episodes", "1", "--json", str(missing)])
    _one_error_line(capsys, code, str(missing), "does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["evaluate", "--policy", "heuristic", "--episodes", "1", "--record", str(blocker / "rec")])
    _one_error_line(capsys, code, str(blocker), "is a file")
    code = main(["evaluate", "--policy", "heuristic", "--episodes", "1", "--json", str(tmp_path)])
    _one_error_line(capsys, code, str(tmp_path), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_evaluate_prints_the_table_even_if_the_report_cannot_be_written(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out.json"
    _fail_opening(monkeypatch, lambda path, mode: path.name == "out.json.tmp", errno.ENOSPC)
    code = main(["evaluate", "--policy", "heuristic", "--episodes", "1", "--episode-length", "3", "--json", str(out)])
    captured = capsys.readouterr().out
    assert code == 2
    assert "final val accuracy" in captured  # the finished work is shown
    assert captured.strip().splitlines()[-1].startswith("error: ")
    assert "No space left on device" in captured and str(out) in captured
    assert list(tmp_path.iterdir()) == []


def test_report_checks_its_output_folder_first(tmp_path, capsys) -> None:
    blocker = tmp_path / "report"
    blocker.write_text("")
    code = main(["report", str(tmp_path / "no-run"), "--out", str(blocker)])
    _one_error_line(capsys, code, str(blocker), "is a file")


def test_full_disk_in_a_ppo_run_names_the_policy_and_the_resume_command(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "ppo"
    argv = ["train", "ppo", "--rounds", "3", "--envs", "2", "--episode-length", "3", "--update-epochs", "1",
            "--checkpoint-every", "1", *BLUEPRINTS, "--quiet", "--run-dir", str(run_dir)]  # fmt: skip

    def policy_after_two_rounds(path: Path, mode: str) -> bool:
        return path.name == "policy.pt.tmp" and len(read_jsonl(run_dir / "metrics.jsonl")) == 2

    _fail_opening(monkeypatch, policy_after_two_rounds, errno.ENOSPC)
    code = main(argv)
    _one_error_line(capsys, code, str(run_dir / "policy.pt"), "No space left on device",
                    f"esper train ppo --resume {run_dir}")  # fmt: skip
    _no_temporary_files(run_dir)
    monkeypatch.undo()
    assert main(["train", "ppo", "--resume", str(run_dir), "--quiet"]) == 0
    assert [m["round"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]
