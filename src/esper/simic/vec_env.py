"""Environments: a host being trained is the environment, one step is one host epoch.

`MorphogeneticEnv` runs one episode at a time: a fresh host (its own trainer,
slots, optimisers, data order and governor, seeded per episode) trained for
`episode_length` epochs by tolaria's `EpochLoop`, the same loop every job runs.
After each epoch but the last, the controller's actions are applied and the next
epoch runs; the reward for those actions is read from that next epoch's signals
(`simic.rewards`). A rolled-back epoch is part of the episode (the reward has a
rollback penalty): its signals stay finite and the episode goes on. It takes any list of `Action`s, so
the same episode loop serves the PPO policy, the heuristic, the random policy
and the host-only baseline (`jobs.evaluate`). An episode is a function of its seed
and its actions alone: the environment runs on its own stream of torch's global
random generator (a new seed's weights come from it), so neither the other
environments stepped in between nor how they are split over processes
(`simic.distributed`) change it.

`VecEnv` runs K of them in lockstep in one process: all episodes have the same
length, so they start and end together, one PPO round collects exactly one
episode per environment, and the policy does one batched forward per step.
Environments are stepped one after the other (the host epochs are the cost; the
hosts are tiny, so one intra-op thread each is fastest on a small machine).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from esper.leyline import Action, Controller, EpochSignals, GrowthBudget, SeedLedger
from esper.runtime.data import TaskData
from esper.runtime.session import build_trainer
from esper.runtime.tasks import TaskSpec
from esper.simic.actions import ActionSpace, action_name
from esper.simic.features import FeatureLayout, Observer
from esper.simic.recording import EpisodeRecorder, RecordedController
from esper.simic.rewards import COMPONENTS, RewardConfig, RewardTracker
from esper.tamiyo import NoGrowthController
from esper.tolaria import EpochLoop, EpochResult, MorphogeneticTrainer

# Held-out evaluation seeds start here; training episodes use seeds below it.
EVAL_SEED_OFFSET = 10_000


@dataclass(slots=True)
class EpisodeStats:
    """What one finished episode did: the numbers `esper evaluate` and the PPO metrics report."""

    seed: int
    final_val_accuracy: float = 0.0
    params_added: int = 0
    host_params: int = 0
    episode_return: float = 0.0
    rewards: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    actions: Counter[str] = field(default_factory=Counter)
    ledger: SeedLedger = field(default_factory=SeedLedger)
    rollbacks: int = 0

    @property
    def seeds(self) -> dict[str, int]:
        """Germinated, fossilized and culled seeds, and those still live ("undecided")."""
        return {**self.ledger.totals, "undecided": len(self.ledger.undecided())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "final_val_accuracy": self.final_val_accuracy,
            "params_added": self.params_added,
            "host_params": self.host_params,
            "return": self.episode_return,
            "rewards": dict(self.rewards),
            "actions": dict(self.actions),
            "seeds": self.seeds,
            "rollbacks": self.rollbacks,
        }


class MorphogeneticEnv:
    """One host trained for `episode_length` epochs per episode, under outside control."""

    def __init__(
        self,
        spec: TaskSpec,
        data: TaskData,
        episode_length: int,
        slots: Sequence[str] | None = None,
        reward: RewardConfig | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        budget: GrowthBudget | None = None,
        blueprints: Sequence[str] | None = None,
    ) -> None:
        """With a growth `budget`, germinations past it are refused and each epoch's signals say
        which of `blueprints` every slot can still afford (the policy's action mask reads it)."""
        if episode_length < 2:
            raise ValueError(f"episode_length must be >= 2 epochs (one decision), got {episode_length}")
        self.spec = spec
        self.data = data
        self.episode_length = episode_length
        self.slots = tuple(slots or spec.slots)
        self.device = device  # where each episode's host trains, in which precision
        self.precision = precision
        self.rewards = RewardTracker(reward)
        self.budget = budget
        self.blueprints = blueprints
        self.trainer: MorphogeneticTrainer | None = None
        self.loop: EpochLoop | None = None
        self.stats: EpisodeStats | None = None
        self.signals: EpochSignals | None = None
        self.rng_state: torch.Tensor | None = None

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run on this episode's stream of the global torch generator; the caller's stream is kept."""
        outside = torch.get_rng_state()
        if self.rng_state is not None:
            torch.set_rng_state(self.rng_state)
        try:
            yield
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outside)

    def reset(self, seed: int) -> EpochSignals:
        """Start an episode on a fresh host seeded with `seed`; returns its first epoch's signals."""
        self.rng_state = None
        with self._own_rng():
            # build_trainer seeds the generator with `seed`: the episode's stream starts there.
            self.trainer = build_trainer(self.spec, self.data, seed, self.slots, fast_mode=True,
                                         device=self.device, precision=self.precision,
                                         budget=self.budget, blueprints=self.blueprints)  # fmt: skip
            self.loop = EpochLoop(self.trainer, self.episode_length)
            self.stats = EpisodeStats(seed=seed, host_params=self.trainer.model.host_param_count())
            self.signals = self._observe(self.loop.start())
        self.rewards.reset(self.signals)
        return self.signals

    def step(self, actions: Sequence[Action]) -> tuple[EpochSignals, dict[str, float], bool]:
        """Apply `actions`, train the next epoch; returns its signals, the reward components and done."""
        loop, stats = self.loop, self.stats
        if loop is None or stats is None:
            raise RuntimeError("MorphogeneticEnv.step() before reset()")
        stats.actions.update([action_name(a) for a in actions] or ["WAIT"])
        with self._own_rng():
            result = loop.step(actions)
        if result is None:
            raise RuntimeError("the episode is over: reset() before stepping again")
        self.signals = self._observe(result)
        done = self.signals.epoch >= self.episode_length - 1
        reward = self.rewards.step(self.signals, terminal=done)
        stats.episode_return += reward["total"]
        for name in COMPONENTS:
            stats.rewards[name] += reward[name]
        if done:
            self._finish()
        return self.signals, reward, done

    def _observe(self, result: EpochResult) -> EpochSignals:
        """Count the epoch's rollback and every seed's germination and fate (fossilized, or culled
        by anyone: the controller, the governor, or expiry), once each, from the lifecycle moves."""
        stats = self.stats
        stats.rollbacks += result.record.rollback is not None
        stats.ledger.record_moves(result.signals.transitions)
        return result.signals

    def _finish(self) -> None:
        stats, signals = self.stats, self.signals
        stats.final_val_accuracy = signals.val_accuracy
        stats.params_added = signals.seed_params


def play(env: MorphogeneticEnv, controller: Controller, seed: int, recorder: EpisodeRecorder | None = None) -> EpisodeStats:
    """One episode under `controller`: decide on each epoch's signals, as in any job (recorded if asked)."""
    if recorder is not None:
        recorder.start(seed)
        controller = RecordedController(controller, recorder)
    signals, done = env.reset(seed), False
    while not done:
        signals, _, done = env.step(controller.decide(signals))
    if recorder is not None:
        recorder.record(signals, [])  # completes the last step; nothing is decided after it
    return env.stats


def host_alone_accuracy(env: MorphogeneticEnv, seeds: Sequence[int]) -> float:
    """The mean final val accuracy of the host alone (nothing grown) over episodes with these
    seeds: the reward's `terminal_reference` (its terminal term then reads "over the host alone")."""
    return sum(play(env, NoGrowthController(), seed).final_val_accuracy for seed in seeds) / len(seeds)


class VecEnv:
    """K environments in lockstep, seen through observation vectors and action indices."""

    def __init__(
        self,
        spec: TaskSpec,
        data: TaskData,
        n_envs: int,
        episode_length: int,
        blueprints: Sequence[str],
        slots: Sequence[str] | None = None,
        reward: RewardConfig | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        budget: GrowthBudget | None = None,
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"need at least one environment, got {n_envs}")
        self.envs = [
            MorphogeneticEnv(spec, data, episode_length, slots, reward, device, precision, budget, blueprints)
            for _ in range(n_envs)
        ]
        slot_ids = self.envs[0].slots
        self.layout = FeatureLayout(slot_ids, tuple(blueprints))
        self.space = ActionSpace(slot_ids, blueprints)
        self.observers = [Observer(self.layout) for _ in self.envs]
        self.episode_length = episode_length
        # One per environment when a job records its rollouts (`simic.recording`); the job starts their episodes.
        self.recorders: list[EpisodeRecorder] = []

    @property
    def steps_per_episode(self) -> int:
        return self.episode_length - 1

    def reset(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """New episodes with the given seeds; returns raw observations (K, obs) and masks (K, A)."""
        for observer in self.observers:
            observer.reset()
        return self._observe([env.reset(seed) for env, seed in zip(self.envs, seeds, strict=True)])

    def step(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]], bool]:
        """One epoch in every environment; returns observations, masks, reward components, done."""
        actions = [self.space.action(int(i)) for i in indices]
        for recorder, env, action in zip(self.recorders, self.envs, actions):
            recorder.record(env.signals, [action])
        results = [env.step([action]) for env, action in zip(self.envs, actions, strict=True)]
        obs, masks = self._observe([signals for signals, _, _ in results])
        dones = {done for _, _, done in results}
        if len(dones) != 1:
            raise RuntimeError("environments in lockstep must finish together; their episode lengths differ")
        done = dones.pop()
        if done:
            for recorder, (signals, _, _) in zip(self.recorders, results):
                recorder.record(signals, [])  # completes the episode's last step
        return obs, masks, [reward for _, reward, _ in results], done

    def _observe(self, signals: list[EpochSignals]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = torch.stack([o.observe(s) for o, s in zip(self.observers, signals, strict=True)])
        masks = torch.stack([self.space.mask(s) for s in signals])
        return obs, masks

    def episode_stats(self) -> list[EpisodeStats]:
        return [env.stats for env in self.envs]
