"""`esper train ppo`: learn the controller with PPO over K lockstep environments, with a run folder.

Each round plays one episode (a fresh host trained for `episode_length` epochs)
in every environment, then runs one PPO update. The run folder follows the main
job's conventions (`runtime.recorder`, `nissa.run_folder`): config.json, events.jsonl, metrics.jsonl
(one line per round), checkpoints/ every `checkpoint_every` rounds, summary.json
with "mode": "ppo", and `--resume`. The policy is written to policy.pt at every
checkpoint and at the end (see `simic.policy` for its content). With `tensorboard`
(`--tensorboard`) every round's numbers also go to RUN_DIR/tensorboard (rank 0 only,
through nissa's `TensorBoardOutput`, step = round): return, policy / value loss,
entropy, approx KL, clip fraction, the reward components (per episode and mean per
step), actions and seed outcomes; a resumed run appends from its checkpoint's round.

Log lines carry the round both as "round" and as "epoch", so the run folder's
`truncate_logs` drops the rounds after the checkpoint on resume unchanged, and
checkpoint files are named by round through `RunFolder.checkpoint_path`.

Training episodes use seeds below `EVAL_SEED_OFFSET` (episode k of round r:
seed*1000 + r*K + k, modulo the offset), so `esper evaluate` never sees them.

Under torchrun the K environments are shared by the ranks (DD-PPO, `simic.distributed`):
each rank steps its share, every rank holds the whole round and takes the same update,
and rank 0 alone reads and writes the run folder. A run resumes with any number of
processes: nothing in a checkpoint depends on how the environments were shared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import InstanceOf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typing_extensions import TypedDict  # pydantic checks typing's TypedDict only on Python >= 3.12

from esper import __version__
from esper.jobs.config import NULL, add_config_flags, build_config, check_placement
from esper.jobs.device_options import add_device_arguments
from esper.jobs.heuristic import resolve_blueprints
from esper.jobs.scaleout import run_fingerprint
from esper.leyline import GrowthBudget, TelemetryEvent, TelemetryEventType
from esper.leyline.ranges import AtLeastOne, Ge, Seed, check_fields
from esper.nissa import TelemetryHub, read_jsonl
from esper.nissa.run_folder import RunFolder
from esper.runtime import TaskData, TaskSpec, get_task
from esper.runtime.recorder import RunRecorder, run_config
from esper.runtime.session import build_trainer
from esper.simic.distributed import RoundLines, SharedVecEnv, split_description, too_many_processes
from esper.simic.features import RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.policy import policy_payload
from esper.simic.ppo import PPOConfig, Rollout, collect_rollout, ppo_update
from esper.simic.recorded import RecordedTransitions
from esper.simic.recording import EpisodeRecorder, TransitionLog, transitions_meta
from esper.simic.rewards import COMPONENTS, POTENTIALS, RewardConfig
from esper.simic.vec_env import (
    EVAL_SEED_OFFSET,
    EpisodeStats,
    MorphogeneticEnv,
    VecEnv,
    host_alone_accuracy,
)
from esper.simic.warm_start import (
    WarmStartConfig,
    check_recorded_layout,
    read_recordings_for,
    warm_start,
)
from esper.tolaria.distributed import World, shard

POLICY_FILE = "policy.pt"
DEFAULT_EPISODE_LENGTH = 25
# Host-only episodes a new run plays to measure the reward's terminal reference (when not given).
REFERENCE_EPISODES = 4


class PPOCheckpoint(TypedDict):
    """What a PPO run's checkpoint holds (checked before resuming from it)."""

    round: int
    model: dict[str, InstanceOf[torch.Tensor]]
    optimizer: dict[str, Any]
    normalizer: dict[str, Any]
    generator: InstanceOf[torch.Tensor]


