"""Typed run configuration, read from CLI flags and an optional JSON/TOML file."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class HeuristicRunConfig:
    task: str = "digits"
    epochs: int | None = None  # None: the task's default
    slots: list[str] | None = None  # None: the task's default slots
    seed: int = 0
    blueprints: list[str] | None = None  # None: every blueprint of the task's topology
    checkpoint_every: int = 5
    baseline: bool = False
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard
    chooser: str = "curriculum"  # how the heuristic picks blueprints: "curriculum" (UCB1) or "rotation"
    curriculum: str | None = None  # a curriculum.json from an earlier run to start from
    task_options: dict[str, Any] = field(default_factory=dict)
    heuristic: dict[str, Any] = field(default_factory=dict)  # HeuristicConfig overrides
    # The run stops, "failed", after this many governor rollbacks in a row (a fault that stays).
    max_consecutive_rollbacks: int = 3

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.chooser not in ("curriculum", "rotation"):
            raise ValueError(f"chooser must be 'curriculum' or 'rotation', got '{self.chooser}'")
        if self.curriculum is not None and self.chooser != "curriculum":
            raise ValueError("a curriculum file needs chooser 'curriculum'")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_consecutive_rollbacks < 1:
            raise ValueError(f"max_consecutive_rollbacks must be >= 1, got {self.max_consecutive_rollbacks}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of config keys (TOML if the name ends in .toml)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"config file {path} could not be parsed: {err}") from None


def build_config(cls: type[T], file_values: dict[str, Any], overrides: dict[str, Any]) -> T:
    """`cls` from file values, then non-None CLI overrides; unknown keys are named and refused."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ValueError(
            f"Unknown config key(s): {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}"
        )
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    return cls(**values)
