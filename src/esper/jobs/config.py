"""Typed run configuration, read from CLI flags and an optional JSON/TOML file.

Every config built from a file or flags goes through `build_config`, which checks
the values against the dataclass's own type hints with pydantic in strict mode
(no "10" for an int, no 2.5 or true for an int; an int is fine for a float), against
the range each field's annotation states (`leyline.ranges`; every float finite), and
refuses unknown keys by name, nested config dataclasses included. The classes
themselves stay plain dataclasses that check their ranges when built in code.

Flags reach a config one way for every command (`add_config_flags`, `config_from_flags`):
a flag's destination is the config key it sets, "SECTION__key" for a key of a section
(`--max-grad-norm` → ppo.max_grad_norm, `--data-dir` → task_options.data_dir), and a
flag that is not given is None, so only what was given overrides the file's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import typing_extensions

from esper.leyline import GrowthBudget
from esper.leyline.ranges import (
    AtLeastOne,
    Fraction,
    PositiveFloat,
    Seed,
    check_fields,
    expectation,
)
from esper.runtime.user_model import check_factory_path
from esper.simic.rewards import RewardConfig
from esper.tolaria.precision import DEVICE_TYPES, PRECISIONS
from esper.tolaria.trainer import LR_SCHEDULES

T = TypeVar("T")

HOST_VARIANTS = ("task", "reference")  # HeuristicRunConfig.host
BUILT_IN_CONTROLLERS = ("heuristic", "schedule", "none")  # any other `controller` is a policy.pt


@dataclass(slots=True)
class HeuristicRunConfig:
    task: str = "digits"
    epochs: AtLeastOne | None = None  # None: the task's default
    slots: list[str] | None = None  # None: the task's default slots
    seed: Seed = 0
    blueprints: list[str] | None = None  # None: every blueprint of the task's topology
    checkpoint_every: AtLeastOne = 5
    baseline: bool = False
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard
    chooser: str = "curriculum"  # how the heuristic picks blueprints: "curriculum" (UCB1) or "rotation"
    curriculum: str | None = None  # a curriculum.json from an earlier run to start from
    task_options: dict[str, Any] = field(default_factory=dict)
    heuristic: dict[str, Any] = field(default_factory=dict)  # HeuristicConfig overrides
    # The run stops, "failed", after this many governor rollbacks in a row (a fault that stays).
    max_consecutive_rollbacks: AtLeastOne = 3
    model: str | None = None  # "package.module:factory": a model of one's own instead of the task's host
    device: str = "cpu"  # cpu, cuda, cuda:N or mps
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16-mixed (autocast + loss scaling)
    # What is trained; `esper compare`'s arms are runs of this job that differ only here.
    # "heuristic", "schedule" (a fixed plan: `schedule`), "none" (nothing is grown: the host
    # alone) or the path of a policy.pt.
    controller: str = "heuristic"
    # With a policy.pt trained on another task: let it act on this one anyway (a transfer; its
    # slots must be this host's and its blueprints this topology's). False: such a policy is refused.
    transfer: bool = False
    # The schedule controller's plan: [{"at": fraction of the run, "slot": ..., "blueprint": ...}]
    # in order; null: the task's plan toward its reference (`esper tasks`).
    schedule: list[dict[str, Any]] | None = None
    host: str = "task"  # "task": the task's host; "reference": the task's static reference host
    # Blueprints built into the host's trunk after each named slot, from epoch 0 at full strength
    # (summary.json's architecture "slots" of a grown run: its final network, trained statically).
    built_in: dict[str, list[str]] = field(default_factory=dict)
    # Per slot, the width of the layer a width seed there widens, built that wide from epoch 0
    # (summary.json's architecture "widths", last entry: a grown run's merged widths).
    built_in_widths: dict[str, int] = field(default_factory=dict)
    # The run stops once its cumulative training FLOPs reach this (its last epoch may be partial).
    max_training_flops: PositiveFloat | None = None
    # How far the run may grow: params added and/or inference FLOPs per sample (null: no limit).
    budget: GrowthBudget = field(default_factory=GrowthBudget)
    # RewardConfig overrides for the reward the recorded transitions carry (e.g. the FLOP prices
    # of a PPO run whose recordings `esper train offline` should learn from together with these).
    reward: dict[str, Any] = field(default_factory=dict)
    # "constant", "cosine" (every learning rate annealed to 0 over the run) or "cosine-restarts"
    # (the cosine from the peak again at each growth step of the schedule's plan); null: the task's.
    lr_schedule: str | None = None
    # A linear learning-rate warmup over this share of the planned training, then the schedule
    # (0: none); null: the task's.
    lr_warmup: Fraction | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        check_placement(self.device, self.precision)
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if self.model is not None:
            check_factory_path(self.model)
        if self.chooser not in ("curriculum", "rotation"):
            raise ValueError(f"chooser must be 'curriculum' or 'rotation', got '{self.chooser}'")
        if self.curriculum is not None and self.chooser != "curriculum":
            raise ValueError("a curriculum file needs chooser 'curriculum'")
        if not self.controller:
            raise ValueError(f"controller must be {', '.join(repr(c) for c in BUILT_IN_CONTROLLERS)} or the path of a policy.pt")
        if self.transfer and self.controller in BUILT_IN_CONTROLLERS:
            raise ValueError("transfer applies a policy.pt trained on another task; set controller to its path")
        if self.schedule is not None and self.controller != "schedule":
            raise ValueError("schedule is the plan of controller 'schedule'; set controller too")
        if self.host not in HOST_VARIANTS:
            raise ValueError(f"host must be one of {', '.join(HOST_VARIANTS)}, got '{self.host}'")
        if self.model is not None and (self.host != "task" or self.built_in or self.built_in_widths):
            raise ValueError("host and built_in vary the task's host; with model there is none to vary")
        build_config(RewardConfig, self.reward, {}, section="reward")  # checked when made, before any work

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_placement(device: str, precision: str) -> None:
    """The form of `device` and `precision` (whether the device is there is checked when a run
    builds its model, so a config written on one machine still reads on another)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if device.split(":")[0] not in DEVICE_TYPES:
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got '{device}'")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of config keys (TOML if the name ends in .toml)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path} could not be parsed: {err}") from None
    if isinstance(values, dict):
        return values
    raise ValueError(f"config file {path} must hold a table of keys, not a {type(values).__name__}")