@dataclass(slots=True)
class PPORunConfig:
    task: str = "digits"
    rounds: AtLeastOne = 100  # PPO updates; each plays one episode per environment
    envs: AtLeastOne = 8  # K environments in lockstep
    episode_length: Annotated[int, Ge(2)] = DEFAULT_EPISODE_LENGTH  # host epochs per episode
    seed: Seed = 0
    slots: list[str] | None = None  # None: the task's default slots
    blueprints: list[str] | None = None  # None: every blueprint of the task's topology
    checkpoint_every: AtLeastOne = 5  # rounds
    ppo: dict[str, Any] = field(default_factory=dict)  # PPOConfig overrides
    network: dict[str, Any] = field(default_factory=dict)  # NetworkConfig overrides
    reward: dict[str, Any] = field(default_factory=dict)  # RewardConfig overrides
    task_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # where the environments' hosts train (the policy stays on the CPU)
    precision: str = "fp32"
    # How far each episode's host may grow; the policy's action mask forbids germinations past it.
    budget: GrowthBudget = field(default_factory=GrowthBudget)
    tensorboard: bool = False  # also log every round to RUN_DIR/tensorboard
    # Recorded run folders the policy is fitted to before the first round (`simic.warm_start`).
    warm_start_from: list[str] = field(default_factory=list)
    warm_start: dict[str, Any] = field(default_factory=dict)  # WarmStartConfig overrides

    def __post_init__(self) -> None:
        check_fields(self)
        check_placement(self.device, self.precision)
        self.parts()  # every section is checked when the config is made, before any work

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def parts(self) -> tuple[PPOConfig, NetworkConfig, RewardConfig, WarmStartConfig]:
        """The typed configs; the reward's shaping discount defaults to PPO's gamma."""
        ppo = build_config(PPOConfig, self.ppo, {}, section="ppo")
        network = build_config(NetworkConfig, self.network, {}, section="network")
        reward = build_config(RewardConfig, {"gamma": ppo.gamma, **self.reward}, {}, section="reward")
        warm = build_config(WarmStartConfig, self.warm_start, {}, section="warm_start")
        return ppo, network, reward, warm


def _measure_reference(spec: TaskSpec, data: TaskData, config: PPORunConfig, reward: RewardConfig, console: Console | None) -> RewardConfig:
    """`reward` with its terminal reference: the host alone's final val accuracy over the first
    round's seeds (REFERENCE_EPISODES host-only episodes)."""
    env = MorphogeneticEnv(spec, data, config.episode_length, config.slots, reward, config.device, config.precision)
    seeds = [training_seed(config.seed, 0, k, config.envs) for k in range(min(config.envs, REFERENCE_EPISODES))]
    reference = host_alone_accuracy(env, seeds)
    if console is not None:
        console.print(f"terminal reference: the host alone ends at {reference:.2%} val accuracy "
                      f"({len(seeds)} host-only episodes)", highlight=False, markup=False)  # fmt: skip
    return replace(reward, terminal_reference=reference)


def training_seed(run_seed: int, round_index: int, env_index: int, n_envs: int) -> int:
    return (run_seed * 1000 + round_index * n_envs + env_index) % EVAL_SEED_OFFSET


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def round_metrics(round_index: int, rollout: Rollout, episodes: list[EpisodeStats], update: dict[str, float]) -> dict[str, Any]:
    """One metrics.jsonl line: returns, the update's numbers, reward components and actions."""
    per_step = rollout.components.mean(dim=1)  # (T, C): mean over environments
    actions = Counter()
    seeds = Counter()
    for episode in episodes:
        actions.update(episode.actions)
        seeds.update(episode.seeds)
    return {
        "round": round_index,
        "epoch": round_index,
        "return": mean_std([e.episode_return for e in episodes]),
        # What the policy is judged on: the potentials sum to ~0 only with gamma 1 (with gamma < 1
        # they charge (1 - gamma) x the potential held each epoch), so the raw return hides progress.
        "return_without_potentials": mean_std([e.episode_return - sum(e.rewards[c] for c in POTENTIALS) for e in episodes]),
        "final_val_accuracy": mean_std([e.final_val_accuracy for e in episodes]),
        "params_added": mean_std([float(e.params_added) for e in episodes]),
        **update,
        "rewards": {c: statistics.fmean(e.rewards[c] for e in episodes) for c in COMPONENTS},
        "rewards_mean_per_step": {c: per_step[:, i].mean().item() for i, c in enumerate(COMPONENTS)},
        "rewards_per_step": {c: per_step[:, i].tolist() for i, c in enumerate(COMPONENTS)},
        "actions": {name: count / len(episodes) for name, count in sorted(actions.items())},
        "seeds": {name: count / len(episodes) for name, count in seeds.items()},
        "rollbacks": sum(e.rollbacks for e in episodes),
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        console=console,
    )


