"""`esper train offline`: learn a controller from recorded runs, without training a single host.

Every heuristic, PPO and `esper evaluate --record` run leaves its decisions in
transitions.jsonl (`simic.recording`). This job loads them from any number of
such folders (one layout: same task, slots, blueprints, features, actions and
reward), fits a `RunningNorm` to the raw observations, and trains a masked
Double-DQN with a conservative (CQL) penalty on the prioritized buffer, rare
outcomes first (`simic.dqn`). The run folder follows the other jobs':
config.json, metrics.jsonl (the loss history, one line per 100 updates),
summary.json with "mode": "offline", and policy.pt (algorithm "dqn") that
`esper evaluate --policy` runs greedily; with `tensorboard` (`--tensorboard`) the
same loss history goes to RUN_DIR/tensorboard (`offline/loss`, `offline/td_loss`,
`offline/cql`, `offline/q_mean`, step = update). It takes a minute or two, so there is
no --resume: a stopped run is simply run again, and a folder is only written
once training has succeeded (nothing half-made is left behind).

Recorded steps with non-finite values are skipped (`simic.recorded`); how many,
for which field and where the first one is goes to the console and into
summary.json. The discount defaults to the one the recorded shaping term was
computed with; another --gamma is refused unless --drop-shaping takes the
potential-based terms (the shaping and, in recordings that carry reward
quantities, the contribution) out of the reward (`dqn.learning_discount`).

The reward learned from is the recorded one, unless weights or prices are given
(`--terminal-weight`, `--flop-price-training`, ... : `rewards.REWEIGHABLE`) or the
runs were recorded under different ones: then every step's reward is recomputed
from its recorded quantities under the first run's reward config with those
overrides (`RecordedTransitions.reweighed`), and that config goes into policy.pt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import Tensor

from esper import __version__
from esper.jobs.config import add_config_flags, build_config
from esper.jobs.ppo import POLICY_FILE
from esper.nissa import JsonlWriter
from esper.nissa.run_folder import RunFolder, write_json
from esper.simic.dqn import OfflineConfig, Transitions, learning_discount, train_offline
from esper.simic.features import RunningNorm
from esper.simic.policy import policy_payload
from esper.simic.recorded import RecordedTransitions, load_transitions, recorded_layout
from esper.simic.rewards import POTENTIALS, REWEIGHABLE, RewardConfig


@dataclass(slots=True)
class OfflineRunConfig:
    sources: list[str] = field(default_factory=list)  # run folders holding transitions.jsonl
    offline: dict[str, Any] = field(default_factory=dict)  # OfflineConfig overrides
    reward: dict[str, float] = field(default_factory=dict)  # weights and prices to learn under (REWEIGHABLE)
    tensorboard: bool = False  # also write the loss history to RUN_DIR/tensorboard

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("give at least one run folder to learn from (--from RUN_DIR ...)")
        unknown = sorted(set(self.reward) - set(REWEIGHABLE))
        if unknown:
            raise ValueError(f"reward {unknown} cannot be changed offline (they shape the recorded quantities); "
                             f"only {', '.join(REWEIGHABLE)} can")  # fmt: skip
        # Both sections are checked when the config is made, before the recordings are read.
        build_config(OfflineConfig, self.offline, {}, section="offline")
        build_config(RewardConfig, self.reward, {}, section="reward")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_offline(config: OfflineRunConfig, run_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Train a Q-network controller on the recorded transitions; returns the summary.

    Everything is checked before anything is written: the sources, the layout,
    the discount against the recorded shaping, the run folder. Training needs
    no folder, so the folder is only made once there is a policy to put in it;
    if writing it fails (or is interrupted), what was made is removed again.
    """
    offline = build_config(OfflineConfig, config.offline, {})
    recorded = load_transitions(config.sources)
    meta = recorded.meta
    layout, space = recorded_layout(meta)
    reward_config, reward = _learning_reward(recorded, config.reward, offline.drop_shaping)
    shaped = not offline.drop_shaping and any(reward_config[f"{name}_weight"] != 0 for name in POTENTIALS)
    offline = learning_discount(offline, meta["shaping_gamma"], shaped)
    folder = RunFolder(run_dir)
    _check_run_dir(folder.path)
    if config.tensorboard:
        import esper.nissa.tensorboard  # noqa: F401  (tensorboard is imported only when asked: missing, it fails here)

    started = time.perf_counter()
    columns = recorded.columns
    norm = RunningNorm(layout.size)
    norm.update(columns["obs"])
    data = Transitions(**{**columns, "obs": norm(columns["obs"]), "next_obs": norm(columns["next_obs"]), "reward": reward})
    note = recorded.skipped_note()
    if console is not None:
        _say_what_is_learned(console, config, recorded, data, offline)
    model, history = train_offline(data, offline)
    names = space.names()
    summary = {
        "mode": "offline",
        "task": meta["task"],
        "sources": list(config.sources),
        "transitions": len(data),
        "skipped_transitions": recorded.skipped.total(),
        "skipped_by_field": dict(sorted(recorded.skipped.items())),
        "repaired_transitions": recorded.repaired,
        "episodes": int(data.done.sum()),
        "rare_transitions": int(data.rare.sum()),
        "data_actions": {names[i]: n for i, n in sorted(Counter(data.action.tolist()).items())},
        "gamma": offline.gamma,
        "shaping": "dropped" if offline.drop_shaping else f"recorded, gamma {meta['shaping_gamma']}",
        "reward": _reward_note(recorded, config.reward),
        "updates": offline.updates,
        "first_loss": history[0],
        "last_loss": history[-1],
        "status": "complete",
        "policy": str(folder.path / POLICY_FILE),
        "wall_seconds_this_session": round(time.perf_counter() - started, 2),
        "esper_version": __version__,
    }
    if note:
        summary["skipped_note"] = note
    payload = policy_payload(model, norm, layout, space, task=meta["task"], episode_length=meta["episode_length"],
                             reward=reward_config, offline=asdict(offline), sources=list(config.sources))  # fmt: skip
    # The task comes from the data; it sits in "config" where `esper runs` and `esper report` look for it.
    run_config = {"mode": "offline", "config": {**config.to_dict(), "task": meta["task"]}, "esper_version": __version__}
    _write_run(folder, run_config, history, payload, summary, config.tensorboard)
    return summary