def build_config(
    cls: type[T], file_values: dict[str, Any], overrides: dict[str, Any], section: str = ""
) -> T:
    """`cls` from file values, then non-None CLI overrides, type-checked strictly.

    A wrong type or an unknown key raises one `ValueError` line naming the key (after
    `section`, e.g. "ppo.gamma"), what was expected and the value given. Nested config
    dataclasses (HeuristicConfig's tracker) are given as dicts and checked the same way.
    """
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        checked = _checker(cls).validate_python(values)
    except pydantic.ValidationError as err:
        raise ValueError(_describe(cls, err.errors(), section)) from None
    return _construct(cls, checked)


_STRICT = pydantic.ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@functools.cache
def _arguments(cls: type) -> type:
    """A TypedDict of the dataclass's init fields, every key optional (the dataclass has the defaults).

    pydantic's strict mode accepts only an instance of a stdlib dataclass, never the
    dict a file gives, so the check runs on this TypedDict of the same fields; a
    nested config dataclass becomes its own TypedDict.
    """
    hints = typing.get_type_hints(cls, include_extras=True)  # the ranges ride on Annotated
    schema = {f.name: _nested(hints[f.name]) for f in fields(cls) if f.init}
    arguments = typing_extensions.TypedDict(f"{cls.__name__}Arguments", schema, total=False)  # type: ignore[operator]
    arguments.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return arguments


def _nested(hint: Any) -> Any:
    return _arguments(hint) if dataclasses.is_dataclass(hint) else hint


@functools.cache
def _checker(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(_arguments(cls))


def _construct(cls: type[T], values: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    nested = {k: _construct(hints[k], v) for k, v in values.items() if dataclasses.is_dataclass(hints[k])}
    return cls(**{**values, **nested})


def _describe(cls: type, errors: list[Any], section: str) -> str:
    """One line for the first problem pydantic found (all unknown keys of one table together)."""
    first = errors[0]
    where = [section] if section else []
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        unknown = [str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == parent]
        owner = cls
        for part in parent:
            owner = typing.get_type_hints(owner)[part]
        prefix = ".".join(where + [str(p) for p in parent] + [""])
        known = sorted(f.name for f in fields(owner))
        return f"Unknown config key(s): {', '.join(prefix + k for k in unknown)}. Known keys: {', '.join(known)}"
    key = ".".join(where + [str(p) for p in first["loc"]])
    value = first["input"]
    return f"config key '{key}' must be {expectation(first)}, got {value!r} ({type(value).__name__})"


# A flag's value that sets its key to null (e.g. `--no-target-kl`: ppo.target_kl = None);
# a flag's own None means "not given".
NULL = "null"


def add_config_flags(parser: argparse.ArgumentParser, cls: type, section: str, prefix: str = "--") -> None:
    """One flag per field of the config dataclass `cls`, setting SECTION.FIELD (see `config_from_flags`)."""
    group = parser.add_argument_group(f"{cls.__name__} (see its docstring)")
    for f in fields(cls):
        flag, dest = prefix + f.name.replace("_", "-"), f"{section}__{f.name}"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, help=f"default {f.default}")
        else:
            kind = float if f.default is None else type(f.default)
            group.add_argument(flag, dest=dest, type=kind, metavar=f.name.upper(), help=f"default {f.default}")


def flag_values(cls: type, args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keys of `cls` the flags in `args` set: a flag "KEY" sets KEY, a flag "SECTION__key"
    sets one key of the section SECTION, over that section's keys in `file_values`."""
    names = {f.name for f in fields(cls)}
    given: dict[str, Any] = {}
    for dest, value in vars(args).items():
        key, _, sub = dest.partition("__")
        if value is None or key not in names:
            continue
        if sub:
            section = given.setdefault(key, dict((file_values or {}).get(key, {})))
            section[sub] = None if value == NULL else value
        else:
            given[key] = value
    return given


def config_from_flags(cls: type[T], args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> T:
    """The config a command's flags and `--config` file give (flags over the file), checked by `build_config`."""
    file_values = file_values or {}
    return build_config(cls, file_values, flag_values(cls, args, file_values))