def check_processes(config: PPORunConfig, processes: int) -> None:
    """Refuse more processes than environments: every process steps at least one."""
    if processes > config.envs:
        raise ValueError(too_many_processes(processes, config.envs))


@dataclass(slots=True)
class PPOSession:
    """What a PPO run trains with, built and checked before its folder is made."""

    ppo: PPOConfig
    reward: RewardConfig
    local: VecEnv  # the environments this rank steps: global indices lo..hi-1
    env: VecEnv | SharedVecEnv  # every environment, as the rollout sees them
    lo: int
    hi: int
    model: ActorCritic
    optimizer: torch.optim.Optimizer
    norm: RunningNorm
    generator: torch.Generator
    warm_stats: dict[str, float] | None = None  # what this session's warm start reported

    def state(self, rounds_done: int) -> dict[str, Any]:
        """A checkpoint's payload (`PPOCheckpoint`)."""
        return {"round": rounds_done, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "normalizer": self.norm.state_dict(), "generator": self.generator.get_state()}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.norm.load_state_dict(state["normalizer"])
        self.generator.set_state(state["generator"])
        return state["round"]


# What one environment holds at least, beyond its host's weights, gradients and two Adam moments
# (its trainer, loaders, observer and reward tracker); well under what one really takes.
ENV_OVERHEAD_BYTES = 1 << 20


def check_envs_fit(config: PPORunConfig, spec: TaskSpec, data: TaskData, processes: int = 1) -> None:
    """Refuse, before any work, more environments than this machine's memory can hold at once
    (a lower bound per environment; the host's weights counted four times)."""
    host = spec.build_host(data)
    per_env = 4 * sum(p.numel() * p.element_size() for p in host.parameters()) + ENV_OVERHEAD_BYTES
    needed, available = per_env * -(-config.envs // processes), available_memory()
    if available is not None and needed > available:
        raise ValueError(f"envs {config.envs:,} need at least {needed / 2**30:,.1f} GiB of memory "
                         f"({per_env / 2**20:.1f} MiB each{' per process' if processes > 1 else ''}), "
                         f"more than the {available / 2**30:,.1f} GiB available; use fewer envs")  # fmt: skip


def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux's MemAvailable; None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_ppo(
    config: PPORunConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    console: Console | None = None,
    world: World | None = None,
    rounds: int | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) a PPO controller in `run_dir`; returns the summary written to summary.json.

    With a distributed `world` (DD-PPO, see `simic.distributed`) every rank calls this and
    steps its share of the environments; rank 0 alone reads and writes the run folder
    and returns the summary, the others return None. Resuming, `rounds` trains the run to
    that many rounds (`runtime.recorder.resumed_config`); a run already complete as planned
    is left as it is.
    """
    world = world or World.single()
    folder = RunFolder(run_dir)
    config, complete = run_config(config, folder, "ppo", "round", resume, rounds, world, console,
                                  lambda saved: build_config(PPORunConfig, saved, {}))  # fmt: skip
    if complete is not None:
        return complete if world.is_main else None
    check_processes(config, world.size)
    # Everything that can be wrong with the config or the data is found before the folder is made.
    session = prepare_session(config, world, resume, console)
    recorder = RunRecorder(folder, TelemetryHub(), "ppo", config.task, state=session.state, unit="round",
                           checkpoint_every=config.checkpoint_every, world=world, tensorboard=config.tensorboard,
                           saved=lambda rounds, path: save_policy(recorder, session, config, rounds, path))  # fmt: skip
    new = {"mode": "ppo", "config": config.to_dict(), "processes": world.size, "esper_version": __version__}
    start_round = recorder.open(None if resume else new, PPOCheckpoint, session.restore)
    recorder.show(None)
    play_rounds(config, session, recorder, start_round, console)
    if not world.is_main:
        return None
    return summarize(recorder, config, config.rounds - start_round, world.size, session.warm_stats)


def prepare_session(config: PPORunConfig, world: World, resume: bool, console: Console | None) -> PPOSession:
    """The environments, the policy and its optimiser, fitted to the warm-start recordings when asked
    (a new run); the config's terminal reference is measured (and kept) when it has none."""
    ppo_config, network_config, reward_config, warm_config = config.parts()
    spec = get_task(config.task)
    data = spec.load_data(**config.task_options)
    blueprints = resolve_blueprints(spec, config.blueprints)
    check_envs_fit(config, spec, data, world.size)
    recorded = None if resume else read_warm_start(config, world, console)
    if "terminal_reference" not in config.reward:
        # Measured before the folder is made and kept in its config.json, so a resumed run
        # (and the policy.pt, which carries the reward config) pays against the same reference.
        measured = world.run_on_main(lambda: _measure_reference(spec, data, config, reward_config, console))
        config.reward = {**config.reward, "terminal_reference": measured.terminal_reference}
    reward_config = replace(reward_config, terminal_reference=config.reward["terminal_reference"])
    lo, hi = shard(config.envs, world.rank, world.size)  # the global environments this rank steps
    local = VecEnv(spec, data, hi - lo, config.episode_length, blueprints, config.slots, reward_config,
                   device=config.device, precision=config.precision, budget=config.budget)  # fmt: skip
    env = SharedVecEnv(local, world, config.envs) if world.distributed else local
    # Checks the slots, the device and the budget now: environments build their hosts later.
    trainer = build_trainer(spec, data, config.seed, config.slots, device=config.device, precision=config.precision,
                            budget=config.budget, blueprints=blueprints)  # fmt: skip
    if trainer.budget is not None:
        trainer.budget.check_startup()
    world.check_same("run's settings", run_fingerprint(config.to_dict(), data))
    torch.manual_seed(config.seed)
    model = ActorCritic(env.layout.size, len(env.space), network_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=ppo_config.learning_rate, eps=1e-5)
    session = PPOSession(ppo_config, reward_config, local, env, lo, hi, model, optimizer,
                         RunningNorm(env.layout.size), torch.Generator().manual_seed(config.seed))  # fmt: skip
    if config.warm_start_from and not resume:
        fit_warm_start(config, session, warm_config, recorded, world, console)
    return session


