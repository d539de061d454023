"""`esper train offline`: learn a controller from recorded runs, without training a single host.

Every heuristic, PPO and `esper evaluate --record` run leaves its decisions in
transitions.jsonl (`simic.recording`). This job loads them from any number of
such folders (one layout: same task, slots, blueprints, features, actions and
reward), fits a `RunningNorm` to the raw observations, and trains a masked
Double-DQN with a conservative (CQL) penalty on the prioritized buffer, rare
outcomes first (`simic.dqn`). The run folder follows the other jobs':
config.json, metrics.jsonl (the loss history, one line per 100 updates),
summary.json with "mode": "offline", and policy.pt (algorithm "dqn") that
`esper evaluate --policy` runs greedily. It takes a minute or two, so there is
no --resume: a stopped run is simply run again.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from esper import __version__
from esper.jobs.config import build_config
from esper.jobs.ppo import POLICY_FILE, add_config_flags, config_flag_values
from esper.jobs.run_folder import RunFolder, write_json
from esper.nissa import JsonlWriter
from esper.simic.actions import ActionSpace
from esper.simic.dqn import OfflineConfig, Transitions, train_offline
from esper.simic.features import FeatureLayout, RunningNorm
from esper.simic.policy import policy_payload
from esper.simic.recording import load_transitions


@dataclass(slots=True)
class OfflineRunConfig:
    sources: list[str] = field(default_factory=list)  # run folders holding transitions.jsonl
    offline: dict[str, Any] = field(default_factory=dict)  # OfflineConfig overrides

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("give at least one run folder to learn from (--from RUN_DIR ...)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_offline(config: OfflineRunConfig, run_dir: str | Path, console: Console | None = None) -> dict[str, Any]:
    """Train a Q-network controller on the recorded transitions; returns the summary."""
    offline = build_config(OfflineConfig, config.offline, {})
    meta, columns = load_transitions(config.sources)  # before creating the folder: bad input leaves nothing
    layout = FeatureLayout(tuple(meta["slot_ids"]), tuple(meta["blueprints"]))
    space = ActionSpace(layout.slot_ids, layout.blueprints)
    if layout.names() != meta["feature_names"] or space.names() != meta["action_names"]:
        raise ValueError("the transitions were recorded with another observation or action layout than this Esper's")
    folder = RunFolder(run_dir)
    # The task comes from the data; it sits in "config" where `esper runs` and `esper report` look for it.
    folder.create({"mode": "offline", "config": {**config.to_dict(), "task": meta["task"]}, "esper_version": __version__})
    started = time.perf_counter()
    norm = RunningNorm(layout.size)
    norm.update(columns["obs"])
    data = Transitions(**{**columns, "obs": norm(columns["obs"]), "next_obs": norm(columns["next_obs"])})
    if console is not None:
        console.print(f"offline: {len(data):,} transitions ({int(data.rare.sum())} rare) from {len(config.sources)} run(s), "
                      f"{offline.updates:,} updates", highlight=False)  # fmt: skip
    model, history = train_offline(data, offline)
    with JsonlWriter(folder.metrics_path) as metrics:
        for record in history:
            metrics.write({"epoch": record["update"], **record})
    payload = policy_payload(model, norm, layout, space, task=meta["task"], episode_length=meta["episode_length"],
                             reward=meta["reward"], offline=asdict(offline), sources=list(config.sources))  # fmt: skip
    folder.save_checkpoint(payload, folder.path / POLICY_FILE)
    names = space.names()
    summary = {
        "mode": "offline",
        "task": meta["task"],
        "sources": list(config.sources),
        "transitions": len(data),
        "episodes": int(data.done.sum()),
        "rare_transitions": int(data.rare.sum()),
        "data_actions": {names[i]: n for i, n in sorted(Counter(data.action.tolist()).items())},
        "updates": offline.updates,
        "first_loss": history[0],
        "last_loss": history[-1],
        "status": "complete",
        "policy": str(folder.path / POLICY_FILE),
        "wall_seconds_this_session": round(time.perf_counter() - started, 2),
        "esper_version": __version__,
    }
    write_json(folder.summary_path, summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`esper train offline` flags: the sources and run folder, then one per OfflineConfig field."""
    parser.add_argument("--from", dest="sources", nargs="+", required=True, metavar="RUN_DIR",
                        help="run folders with recorded transitions (heuristic, ppo, evaluate --record)")  # fmt: skip
    parser.add_argument("--run-dir", help="run folder (default runs/offline-TIME)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_config_flags(parser, OfflineConfig, "offline")


def config_from_args(args: argparse.Namespace) -> OfflineRunConfig:
    return OfflineRunConfig(sources=list(args.sources), offline=config_flag_values(args, "offline"))