def _say_what_is_learned(console: Console, config: OfflineRunConfig, recorded: RecordedTransitions, data: Transitions,
                         offline: OfflineConfig) -> None:  # fmt: skip
    """What is skipped in the recordings, and what the controller learns from."""
    note = recorded.skipped_note()
    if note:
        console.print(f"offline: {note}", style="yellow", markup=False, highlight=False)
    console.print(f"offline: {len(data):,} transitions ({int(data.rare.sum())} rare) from {len(config.sources)} run(s), "
                  f"gamma {offline.gamma}{', ' + ' and '.join(POTENTIALS) + ' dropped' if offline.drop_shaping else ''}, "
                  f"reward {_reward_note(recorded, config.reward)}, {offline.updates:,} updates",
                  markup=False, highlight=False)  # fmt: skip


def _learning_reward(recorded: RecordedTransitions, overrides: dict[str, float], drop_potentials: bool) -> tuple[dict[str, Any], Tensor]:
    """The reward config learned under and every step's reward: as recorded, or re-weighed from
    the recorded quantities when weights are given or the runs were recorded under different ones."""
    meta = recorded.meta
    if not overrides and not recorded.mixed_weights:
        dropped = POTENTIALS if drop_potentials else ()
        return meta["reward"], recorded.reward_without(*dropped) if dropped else recorded.columns["reward"]
    if drop_potentials:
        overrides = {**overrides, **{f"{name}_weight": 0.0 for name in POTENTIALS}}
    reward = build_config(RewardConfig, {**meta["reward"], **overrides}, {}, section="reward")
    return asdict(reward), recorded.reweighed(reward)


def _reward_note(recorded: RecordedTransitions, overrides: dict[str, float]) -> str:
    if overrides:
        return "re-weighed (" + ", ".join(f"{k} {v:g}" for k, v in sorted(overrides.items())) + ")"
    if recorded.mixed_weights:
        return "re-weighed to the first run's weights (the runs were recorded under different ones)"
    return "as recorded"


def _write_run(folder: RunFolder, run_config: dict[str, Any], history: list[dict[str, float]],
               payload: dict[str, Any], summary: dict[str, Any], tensorboard: bool = False) -> None:
    """Write the finished run; if that fails or is interrupted, remove what was written."""
    existed = folder.path.exists()
    try:
        folder.create(run_config)
        with JsonlWriter(folder.metrics_path) as metrics:
            for record in history:
                metrics.write({"epoch": record["update"], **record})
        if tensorboard:
            _write_tensorboard(folder, history)
        folder.save_checkpoint(payload, folder.path / POLICY_FILE)
        write_json(folder.summary_path, summary)
    except BaseException:
        _remove_made(folder.path, existed)
        raise


def _write_tensorboard(folder: RunFolder, history: list[dict[str, float]]) -> None:
    from esper.nissa.tensorboard import TensorBoardOutput

    output = TensorBoardOutput(folder.tensorboard_path)
    try:
        for record in history:
            output.add_numbers("offline", {k: v for k, v in record.items() if k != "update"}, record["update"])
    finally:
        output.close()


def _check_run_dir(path: Path) -> None:
    """Refuse a run folder that cannot take a new offline run, before the training minute is spent.

    `train offline` has no --resume, so a folder that holds anything is refused
    whatever it holds; the folder (or the nearest part of its path that exists)
    must be a writable directory.
    """
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder; choose another --run-dir")
        if any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty; choose another --run-dir (train offline starts afresh)")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise FileExistsError(f"cannot make {path}: {existing} is a file, not a folder; choose another --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {existing} (permission denied); choose another --run-dir")


def _remove_made(path: Path, existed: bool) -> None:
    """Undo a run folder write that failed: the folder if this run made it, else what it put in it."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():  # the folder was empty before (`_check_run_dir`)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`esper train offline` flags: the sources and run folder, then one per OfflineConfig field."""
    parser.add_argument("--from", dest="sources", nargs="+", required=True, metavar="RUN_DIR",
                        help="run folders with recorded transitions (heuristic, ppo, evaluate --record)")  # fmt: skip
    parser.add_argument("--run-dir", help="run folder (default runs/offline-TIME)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write the loss history to RUN_DIR/tensorboard")  # fmt: skip
    add_config_flags(parser, OfflineConfig, "offline")
    weights = parser.add_argument_group("re-weighing the recorded reward (simic.rewards; default: as recorded)")
    for name in REWEIGHABLE:
        weights.add_argument("--" + name.replace("_", "-"), dest=f"reward__{name}", type=float, metavar="X",
                             help=f"learn with reward.{name} = X, recomputed from the recorded quantities")  # fmt: skip