def read_warm_start(config: PPORunConfig, world: World, console: Console | None) -> RecordedTransitions | None:
    """The recordings a new run is warm-started from, read on rank 0 (None elsewhere, or without any);
    a config without a terminal reference takes theirs (every rank)."""
    if not config.warm_start_from:
        return None
    recorded: RecordedTransitions | None = None

    def read() -> float | None:
        nonlocal recorded
        recorded = read_recordings_for(config.warm_start_from, config.task)
        return recorded.meta["reward"].get("terminal_reference")

    reference = world.run_on_main(read)
    if "terminal_reference" not in config.reward:
        # The recordings' rewards were paid against it: the critic fitted to them means the same here.
        config.reward = {**config.reward, "terminal_reference": reference}
        if console is not None and world.is_main:
            said = "none: each episode's first-epoch" if reference is None else f"{reference:.2%}"
            console.print(f"terminal reference: the warm-start recordings' ({said} val accuracy)", highlight=False)
    return recorded


def fit_warm_start(config: PPORunConfig, session: PPOSession, warm_config: WarmStartConfig,
                   recorded: RecordedTransitions | None, world: World, console: Console | None) -> None:  # fmt: skip
    """The policy fitted to the recordings on rank 0 (`simic.warm_start`), then handed to every rank."""
    model, norm = session.model, session.norm

    def fit() -> dict[str, Any]:
        if recorded is None:  # read on rank 0; fit runs there alone
            raise RuntimeError("the warm-start recordings were not read")
        check_recorded_layout(recorded, session.env.layout)
        stats = warm_start(model, norm, recorded, recorded.reweighed(session.reward), session.ppo.gamma, warm_config,
                           torch.Generator().manual_seed(config.seed))  # fmt: skip
        return {"stats": stats, "model": model.state_dict(), "normalizer": norm.state_dict()}

    fitted = world.run_on_main(fit)
    if not world.is_main:
        model.load_state_dict(fitted["model"])
        norm.load_state_dict(fitted["normalizer"])
    stats = session.warm_stats = fitted["stats"]
    if console is not None and world.is_main:
        console.print(f"warm start: fitted to {stats['steps']:,} recorded steps from "
                      f"{len(config.warm_start_from)} run(s); the policy takes the recorded action in "
                      f"{stats['agreement']:.0%} of them", highlight=False)  # fmt: skip


