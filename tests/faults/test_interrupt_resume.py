"""kill -9 and Ctrl-C mid-run, then --resume: the same metrics as a run never stopped.

The runs are real `python -m esper` processes, stopped from outside once a few
epochs (rounds) are logged. metrics.jsonl is compared byte for byte after the
resume, except for each line's wall-clock "seconds". Ctrl-C must print the exact
command that continues the run, with the real run folder (also the default one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import esper
from esper.cli import main
from esper.tolaria import MorphogeneticTrainer

# Named, not "all of the topology": the registry of this process may hold test-only blueprints
# that the `python -m esper` processes do not have.
BLUEPRINTS = ["--blueprints", "norm", "attention", "depthwise", "conv_light", "conv_heavy"]
HEURISTIC = ["train", "heuristic", "--epochs", "30", "--checkpoint-every", "2", "--seed", "2", *BLUEPRINTS, "--quiet"]
PPO = ["train", "ppo", "--rounds", "4", "--envs", "2", "--episode-length", "3", "--update-epochs", "1",
       "--checkpoint-every", "1", "--seed", "2", *BLUEPRINTS, "--quiet"]  # fmt: skip


def _metrics(run_dir: Path) -> str:
    return re.sub(r'"seconds": [0-9.eE+-]+', '"seconds": _', (run_dir / "metrics.jsonl").read_text())


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _stop_midway(argv: list[str], run_dir: Path, after_lines: int, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Run `python -m esper ARGV --run-dir RUN_DIR`; send `sig` once metrics.jsonl has `after_lines` lines."""
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    command = [sys.executable, "-m", "esper", "--threads", "1", *argv, "--run-dir", str(run_dir)]
    # As a run typed at a terminal: a test session started in the background (`cmd &` without job
    # control) ignores SIGINT, a child inherits an ignored signal, and Python then installs no
    # Ctrl-C handler. A handled signal is reset to the default in the child, so handle it here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while _lines(run_dir / "metrics.jsonl") < after_lines and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run logged nothing within two minutes")
        time.sleep(0.005)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.fixture(scope="module")
def heuristic_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "heuristic"
    assert main([*HEURISTIC, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def ppo_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "ppo"
    assert main([*PPO, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_heuristic_stopped_midway_resumes_to_the_same_metrics(sig, heuristic_reference, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    stopped = _stop_midway(HEURISTIC, run_dir, after_lines=5, sig=sig)
    assert stopped.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), stopped.stderr
    assert not (run_dir / "summary.json").exists()  # it really stopped midway
    if sig == signal.SIGINT:
        assert "Traceback" not in stopped.stdout + stopped.stderr
        assert f"continue with: esper train heuristic --resume {run_dir}" in " ".join(stopped.stdout.split())
    assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    assert _metrics(run_dir) == _metrics(heuristic_reference)
    assert list(run_dir.rglob("*.tmp")) == []  # a write cut off by kill -9 is cleaned up on resume


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_ppo_stopped_midway_resumes_to_the_same_metrics(sig, ppo_reference, tmp_path) -> None:
    run_dir = tmp_path / "run"
    stopped = _stop_midway(PPO, run_dir, after_lines=1, sig=sig)
    assert stopped.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), stopped.stderr
    assert not (run_dir / "summary.json").exists()
    if sig == signal.SIGINT:
        assert "Traceback" not in stopped.stdout + stopped.stderr
        assert f"continue with: esper train ppo --resume {run_dir}" in " ".join(stopped.stdout.split())
    assert main(["train", "ppo", "--resume", str(run_dir), "--quiet"]) == 0
    assert _metrics(run_dir) == _metrics(ppo_reference)


def test_ctrl_c_names_the_default_run_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    real_end_epoch = MorphogeneticTrainer.end_epoch

    def interrupt_at_epoch_3(self):
        real_end_epoch(self)
        if self.epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(MorphogeneticTrainer, "end_epoch", interrupt_at_epoch_3)
    assert main(["train", "heuristic", "--epochs", "4", "--checkpoint-every", "1", "--quiet"]) == 130
    output = " ".join(capsys.readouterr().out.split())
    match = re.search(r"continue with: (esper train heuristic --resume (runs/heuristic-digits-\d{8}-\d{6}))$", output)
    assert match is not None, output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    command = match.group(1).split()[1:]  # the very command printed, without "esper"
    assert main([*command, "--quiet"]) == 0
    assert _lines(tmp_path / match.group(2) / "metrics.jsonl") == 4


def test_ctrl_c_before_the_run_folder_exists(tmp_path, monkeypatch, capsys) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("esper.jobs.heuristic.build_trainer", interrupted)
    assert main([*HEURISTIC, "--run-dir", str(tmp_path / "run")]) == 130
    assert "nothing was written" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


# A run whose first Ctrl-C arrives at the end of epoch 2 and whose second arrives while the first
# is being reported (two Ctrl-C within a millisecond land in whatever runs then).
_TWO_CTRL_C = """
import os, signal, sys
from esper import cli
from esper.tolaria import MorphogeneticTrainer

def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10_000):  # the handler runs between bytecodes
        pass

real_end_epoch, real_rank_zero = MorphogeneticTrainer.end_epoch, cli._is_rank_zero

def end_epoch(self):
    real_end_epoch(self)
    if self.epoch == 2:
        ctrl_c()

def rank_zero():
    ctrl_c()
    return real_rank_zero()

MorphogeneticTrainer.end_epoch, cli._is_rank_zero = end_epoch, rank_zero
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_second_ctrl_c_while_the_first_is_handled_changes_nothing(tmp_path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    command = [sys.executable, "-c", _TWO_CTRL_C, "train", "heuristic", "--epochs", "4", "--checkpoint-every", "1", *BLUEPRINTS,
               "--run-dir", str(run_dir), "--quiet"]  # fmt: skip
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see _stop_midway)
    try:
        stopped = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    finally:
        signal.signal(signal.SIGINT, previous)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 130, output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert f"continue with: esper train heuristic --resume {run_dir}" in " ".join(output.split())
    assert main(["train", "heuristic", "--resume", str(run_dir), "--quiet"]) == 0
    assert _lines(run_dir / "metrics.jsonl") == 4
