"""Recorded transitions read back for offline learning: checked, non-finite steps left out and counted.

`simic.recording` writes the files; this reads any number of run folders into
the columns `dqn.Transitions` holds. What it does with what it finds:

- a recording of another run-file format (`nissa.files.RUN_FORMAT`, in its
  transitions_meta.json) is refused in one line naming the Esper that wrote it;
- a step whose observation, reward or reward components are not finite (null
  in the file) cannot be learned from and is skipped. The skips are
  counted per field and one of them is named (file and line), so the job can
  say what it left out;
- the one meaningful repair: the next observation of an episode's last step
  is never used (the TD target is the reward alone), so a non-finite one
  there is replaced by zeros and the step kept (counted as repaired);
- runs recorded under reward configs that differ only in weights and prices
  (`rewards.REWEIGHABLE`) can be learned from together: `reweighed` recomputes
  every step's reward from its recorded quantities under one config;
- anything else malformed (a missing key, a list of the wrong length, an
  action out of range, a corrupt line) is an error naming the file, the line
  and the offending value: the file is damaged, and learning from a guess
  would be worse than stopping.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from esper.nissa import numbered_jsonl, strict_json
from esper.nissa.files import check_format
from esper.simic.actions import ActionSpace
from esper.simic.features import FeatureLayout, layout_difference
from esper.simic.recording import META_FILE, TRANSITIONS_FILE
from esper.simic.rewards import COMPONENTS, REWEIGHABLE, RewardConfig


class DamagedRecordingError(ValueError):
    """A recorded file holds what this Esper could not have written (a wrong type, length or key)."""


# Meta keys two runs must agree on to be learned from together.
MATCHED_KEYS = ("task", "slot_ids", "blueprints", "feature_names", "action_names", "reward")
ROW_KEYS = ("obs", "mask", "action", "reward", "next_obs", "next_mask", "done", "outcomes",
            "reward_components", "reward_quantities")  # fmt: skip
# Row keys that map every reward component (`rewards.COMPONENTS`) to a number.
_COMPONENT_KEYS = ("reward_components", "reward_quantities")


@dataclass(slots=True)
class RecordedTransitions:
    """What `load_transitions` read: the layout, the learnable steps, and what it left out."""

    meta: dict[str, Any]
    columns: dict[str, torch.Tensor]  # the `dqn.Transitions` fields, one row per kept step
    components: torch.Tensor  # (rows, len(COMPONENTS))
    quantities: torch.Tensor  # (rows, len(COMPONENTS)): what the components are weights times
    mixed_weights: bool = False  # the runs' reward configs differ in weights or prices
    skipped: Counter[str] = field(default_factory=Counter)  # first non-finite field -> steps skipped
    repaired: int = 0  # last steps of an episode whose unused next_obs was non-finite
    example: str = ""  # where the first skipped step is, e.g. "run/transitions.jsonl line 7: reward null"

    def __len__(self) -> int:
        return int(self.columns["action"].shape[0])

    def skipped_note(self) -> str:
        """One sentence on what was skipped and repaired ("" when nothing was)."""
        return _skipped_note(self.skipped, self.repaired, self.example)

    def reward_without(self, *dropped: str) -> torch.Tensor:
        """The reward with these components left out (the sum of the others)."""
        kept = [i for i, name in enumerate(COMPONENTS) if name not in dropped]
        return self.components[:, kept].sum(dim=1)

    def reweighed(self, reward: RewardConfig) -> torch.Tensor:
        """Every step's reward under `reward`'s weights and prices, from the recorded quantities;
        the rest of `reward` (reference, discount, credit) must be what the runs were recorded with."""
        recorded = self.meta["reward"]
        differ = {k: (recorded.get(k), v) for k, v in asdict(reward).items() if k not in REWEIGHABLE and recorded.get(k) != v}
        if differ:
            detail = "; ".join(f"{k}: {a!r} recorded, {b!r} asked" for k, (a, b) in sorted(differ.items()))
            raise ValueError(
                f"the recorded rewards cannot be re-weighed to this reward ({detail}): only weights and "
                "prices may differ; give the reward the runs were recorded with (their transitions_meta.json "
                "reward, e.g. through --config)"
            )
        weights = reward.weights()
        return self.quantities @ torch.tensor([weights[name] for name in COMPONENTS], dtype=torch.float32)


def load_transitions(run_dirs: Sequence[str | Path]) -> RecordedTransitions:
    """The meta and the stacked columns of every run's learnable transitions.

    Layouts and reward configs must match, but for the weights and prices (else a
    `ValueError` naming the difference); the meta's episode_length is the one most
    episodes had, its reward config the first run's.
    """
    if not run_dirs:
        raise ValueError("no run folders given")
    metas = [(Path(run_dir), _read_meta(Path(run_dir))) for run_dir in run_dirs]  # all, before any rows
    first, meta = metas[0]
    mixed_weights = False
    for run_dir, run_meta in metas[1:]:
        for key in MATCHED_KEYS:
            if key == "reward" and _unweighed(run_meta[key]) == _unweighed(meta[key]):
                mixed_weights = mixed_weights or run_meta[key] != meta[key]
            elif run_meta[key] != meta[key]:
                raise ValueError(_mismatch(key, first, meta[key], run_dir, run_meta[key]))
    reader = _RowReader()
    lengths: Counter[int] = Counter()
    for run_dir, run_meta in metas:
        steps, episodes = reader.read_run(run_dir, run_meta)
        if not steps:
            raise ValueError(f"{run_dir} holds no transitions (was the run stopped before its second epoch?)")
        lengths[run_meta["episode_length"]] += episodes
    if not reader.rows["action"]:
        raise ValueError(
            f"no transitions to learn from: every recorded step holds non-finite values ({reader.skipped_note()})"
        )
    # What a policy trained on them plays by default: the length most recorded episodes had.
    return reader.result({**meta, "episode_length": lengths.most_common(1)[0][0]}, mixed_weights)


def recorded_layout(meta: dict[str, Any]) -> tuple[FeatureLayout, ActionSpace]:
    """This Esper's observation layout and action space for the recorded slots and blueprints; they must agree."""
    layout = FeatureLayout(tuple(meta["slot_ids"]), tuple(meta["blueprints"]))
    space = ActionSpace(layout.slot_ids, layout.blueprints)
    for what, ours, theirs in (("features", layout.names(), meta["feature_names"]),
                               ("actions", space.names(), meta["action_names"])):  # fmt: skip
        if (difference := layout_difference(ours, theirs, "recorded")) is not None:
            raise ValueError(
                f"the transitions were recorded with other {what} than this Esper's: {difference}"
                " (record them again with this version)"
            )
    return layout, space