def save_policy(recorder: RunRecorder, session: PPOSession, config: PPORunConfig, rounds_done: int, path: Path) -> None:
    """After each checkpoint: policy.pt as of it, and CHECKPOINT_SAVED."""
    env = session.env
    policy = policy_payload(session.model, session.norm, env.layout, env.space, task=config.task, round=rounds_done,
                            episode_length=config.episode_length, reward=asdict(session.reward),
                            warm_start_from=list(config.warm_start_from))  # fmt: skip
    recorder.folder.save_checkpoint(policy, recorder.folder.path / POLICY_FILE)
    recorder.hub.emit(TelemetryEvent(TelemetryEventType.CHECKPOINT_SAVED, epoch=rounds_done - 1, message=str(path)))


def play_rounds(config: PPORunConfig, session: PPOSession, recorder: RunRecorder, start_round: int, console: Console | None) -> None:
    """The rounds from `start_round` to the end, each recorded as a metrics line (rank 0)."""
    world, env, local = recorder.world, session.env, session.local
    main = world.is_main
    # Every environment's decisions are also recorded as transitions, for `esper train offline`.
    log = None
    if main:
        log = TransitionLog(recorder.folder.path, transitions_meta(config.task, env.layout, env.space, session.reward,
                                                                   mode="ppo", episode_length=config.episode_length))  # fmt: skip
    # Several ranks: each records its own environments, and rank 0 writes every line once a round.
    lines = RoundLines() if world.distributed else None
    local.recorders = [EpisodeRecorder(log if lines is None else lines.for_env(k), env.layout, env.space, session.reward)
                       for k in range(session.lo, session.hi)]  # fmt: skip
    progress = _progress(console) if console is not None and main else None
    split = split_description(config.envs, world.size) if world.distributed else None
    recorder.start(config.rounds, message=split or "", processes=world.size)
    if split is not None and console is not None and main:
        console.print(split, highlight=False)
    try:
        if progress is not None:
            progress.start()
            bar = progress.add_task(f"ppo {config.task}", total=config.rounds, completed=start_round, info="")
        for round_index in range(start_round, config.rounds):
            record = play_round(config, session, recorder, round_index, lines, log)
            if progress is not None and record is not None:
                info = (f"return {record['return']['mean']:+.3f} ({record['return_without_potentials']['mean']:+.3f} "
                        f"without potentials)  entropy {record['entropy']:.2f}  kl {record['approx_kl']:.4f}")  # fmt: skip
                progress.update(bar, advance=1, info=info)
        recorder.finish(config.rounds)
    finally:
        if progress is not None:
            progress.stop()
        recorder.close()
        if log is not None:
            log.close()


def play_round(config: PPORunConfig, session: PPOSession, recorder: RunRecorder, round_index: int,
               lines: RoundLines | None, log: TransitionLog | None) -> dict[str, Any] | None:  # fmt: skip
    """One round: an episode in every environment, one PPO update; its metrics line on rank 0 (None elsewhere)."""
    world, model = recorder.world, session.model
    world.at(f"round {round_index}")
    round_started = time.perf_counter()
    seeds = [training_seed(config.seed, round_index, k, config.envs) for k in range(config.envs)]
    for episode_recorder, episode_seed in zip(session.local.recorders, seeds[session.lo : session.hi], strict=True):
        episode_recorder.start(episode_seed, epoch=round_index)
    model.eval()
    rollout = collect_rollout(session.env, model, session.norm, seeds, session.generator)
    model.train()
    update = ppo_update(model, session.optimizer, rollout, session.ppo, session.generator, world)
    episodes = session.env.episode_stats()
    if lines is not None:
        lines.flush(world, log)
    checkpoint = recorder.checkpoint_due(round_index + 1, model)
    if not world.is_main:
        return None
    record = round_metrics(round_index, rollout, episodes, update)
    record["seconds"] = round(time.perf_counter() - round_started, 3)
    recorder.write(record)
    recorder.hub.emit(TelemetryEvent(TelemetryEventType.PPO_UPDATE, epoch=round_index,
                                     data={k: v for k, v in record.items() if k != "rewards_per_step"}))  # fmt: skip
    if checkpoint:
        recorder.save(round_index + 1)
    return record


