"""Bad config values: one line naming the key, the expected type and the value; exit 2; nothing written."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import esper
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


# ------------------------------------------------------------------ numbers out of range (issue 23)
def _nothing_written(tmp_path: Path, *kept: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)  # no run folder, no runs/


@pytest.mark.parametrize(
    ("command", "text", "expected"),
    [
        ("ppo", '{"rounds": 1, "envs": 2, "episode_length": 3, "reward": {"terminal_reference": NaN}}',
         ("'reward.terminal_reference'", "finite", "nan")),
        ("heuristic", '{"epochs": 3, "reward": {"terminal_weight": NaN}}', ("'reward.terminal_weight'", "finite")),
        ("heuristic", '{"heuristic": {"fossilize_above": Infinity}}', ("'heuristic.fossilize_above'", "finite", "inf")),
        ("heuristic", '{"budget": {"max_inference_flops": -Infinity}}', ("'budget.max_inference_flops'", "finite")),
        ("ppo", '{"ppo": {"learning_rate": NaN}}', ("'ppo.learning_rate'", "finite")),
    ],
)  # fmt: skip
def test_non_finite_numbers_in_a_config_are_refused_by_name(command, text, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(text)
    _fails_cleanly(capsys, ["train", command, "--config", "bad.json", "--run-dir", "run", "--quiet"], *expected)
    _nothing_written(tmp_path, "bad.json")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "ppo", "--max-grad-norm", "-1"], "'ppo.max_grad_norm' must be > 0, got -1.0"),
        (["train", "ppo", "--ent-coef", "-5"], "'ppo.ent_coef' must be >= 0, got -5.0"),
        (["train", "ppo", "--target-kl", "-1"], "'ppo.target_kl' must be > 0, got -1.0"),
        (["train", "ppo", "--gamma", "1.5"], "'ppo.gamma' must be <= 1, got 1.5"),
        (["train", "ppo", "--seed", "-1"], "'seed' must be >= 0, got -1"),
        (["train", "ppo", "--network-hidden", "0"], "'network.hidden' must be >= 1, got 0"),
        (["train", "ppo", "--warm-start-learning-rate", "0"], "'warm_start.learning_rate' must be > 0, got 0.0"),
        (["train", "ppo", "--flop-price-training", "-1"], "'reward.flop_price_training' must be >= 0"),
        (["train", "heuristic", "--seed", "-1"], "'seed' must be >= 0, got -1"),
        (["train", "heuristic", "--seed", "99999999999999999999"], "'seed' must be <= 4294967295"),
        (["train", "heuristic", "--max-params-added", "0"], "'budget.max_params_added' must be >= 1, got 0"),
        (["train", "offline", "--from", "nowhere", "--per-beta", "2"], "'offline.per_beta' must be <= 1, got 2.0"),
        (["train", "offline", "--from", "nowhere", "--terminal-weight", "nan"], "'reward.terminal_weight'"),
        (["compare", "--out", "cmp", "--first-seed", "-3"], "'first_seed' must be >= 0, got -3"),
        (["evaluate", "--policy", "heuristic", "--seed", "-1"], "seed must be >= 0"),
    ],
)  # fmt: skip
def test_out_of_range_flags_are_refused_by_name_before_anything_is_written(argv, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, [*argv, *SHORT.get(tuple(argv[:2]), [])], expected)
    _nothing_written(tmp_path)


# What keeps an accepted run short (where one would be accepted, it ends at once and the test fails).
SHORT = {
    ("train", "ppo"): ["--rounds", "1", "--envs", "1", "--episode-length", "2", "--run-dir", "run", "--quiet"],
    ("train", "heuristic"): ["--epochs", "1", "--run-dir", "run", "--quiet"],
    ("train", "offline"): ["--updates", "1", "--run-dir", "run", "--quiet"],
    ("compare", "--out"): ["--task", "digits", "--epochs", "1", "--arms", "host-only", "--quiet"],
    ("evaluate", "--policy"): ["--episodes", "1", "--episode-length", "2"],
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"heuristic": {"tracker": {"plateau_patience": -1}}}, "'heuristic.tracker.plateau_patience' must be >= 0"),
        ({"ppo": {"target_kl": -1}}, "'ppo.target_kl' must be > 0"),
        ({"reward": {"terminal_reference": 1.5}}, "'reward.terminal_reference' must be <= 1"),
        ({"max_training_flops": 0}, "'max_training_flops' must be > 0"),
    ],
)
def test_out_of_range_file_values_are_refused_by_name(values, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.json").write_text(json.dumps(values))
    command = "ppo" if "ppo" in values else "heuristic"
    _fails_cleanly(capsys, ["train", command, "--config", "bad.json", "--run-dir", "run", "--quiet"], expected)
    _nothing_written(tmp_path, "bad.json")


def test_a_config_built_in_code_checks_its_ranges_too() -> None:
    from esper.simic.ppo import PPOConfig
    from esper.tamiyo.tracker import TrackerConfig

    with pytest.raises(ValueError, match="max_grad_norm must be > 0, got -1"):
        PPOConfig(max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="plateau_patience must be >= 0, got -1"):
        TrackerConfig(plateau_patience=-1)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        HeuristicRunConfig(seed=-1)


def test_more_envs_than_memory_holds_are_refused_before_any_work(tmp_path) -> None:
    # In a process held to 8 GiB of address space: an Esper that tried would stop there, not swap.
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    argv = ["train", "ppo", "--envs", "100000000", "--rounds", "1", "--episode-length", "3", "--run-dir", "run", "--quiet"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    done = subprocess.run([sys.executable, "-m", "esper", *argv], cwd=tmp_path, env=env, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and output.startswith("error: envs 100,000,000 need at least"), output
    assert "GiB of memory" in output and output.endswith("use fewer envs")
    _nothing_written(tmp_path)


# ------------------------------------------------------------------ flags -> config, one way
def test_every_command_reads_its_flags_into_its_config_the_same_way() -> None:
    from esper.cli import build_parser
    from esper.jobs.compare import CompareConfig
    from esper.jobs.config import config_from_flags
    from esper.jobs.offline import OfflineRunConfig

    parse = build_parser().parse_args
    file_values = {"ppo": {"gamma": 0.9, "target_kl": 0.02}, "reward": {"rent_weight": 0.1}}
    ppo = config_from_flags(PPORunConfig, parse(["train", "ppo", "--rounds", "3", "--no-target-kl",
                                                 "--flop-price-training", "0.5", "--no-norm-adv"]), file_values)  # fmt: skip
    assert ppo.rounds == 3 and ppo.tensorboard is False
    assert ppo.ppo == {"gamma": 0.9, "target_kl": None, "norm_adv": False}  # flags over the file's section
    assert ppo.reward == {"rent_weight": 0.1, "flop_price_training": 0.5}
    heuristic = config_from_flags(HeuristicRunConfig, parse(["train", "heuristic", "--data-dir", "d", "--download",
                                                             "--max-params-added", "9", "--baseline"]),
                                  {"task_options": {"path": "t.txt"}, "budget": {"max_inference_flops": 1e6}})  # fmt: skip
    assert heuristic.task_options == {"path": "t.txt", "data_dir": "d", "download": True}
    assert (heuristic.budget.max_params_added, heuristic.budget.max_inference_flops) == (9, 1e6)
    assert heuristic.baseline is True and heuristic.tensorboard is False
    offline = config_from_flags(OfflineRunConfig, parse(["train", "offline", "--from", "a", "b", "--cql-weight", "0",
                                                         "--rent-weight", "0.2"]))  # fmt: skip
    assert offline.sources == ["a", "b"] and offline.offline == {"cql_weight": 0.0} and offline.reward == {"rent_weight": 0.2}
    compare = config_from_flags(CompareConfig, parse(["compare", "--seeds", "2", "--device", "cpu"]), {"run": {"slots": ["block2"]}})
    assert compare.seeds == 2 and compare.run == {"slots": ["block2"], "device": "cpu"}
