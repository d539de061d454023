"""`esper train offline` end to end: recorded runs in, a policy `esper evaluate` runs out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from esper.cli import main
from esper.jobs.offline import OfflineRunConfig, run_offline
from esper.simic.policy import PolicyController
from esper.simic.recording import META_FILE, TRANSITIONS_FILE

EAGER = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A short eager heuristic run and two random evaluation episodes, both recorded."""
    root = tmp_path_factory.mktemp("recorded")
    config = root / "eager.json"
    config.write_text(json.dumps({"heuristic": EAGER}))
    heuristic = root / "heuristic"
    argv = ["train", "heuristic", "--task", "digits", "--epochs", "8", "--run-dir", str(heuristic), "--quiet"]
    assert main([*argv, "--config", str(config)]) == 0
    random = root / "random"
    assert main(["evaluate", "--policy", "random", "--episodes", "2", "--episode-length", "6", "--record", str(random)]) == 0
    return [heuristic, random]


def test_offline_run_trains_a_policy_that_evaluates(recorded: list[Path], tmp_path: Path) -> None:
    run = tmp_path / "offline"
    argv = ["train", "offline", "--from", *map(str, recorded), "--run-dir", str(run), "--updates", "200", "--quiet"]
    assert main([*argv, "--cql-weight", "0.5", "--seed", "3"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "offline" and summary["transitions"] == 7 + 2 * 5 and summary["episodes"] == 3
    assert json.loads((run / "config.json").read_text())["config"]["offline"] == {"updates": 200, "cql_weight": 0.5, "seed": 3}
    assert [m["update"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [0, 100, 199]
    payload = torch.load(run / "policy.pt", weights_only=True)
    assert payload["algorithm"] == "dqn" and payload["episode_length"] == 6  # the more common recorded length
    assert PolicyController.load(run / "policy.pt").info["algorithm"] == "dqn"
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--policy", str(run / "policy.pt"), "--episodes", "1", "--episode-length", "4", "--json", str(out)]) == 0
    assert sum(json.loads(out.read_text())["actions_per_episode"].values()) == 3


def test_layout_mismatch_names_the_difference(recorded: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(recorded[1], other)
    meta = json.loads((other / META_FILE).read_text())
    meta["blueprints"] = meta["blueprints"][:2]
    (other / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"blueprints differ.*only in .*other: \[\]"):
        run_offline(OfflineRunConfig(sources=[str(recorded[0]), str(other)]), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "bad input must not leave a half-made run folder"


def test_runs_without_transitions_are_refused(recorded: list[Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="recorded no transitions"):
        run_offline(OfflineRunConfig(sources=[str(tmp_path)]), tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(recorded[0] / META_FILE, empty / META_FILE)
    (empty / TRANSITIONS_FILE).write_text("")
    with pytest.raises(ValueError, match="holds no transitions"):
        run_offline(OfflineRunConfig(sources=[str(empty)]), tmp_path / "run")
    assert main(["train", "offline", "--from", str(empty), "--run-dir", str(tmp_path / "run")]) == 2


def test_offline_run_logs_its_losses_to_tensorboard(recorded: list[Path], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "offline"
    argv = ["train", "offline", "--from", *map(str, recorded), "--run-dir", str(run), "--updates", "201", "--quiet"]
    assert main([*argv, "--tensorboard"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["tensorboard"] is True
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss", "td_loss", "cql", "q_mean"):
        logged = accumulator.Scalars(f"offline/{name}")
        assert [e.step for e in logged] == [0, 100, 200]
        assert [e.value for e in logged] == pytest.approx([m[name] for m in metrics], rel=1e-6)


def test_recorded_rewards_can_be_reweighed_and_priced_offline(recorded: list[Path], tmp_path: Path) -> None:
    base = ["train", "offline", "--from", str(recorded[0]), "--updates", "10", "--quiet"]
    assert main([*base, "--run-dir", str(tmp_path / "as-recorded")]) == 0
    assert json.loads((tmp_path / "as-recorded" / "summary.json").read_text())["reward"] == "as recorded"
    run = tmp_path / "priced"
    assert main([*base, "--run-dir", str(run), "--flop-price-training", "2", "--terminal-weight", "50"]) == 0
    assert json.loads((run / "summary.json").read_text())["reward"] == "re-weighed (flop_price_training 2, terminal_weight 50)"
    reward = torch.load(run / "policy.pt", weights_only=True)["reward"]
    assert reward["flop_price_training"] == 2.0 and reward["terminal_weight"] == 50.0
    assert json.loads((run / "config.json").read_text())["config"]["reward"] == {"flop_price_training": 2.0, "terminal_weight": 50.0}


def test_only_weights_and_prices_can_be_changed_offline(recorded: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be changed offline"):
        OfflineRunConfig(sources=[str(recorded[0])], reward={"gamma": 0.5})