def _unweighed(reward: Any) -> Any:
    """A recorded reward config without the fields re-weighing may change."""
    return {k: v for k, v in reward.items() if k not in REWEIGHABLE} if isinstance(reward, dict) else reward


def _read_meta(run_dir: Path) -> dict[str, Any]:
    meta_path = run_dir / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{run_dir} has no {META_FILE}: it recorded no transitions")
    try:
        meta = strict_json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DamagedRecordingError(f"{meta_path} holds {type(meta).__name__}, not a JSON object")
    check_format(meta, meta_path)
    missing = [key for key in (*MATCHED_KEYS, "episode_length", "shaping_gamma", "reward_components") if key not in meta]
    if missing:
        raise DamagedRecordingError(f"{meta_path} lacks {missing}: it was not written by `esper` recording")
    if meta["reward_components"] != list(COMPONENTS):
        raise DamagedRecordingError(f"{meta_path} records reward components {meta['reward_components']}; "
                                    f"this Esper writes {list(COMPONENTS)}")  # fmt: skip
    return meta


class _RowReader:
    """Checks rows one by one and keeps the learnable ones as plain lists, column by column."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {key: [] for key in ROW_KEYS}
        self.skipped: Counter[str] = Counter()
        self.repaired = 0
        self.example = ""

    def read_run(self, run_dir: Path, meta: dict[str, Any]) -> tuple[int, int]:
        """Read one run's steps; returns how many steps and finished episodes its file holds."""
        path = run_dir / TRANSITIONS_FILE
        if not path.exists():
            return 0, 0
        n_obs, n_actions = len(meta["feature_names"]), len(meta["action_names"])
        steps = episodes = 0
        for lineno, row in numbered_jsonl(path):
            where = f"{path} line {lineno}"
            _check_structure(row, n_obs, n_actions, where)
            steps += 1
            episodes += bool(row["done"])
            bad = _first_non_finite(row, where)
            if bad == "next_obs" and row["done"]:
                row = {**row, "next_obs": [0.0] * n_obs}
                self.repaired += 1
            elif bad is not None:
                self.skipped[bad] += 1
                self.example = self.example or f"{where}: {bad} is null or not finite"
                continue
            for key in ROW_KEYS:
                value = row[key]
                self.rows[key].append([value[name] for name in COMPONENTS] if key in _COMPONENT_KEYS else value)
        return steps, episodes

    def skipped_note(self) -> str:
        return _skipped_note(self.skipped, self.repaired, self.example)

    def result(self, meta: dict[str, Any], mixed_weights: bool) -> RecordedTransitions:
        rows = self.rows
        columns = {
            "obs": torch.tensor(rows["obs"], dtype=torch.float32),
            "mask": torch.tensor(rows["mask"], dtype=torch.bool),
            "action": torch.tensor(rows["action"], dtype=torch.long),
            "reward": torch.tensor(rows["reward"], dtype=torch.float32),
            "next_obs": torch.tensor(rows["next_obs"], dtype=torch.float32),
            "next_mask": torch.tensor(rows["next_mask"], dtype=torch.bool),
            "done": torch.tensor([float(done) for done in rows["done"]], dtype=torch.float32),
            "rare": torch.tensor([bool(outcomes) for outcomes in rows["outcomes"]], dtype=torch.bool),
        }
        components, quantities = (torch.tensor(rows[key], dtype=torch.float32).reshape(-1, len(COMPONENTS))
                                  for key in _COMPONENT_KEYS)  # fmt: skip
        return RecordedTransitions(meta, columns, components, quantities, mixed_weights=mixed_weights,
                                   skipped=Counter(self.skipped), repaired=self.repaired, example=self.example)  # fmt: skip