def summarize(
    recorder: RunRecorder,
    config: PPORunConfig,
    rounds_this_session: int,
    processes: int = 1,
    warm_start: dict[str, float] | None = None,
) -> dict[str, Any]:
    """summary.json; `warm_start` is what this session's warm start reported (None when it had none)."""
    rounds = [r["return"]["mean"] for r in read_jsonl(recorder.folder.metrics_path)]
    window = max(len(rounds) // 10, 1)
    head = {
        "seed": config.seed,
        "rounds": config.rounds,
        "envs": config.envs,
        "episode_length": config.episode_length,
        "episodes": config.rounds * config.envs,
        # The host alone's final val accuracy the terminal reward is paid against.
        "terminal_reference": config.reward.get("terminal_reference"),
    }
    body = {
        "first_rounds_return": statistics.fmean(rounds[:window]),
        "last_rounds_return": statistics.fmean(rounds[-window:]),
        "best_round_return": max(rounds),
        "warm_start_from": list(config.warm_start_from),
        "policy": str(recorder.folder.path / POLICY_FILE),
        "rounds_this_session": rounds_this_session,
        "processes": processes,
        **({} if warm_start is None else {"warm_start": warm_start}),
    }
    return recorder.summarize(head, body)


# --------------------------------------------------------------------------- CLI

_FLAGGED = ((PPOConfig, "ppo", "--"), (NetworkConfig, "network", "--network-"), (WarmStartConfig, "warm_start", "--warm-start-"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`esper train ppo` flags: the run's own, then one per PPOConfig / NetworkConfig field."""
    parser.add_argument("--task", help="task name (see `esper tasks`); default digits")
    parser.add_argument("--rounds", type=int, help="PPO rounds (default 100)")
    parser.add_argument("--envs", type=int, help="environments in lockstep (default 8)")
    parser.add_argument("--episode-length", type=int, help=f"host epochs per episode (default {DEFAULT_EPISODE_LENGTH})")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--slots", nargs="+", help="injection points the policy controls")
    parser.add_argument("--blueprints", nargs="+", help="blueprints the policy may plant")
    parser.add_argument("--checkpoint-every", type=int, help="checkpoint every K rounds (default 5)")
    parser.add_argument("--run-dir", help="run folder (default runs/ppo-TASK-TIME)")
    parser.add_argument("--config", help="JSON or TOML file of config keys; flags override it")
    parser.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    parser.add_argument("--quiet", action="store_true", help="no live progress")
    parser.add_argument("--tensorboard", action="store_true", default=None, help="also log every round to RUN_DIR/tensorboard")
    parser.add_argument("--warm-start", dest="warm_start_from", nargs="+", metavar="RUN_DIR",
                        help="fit the policy to these recorded runs (e.g. heuristic runs) before the first round")  # fmt: skip
    add_device_arguments(parser, "the environments' hosts")
    for cls, group_name, prefix in _FLAGGED:
        add_config_flags(parser, cls, group_name, prefix)
    parser.add_argument("--no-target-kl", dest="ppo__target_kl", action="store_const", const=NULL,
                        help="never stop an update early on KL")  # fmt: skip
    prices = parser.add_argument_group("reward prices in FLOPs (simic.rewards; config keys reward.flop_price_*)")
    prices.add_argument("--flop-price-training", dest="reward__flop_price_training", type=float, metavar="PRICE",
                        help="reward per extra host-episode of training FLOPs spent (default 0)")  # fmt: skip
    prices.add_argument("--flop-price-inference", dest="reward__flop_price_inference", type=float, metavar="PRICE",
                        help="reward per starting host's inference FLOPs per sample added (default 0)")  # fmt: skip
