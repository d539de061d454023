"""Random configs for every command's config model: each is accepted and runs (one epoch, round
or a few updates, on digits), or refused in one line with exit 2 and nothing written; never a
traceback. A cheap, valid base config gets up to two of its keys (nested sections included)
set to values drawn from each key's type: in range, out of range, non-finite, of the wrong
type. Sizes stay small (at most 3), so whatever is accepted runs in seconds; only the seeds
and the envs are also drawn huge, where they are refused (issue 23).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.cli import main
from esper.jobs.config import HeuristicRunConfig
from esper.jobs.ppo import PPORunConfig
from esper.simic.dqn import OfflineConfig
from esper.simic.networks import NetworkConfig
from esper.simic.ppo import PPOConfig
from esper.simic.rewards import REWEIGHABLE, RewardConfig
from esper.tamiyo.heuristic import HeuristicConfig
from esper.tamiyo.tracker import TrackerConfig

BLUEPRINTS = ["norm", "attention"]  # not the fault blueprints this folder's conftest registers
EXAMPLES = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,  # the same examples on every machine: the suite does not flake
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

JUNK = [None, "x", [], {}, True]
INTS = [-1, 0, 1, 2, 3, 1.5, "2"]
HUGE = {"seed": [2**32, 2**64, -(2**40)], "first_seed": [2**40], "envs": [10**9]}
FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 0.001, 0.5, 1.0, 2.0, 1e300]
STRINGS = {
    "task": ["digits", "nope", ""],
    "device": ["cpu", "tpu", "cuda:x"],
    "precision": ["fp32", "bf16", "fp8"],
    "chooser": ["curriculum", "rotation", "ucb"],
    "controller": ["heuristic", "none", "missing.pt"],
    "host": ["task", "reference", "wide"],
    "model": ["nope:factory", "no_colon"],
    "curriculum": ["missing.json"],
    "lr_schedule": ["constant", "cosine", "step"],
    "kind": ["mlp", "lstm", "gru"],
}
LISTS = {"slots": [["block2"], ["nope"], []], "blueprints": [BLUEPRINTS, ["nope"], []]}
DICTS = {"task_options": [{"data_dir": "d"}, {"bogus": 1}], "built_in": [{"block2": ["norm"]}, {"nope": ["x"]}]}


def _values(name: str, hint: Any) -> list[Any]:
    """What a key of this name and type is drawn from."""
    kinds = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
    kinds = {typing.get_args(k)[0] if typing.get_origin(k) is typing.Annotated else k for k in kinds}
    values = list(JUNK)
    if int in kinds:
        values += INTS + HUGE.get(name, [])
    if float in kinds:
        values += FLOATS
    if str in kinds:
        values += STRINGS.get(name, ["x"])
    if bool in kinds:
        values += [False, 0]
    values += LISTS.get(name, []) + DICTS.get(name, [])
    return values


def _keys(cls: type, sections: dict[str, type], skip: frozenset[str] = frozenset()) -> list[tuple[str, ...]]:
    """Every key of `cls` and of its sections (dict fields holding another config's keys), as paths."""
    paths = [(f.name,) for f in dataclasses.fields(cls) if f.name not in skip and f.name not in sections]
    for section, section_cls in sections.items():
        paths += [(section, *rest) for rest in _keys(section_cls, {"tracker": TrackerConfig} if section_cls is HeuristicConfig else {})]
    return paths


def _hint(cls: type, sections: dict[str, type], path: tuple[str, ...]) -> Any:
    owner = sections[path[0]] if len(path) > 1 else cls
    for part in path[1:-1]:
        owner = typing.get_type_hints(owner)[part]
    return typing.get_type_hints(owner, include_extras=True)[path[-1]]


def _mutated(base: dict[str, Any], cls: type, sections: dict[str, type], skip: frozenset[str] = frozenset()):
    """The strategy: `base` with up to two keys set to drawn values."""
    key = st.sampled_from(_keys(cls, sections, skip)).flatmap(
        lambda path: st.tuples(st.just(path), st.sampled_from(_values(path[-1], _hint(cls, sections, path))))
    )

    def apply(changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
        config = json.loads(json.dumps(base))
        for path, value in changes:
            table = config
            for part in path[:-1]:
                table = table.setdefault(part, {}) if isinstance(table.get(part, {}), dict) else {}
            table[path[-1]] = value
        return config

    return st.lists(key, min_size=0, max_size=2).map(apply)


@contextlib.contextmanager
def _folder() -> typing.Iterator[Path]:
    with tempfile.TemporaryDirectory() as name, contextlib.chdir(name):
        yield Path(name)


def _accepted_or_refused(capsys, argv: list[str], folder: Path, kept: set[str], finished: str) -> None:
    """`esper ARGV` either finishes (`finished` is written) or exits 2 with one error line and nothing written."""
    code = main(argv)
    captured = capsys.readouterr()
    output = (captured.out + captured.err).strip()
    assert "Traceback" not in output, output
    if code == 0:
        assert (folder / finished).is_file(), output
        return
    assert code == 2, output
    assert output.startswith("error: ") and len(output.splitlines()) == 1, output
    assert {p.name for p in folder.iterdir()} == kept, output  # nothing written


HEURISTIC_BASE = {"epochs": 1, "blueprints": BLUEPRINTS}
HEURISTIC_SECTIONS = {"heuristic": HeuristicConfig, "reward": RewardConfig}


@EXAMPLES
@given(config=_mutated(HEURISTIC_BASE, HeuristicRunConfig, HEURISTIC_SECTIONS, frozenset({"checkpoint_every"})))
def test_random_heuristic_configs_run_or_are_refused(config, capsys) -> None:
    with _folder() as folder:
        Path("config.json").write_text(json.dumps(config))
        argv = ["train", "heuristic", "--config", "config.json", "--run-dir", "run", "--quiet"]
        _accepted_or_refused(capsys, argv, folder, {"config.json"}, "run/summary.json")


PPO_BASE = {"rounds": 1, "envs": 1, "episode_length": 2, "blueprints": BLUEPRINTS,
            "ppo": {"update_epochs": 1}, "reward": {"terminal_reference": 0.5}}  # fmt: skip
PPO_SECTIONS = {"ppo": PPOConfig, "network": NetworkConfig, "reward": RewardConfig}


@EXAMPLES
@given(config=_mutated(PPO_BASE, PPORunConfig, PPO_SECTIONS, frozenset({"warm_start", "warm_start_from"})))
def test_random_ppo_configs_run_or_are_refused(config, capsys) -> None:
    with _folder() as folder:
        Path("config.json").write_text(json.dumps(config))
        argv = ["train", "ppo", "--config", "config.json", "--run-dir", "run", "--quiet"]
        _accepted_or_refused(capsys, argv, folder, {"config.json"}, "run/summary.json")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A heuristic run's recorded transitions, for `esper train offline`."""
    run_dir = tmp_path_factory.mktemp("recorded") / "run"
    assert main(["train", "heuristic", "--epochs", "3", "--blueprints", *BLUEPRINTS, "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def _flag(value: Any) -> str:
    return str(value).lower() if isinstance(value, float) and not math.isfinite(value) else str(value)


def _numbers(name: str, hint: Any) -> list[Any]:
    """A flag's values: argparse checks the type itself, so only numbers of the flag's type."""
    kinds = {typing.get_args(k)[0] if typing.get_origin(k) is typing.Annotated else k for k in typing.get_args(hint) or [hint]}
    return [-1, 0, 1, 2, 3, *HUGE.get(name, [])] if int in kinds else FLOATS


OFFLINE_FLAGS = {name: _numbers(name, hint) for name, hint in typing.get_type_hints(OfflineConfig, include_extras=True).items()
                 if hint is not bool}  # fmt: skip
OFFLINE_FLAGS |= {name: FLOATS for name in REWEIGHABLE}


@EXAMPLES
@given(flags=st.lists(st.sampled_from(sorted(OFFLINE_FLAGS)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(OFFLINE_FLAGS[name]))), max_size=2))  # fmt: skip
def test_random_offline_settings_run_or_are_refused(flags, recorded, capsys) -> None:
    argv = ["train", "offline", "--from", str(recorded), "--updates", "2", "--batch-size", "4", "--run-dir", "run", "--quiet"]
    for name, value in flags:
        argv[-3:-3] = [f"--{name.replace('_', '-')}={_flag(value)}"]  # "=": a value may start with "-"
    with _folder() as folder:
        _accepted_or_refused(capsys, argv, folder, set(), "run/summary.json")


COMPARE_RUN_BASE = {"blueprints": BLUEPRINTS}


@EXAMPLES
@given(
    run=_mutated(COMPARE_RUN_BASE, HeuristicRunConfig, HEURISTIC_SECTIONS,
                 frozenset({"task", "seed", "epochs", "controller", "host", "built_in", "max_training_flops"})),
    seeds=st.sampled_from([1, 0, -1]),
    first_seed=st.sampled_from([0, 3, -1, 2**40]),
)  # fmt: skip
def test_random_compare_settings_run_or_are_refused(run, seeds, first_seed, capsys) -> None:
    with _folder() as folder:
        Path("run.json").write_text(json.dumps(run))
        argv = ["compare", "--task", "digits", "--epochs", "1", "--arms", "host-only", "--seeds", str(seeds),
                "--first-seed", str(first_seed), "--config", "run.json", "--out", "cmp", "--quiet"]  # fmt: skip
        _accepted_or_refused(capsys, argv, folder, {"run.json"}, "cmp/compare.json")