def _skipped_note(skipped: Counter[str], repaired: int, example: str) -> str:
    parts = []
    if skipped:
        fields = ", ".join(f"{name} {count}" for name, count in sorted(skipped.items()))
        parts.append(f"skipped {skipped.total()} step(s) with non-finite values ({fields}; first: {example})")
    if repaired:
        parts.append(f"zeroed the unused non-finite next_obs of {repaired} last step(s)")
    return "; ".join(parts)


def _check_structure(row: Any, n_obs: int, n_actions: int, where: str) -> None:
    """Refuse a row this Esper could not have written, naming the value that is wrong."""
    if not isinstance(row, dict):
        raise DamagedRecordingError(f"{where}: expected a JSON object, got {row!r}")
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
        raise DamagedRecordingError(f"{where}: missing {missing}")
    for key, size in (("obs", n_obs), ("next_obs", n_obs), ("mask", n_actions), ("next_mask", n_actions)):
        value = row[key]
        if not isinstance(value, list) or len(value) != size:
            length = f"{len(value)} values" if isinstance(value, list) else repr(value)
            raise DamagedRecordingError(f"{where}: {key} holds {length}, the recorded layout has {size}")
    for key in ("mask", "next_mask"):
        if not all(isinstance(v, bool) for v in row[key]):
            raise DamagedRecordingError(f"{where}: {key} must hold true/false, got {row[key]}")
    action = row["action"]
    if not isinstance(action, int) or isinstance(action, bool) or not 0 <= action < n_actions:
        raise DamagedRecordingError(f"{where}: action {action!r} is not an action index in [0, {n_actions})")
    if not isinstance(row["done"], bool):
        raise DamagedRecordingError(f"{where}: done must be true or false, got {row['done']!r}")
    for key in _COMPONENT_KEYS:
        _check_map(row, key, COMPONENTS, where)


def _check_map(row: dict[str, Any], key: str, names: Sequence[str], where: str) -> None:
    value = row.get(key)
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise DamagedRecordingError(f"{where}: {key} must map {list(names)} to numbers, got {value!r}")


def _first_non_finite(row: dict[str, Any], where: str) -> str | None:
    """The first field holding a null or non-finite number (None if all are finite)."""
    fields: list[tuple[str, list[Any]]] = [("obs", row["obs"]), ("reward", [row["reward"]])]
    fields += [(key, list(row[key].values())) for key in _COMPONENT_KEYS]
    fields.append(("next_obs", row["next_obs"]))
    for name, values in fields:
        for value in values:
            if value is None:
                return name
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DamagedRecordingError(f"{where}: {name} holds {value!r}, not a number")
            if not math.isfinite(value):  # e.g. 1e999, which JSON parsers read as infinity
                return name
    return None


def _mismatch(key: str, a: Path, a_value: Any, b: Path, b_value: Any) -> str:
    if key == "reward" and isinstance(a_value, dict) and isinstance(b_value, dict):
        differ = sorted(k for k in _unweighed(a_value).keys() | _unweighed(b_value).keys() if a_value.get(k) != b_value.get(k))
        detail = "; ".join(f"{k}: {a_value.get(k)!r} in {a}, {b_value.get(k)!r} in {b}" for k in differ)
        return (f"transitions recorded under different rewards cannot be mixed ({detail}); weights and prices "
                "may differ, these may not: record the runs with the same values (e.g. the PPO run's "
                "reward.terminal_reference from its config.json in the heuristic run's config)")  # fmt: skip
    if isinstance(a_value, list) and isinstance(b_value, list):
        only_a = [v for v in a_value if v not in b_value]
        only_b = [v for v in b_value if v not in a_value]
        detail = f"only in {a}: {only_a}; only in {b}: {only_b}" if only_a or only_b else f"{a_value} vs {b_value} (order)"
    else:
        detail = f"{a}: {a_value!r}; {b}: {b_value!r}"
    return f"transitions from different layouts cannot be mixed: {key} differs ({detail})"
