"""`esper compare` under faults: a full disk is one line with the file and how to continue, and a
rerun that fails on a damaged arm run leaves what was written (compare.json) as it was."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest

from esper.cli import main

COMPARE = ["compare", "--task", "digits", "--seeds", "1", "--epochs", "2", "--arms", "host-only", "grown", "--quiet"]


def _error_line(capsys, code: int) -> str:
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert code == 2, output
    assert "Traceback" not in output and "enforce fail" not in output
    assert output.startswith("error: ") and len(output.splitlines()) == 1, output
    return " ".join(output.split())


class _NearlyFullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: a write past it takes what fits (as write(2) does
    on a nearly full disk), the next one fails with ENOSPC."""

    room = 600

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if _NearlyFullDisk.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = min(len(data), _NearlyFullDisk.room)
        _NearlyFullDisk.room -= taken
        return super().write(data[:taken])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "done"
    assert main([*COMPARE, "--out", str(out)]) == 0
    return out


def test_a_full_disk_while_an_arm_saves_a_checkpoint_is_one_line_with_the_file(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "cmp"
    real_open = Path.open

    def nearly_full(self, mode="r", *args, **kwargs):
        if self.name.endswith(".pt.tmp") and self.parent.parent.name == "grown":
            return _NearlyFullDisk(str(self), "w")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", nearly_full)
    line = _error_line(capsys, main([*COMPARE, "--out", str(out)]))
    assert f"{out / 'seed-0' / 'grown' / 'checkpoints'}" in line and "No space left on device" in line
    assert line.endswith(f"continue with: esper compare --resume {out}")
    assert list(out.rglob("*.tmp")) == []
    monkeypatch.undo()
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("damage", ['{"status": "compl', "{}"], ids=["not-json", "no-keys"])
def test_a_damaged_arm_run_fails_the_rerun_before_anything_is_rewritten(damage, finished, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    shutil.copytree(finished, out)
    (out / "seed-0" / "grown" / "summary.json").write_text(damage)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = _error_line(capsys, main(["compare", "--resume", str(out), "--quiet"]))
    assert str(out / "seed-0" / "grown") in line and f"remove {out / 'seed-0' / 'grown'} to train it again" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # compare.json still complete
