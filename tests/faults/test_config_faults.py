"""Bad config values: one line naming the key, the expected type and the value; exit 2; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.cli import main
from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import heuristic_config
from esper.jobs.ppo import PPORunConfig
from esper.runtime import get_task


def _fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    """`esper ARGV` exits 2 with one `error:` line holding every `expected` text."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: ")
    for text in expected:
        assert text in output, output
    return output


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epochs": "ten"}, ("'epochs'", "integer", "'ten'")),
        ({"seed": 1.5}, ("'seed'", "integer", "1.5")),
        ({"epochs": 2.5}, ("'epochs'", "integer", "2.5")),
        ({"epochs": True}, ("'epochs'", "integer", "True")),
        ({"slots": "block2"}, ("'slots'", "list", "'block2'")),
        ({"baseline": "yes"}, ("'baseline'", "boolean", "'yes'")),
        ({"heuristic": {"tracker": {"warmup_epochs": "3"}}}, ("'heuristic.tracker.warmup_epochs'", "integer", "'3'")),
        ({"heuristic": {"fossilize_above": "high"}}, ("'heuristic.fossilize_above'", "number", "'high'")),
        ({"heuristic": {"tracker": {"warmup": 1}}}, ("heuristic.tracker.warmup", "warmup_epochs")),
        ({"epochz": 3}, ("epochz", "Known keys")),
        ({"budget": {"max_params_added": 1e4}}, ("'budget.max_params_added'", "integer", "10000.0")),
        ({"budget": {"max_inference_flops": "1e6"}}, ("'budget.max_inference_flops'", "number", "'1e6'")),
        ({"budget": {"max_params": 10}}, ("budget.max_params", "max_params_added")),
        ({"budget": {"max_params_added": 0}}, ("'budget.max_params_added' must be >= 1", "got 0")),
    ],
)
def test_heuristic_config_file_values_are_type_checked(values, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(json.dumps(values))
    _fails_cleanly(capsys, ["train", "heuristic", "--config", "bad.json", "--run-dir", "run", "--quiet"], *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]  # no run folder, no runs/


def test_toml_config_values_are_type_checked(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text('task = "digits"\nepochs = "ten"\n')
    _fails_cleanly(capsys, ["train", "heuristic", "--config", "bad.toml", "--quiet"], "'epochs'", "'ten'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"envs": 2.0}, ("'envs'", "integer", "2.0")),
        ({"rounds": "3"}, ("'rounds'", "integer", "'3'")),
        ({"ppo": {"gamma": "high"}}, ("'ppo.gamma'", "number", "'high'")),
        ({"ppo": {"norm_adv": 1}}, ("'ppo.norm_adv'", "boolean", "1")),
        ({"network": {"hidden": True}}, ("'network.hidden'", "integer", "True")),
        ({"reward": {"rent_weight": [0.1]}}, ("'reward.rent_weight'", "number", "[0.1]")),
        ({"ppo": {"gama": 0.9}}, ("ppo.gama", "gamma")),
        ({"budget": {"max_inference_flops": -1.0}}, ("'budget.max_inference_flops' must be > 0", "got -1.0")),
    ],
)
def test_ppo_config_file_values_are_type_checked(values, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(json.dumps(values))
    _fails_cleanly(capsys, ["train", "ppo", "--config", "bad.json", "--run-dir", "run", "--quiet"], *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("[1, 2]", "table of keys"), ("{not json", "could not be parsed"), ('{"heuristic": 5}', "'heuristic'")],
)
def test_malformed_config_files_are_named(content, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(content)
    _fails_cleanly(capsys, ["train", "heuristic", "--config", "bad.json", "--quiet"], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_a_tampered_saved_config_is_refused_on_resume(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "heuristic", "--epochs", "2", "--run-dir", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    saved = json.loads((run_dir / "config.json").read_text())
    saved["config"]["epochs"] = "ten"
    (run_dir / "config.json").write_text(json.dumps(saved))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    _fails_cleanly(capsys, ["train", "heuristic", "--resume", str(run_dir), "--quiet"], "'epochs'", "'ten'")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_ints_are_accepted_for_floats_and_nested_tables_become_configs() -> None:
    config = heuristic_config(get_task("digits"), {"fossilize_above": 0, "tracker": {"min_delta": 1}})
    assert isinstance(config.fossilize_above, float) and config.fossilize_above == 0.0
    assert isinstance(config.tracker.min_delta, float) and config.tracker.min_delta == 1.0
    ppo, _, reward, _ = build_config(PPORunConfig, {"ppo": {"learning_rate": 1, "target_kl": None}}, {}).parts()
    assert ppo.learning_rate == 1.0 and ppo.target_kl is None
    assert reward.gamma == ppo.gamma  # the shaping discount still follows PPO's


def test_flags_override_file_values_and_are_checked_the_same_way() -> None:
    config = build_config(HeuristicRunConfig, {"epochs": 3, "slots": ["block2"]}, {"epochs": 5, "slots": None})
    assert config.epochs == 5 and config.slots == ["block2"]
    with pytest.raises(ValueError, match="'checkpoint_every' must be a valid integer, got '2'"):
        build_config(HeuristicRunConfig, {}, {"checkpoint_every": "2"})
