"""`esper evaluate`: run a controller on fresh, held-out episodes and compare it with the host alone.

Controllers: a policy.pt from `esper train ppo`, "heuristic" (tamiyo's rules)
or "random" (uniform over possible actions). Episode i runs on seed
`EVAL_SEED_OFFSET + seed + i`, never used for training, and the same seed is
also run with `NoGrowthController`: same host init, same data order, nothing
grown; that is the host-only accuracy. Every episode is scored with the same
reward function PPO trains on (`simic.rewards`), so returns are comparable
across controllers; a policy.pt brings its own reward config and episode length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import make_heuristic, resolve_blueprints
from esper.jobs.ppo import DEFAULT_EPISODE_LENGTH, mean_std
from esper.leyline import Controller
from esper.leyline.ranges import MAX_SEED
from esper.nissa.files import check_writable, restore
from esper.nissa.run_folder import write_json
from esper.runtime import get_task
from esper.simic.actions import ActionSpace
from esper.simic.policy import PolicyController, RandomController
from esper.simic.recording import TRANSITIONS_FILE, EpisodeRecorder, episode_recorder
from esper.simic.rewards import RewardConfig
from esper.simic.vec_env import EVAL_SEED_OFFSET, MorphogeneticEnv, play
from esper.tamiyo import NoGrowthController
from esper.tolaria.precision import Precision

BUILTIN = ("heuristic", "random")
MEASURES = ("final_val_accuracy", "host_only_val_accuracy", "params_added", "return", "host_only_return", "return_over_host_only")


@dataclass(slots=True)
class EvaluationSetup:
    """What a controller name resolves to: how to make a fresh one, and the episode it plays."""

    make: Callable[[int], Controller]  # episode seed -> a controller with no memory of earlier episodes
    task: str
    episode_length: int
    slots: tuple[str, ...]
    blueprints: tuple[str, ...]
    reward: RewardConfig


def resolve(policy: str, task: str | None, episode_length: int | None) -> EvaluationSetup:
    if policy in BUILTIN:
        spec = get_task(task or "digits")
        blueprints = resolve_blueprints(spec, None)
        space = ActionSpace(spec.slots, blueprints)

        def make(seed: int) -> Controller:
            if policy == "random":
                return RandomController(space, seed)
            # Exactly what `esper train heuristic` runs by default.
            return make_heuristic(spec, blueprints, HeuristicRunConfig(task=spec.name))

        length = episode_length or DEFAULT_EPISODE_LENGTH
        return EvaluationSetup(make, spec.name, length, spec.slots, tuple(blueprints), RewardConfig())
    loaded = PolicyController.load(policy)
    info = loaded.info
    if task is not None and task != info["task"]:
        raise ValueError(f"{policy} was trained on task '{info['task']}', not '{task}' (its return is priced against "
                         "that task's host; to judge it on another task, use esper compare --transfer)")  # fmt: skip

    def make(seed: int) -> Controller:
        loaded.reset()  # greedy, so one loaded policy with its history cleared is a fresh one
        return loaded

    return EvaluationSetup(
        make,
        info["task"],
        episode_length or info["episode_length"],
        tuple(info["slot_ids"]),
        tuple(info["blueprints"]),
        restore(Path(policy), "a reward config", lambda: build_config(RewardConfig, info["reward"], {}, section="reward")),
    )


def evaluate(
    policy: str,
    task: str | None = None,
    episodes: int = 10,
    seed: int = 0,
    episode_length: int | None = None,
    json_path: str | Path | None = None,
    console: Console | None = None,
    record: str | Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Play `episodes` held-out episodes with `policy` and with the host alone; returns the report.

    With `record`, the controller's transitions (not the host-only runs') go to that folder.
    The episodes' hosts train on `device` in `precision` (the controller runs on the CPU).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    last_seed = MAX_SEED - EVAL_SEED_OFFSET - (episodes - 1)  # episode i plays seed EVAL_SEED_OFFSET + seed + i
    if not 0 <= seed <= last_seed:
        raise ValueError(f"seed must be >= 0 and <= {last_seed} for {episodes} episodes, got {seed}")
    Precision.on(precision, device)  # an unavailable device is refused before any work
    # Where the results go is checked before the work, which may take minutes.
    if json_path is not None:
        check_writable(json_path, "--json file")
    if record is not None:
        if (Path(record) / TRANSITIONS_FILE).exists():
            raise FileExistsError(f"{record} already holds recorded transitions; choose another --record folder")
        check_writable(record, "--record folder", folder=True)
    setup = resolve(policy, task, episode_length)
    spec = get_task(setup.task)
    env = MorphogeneticEnv(spec, spec.load_data(), setup.episode_length, setup.slots, setup.reward, device, precision)
    seeds = [EVAL_SEED_OFFSET + seed + i for i in range(episodes)]
    recorder = None
    if record is not None:
        recorder = episode_recorder(record, setup.task, setup.slots, setup.blueprints, setup.reward,
                                    mode="evaluate", policy=policy, episode_length=setup.episode_length)  # fmt: skip
    try:
        episodes_shown = track(seeds, description=f"evaluate {policy}", console=console, disable=console is None)
        rows = [paired_episode(env, setup, episode_seed, recorder) for episode_seed in episodes_shown]
    finally:
        if recorder is not None:
            recorder.log.close()
    report = summarize(policy, setup, seeds, rows)
    if console is not None:
        print_report(report, console)  # first: the table is shown even if writing the file fails
    if json_path is not None:
        write_json(Path(json_path), report)
    return report


def paired_episode(env: MorphogeneticEnv, setup: EvaluationSetup, episode_seed: int, recorder: EpisodeRecorder | None) -> dict[str, Any]:
    """One held-out episode with the controller and the same one with the host alone."""
    grown = play(env, setup.make(episode_seed), episode_seed, recorder).to_dict()
    host = play(env, NoGrowthController(), episode_seed)
    return {
        **grown,
        "host_only_val_accuracy": host.final_val_accuracy,
        "host_only_return": host.episode_return,
        # Paired on the same seed, so the host's own (seed-dependent) progress cancels out.
        "return_over_host_only": grown["return"] - host.episode_return,
    }


def summarize(policy: str, setup: EvaluationSetup, seeds: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report: every measure's mean and std over the episodes, actions and seed outcomes."""
    actions = Counter()
    outcomes = Counter()
    for row in rows:
        actions.update(row["actions"])
        outcomes.update(row["seeds"])
    return {
        "policy": policy,
        "task": setup.task,
        "episodes": len(rows),
        "episode_length": setup.episode_length,
        "seeds": seeds,
        **{m: mean_std([float(r[m]) for r in rows]) for m in MEASURES},
        "actions_per_episode": {k: v / len(rows) for k, v in sorted(actions.items())},
        "seed_outcomes": dict(outcomes),
        "per_episode": rows,
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{report['policy']} on {report['task']}: {report['episodes']} held-out episodes of {report['episode_length']} epochs")
    table.add_column("measure")
    table.add_column("mean ± std", justify="right")
    for measure in MEASURES:
        value = report[measure]
        fmt = "{:.2%}" if "accuracy" in measure else "{:,.0f}" if measure == "params_added" else "{:+.3f}"
        table.add_row(measure.replace("_", " "), f"{fmt.format(value['mean'])} ± {fmt.format(value['std'])}")
    outcomes = report["seed_outcomes"]
    table.add_row("seeds germinated / fossilized / culled / undecided (total)",
                  " / ".join(str(outcomes.get(k, 0)) for k in ("germinated", "fossilized", "culled", "undecided")))  # fmt: skip
    console.print(table)
    actions = Table(title="actions per episode")
    actions.add_column("action")
    actions.add_column("mean count", justify="right")
    for name, count in report["actions_per_episode"].items():
        actions.add_row(name, f"{count:.2f}")
    console.print(actions)
