"""DD-PPO: the K environments of a PPO run shared by the ranks of a torchrun run.

Each rank steps its contiguous share of the K environments (`tolaria.distributed.shard`:
global environment k has the same episode seeds as in one process). After every
reset and every step the ranks exchange what their environments produced
(observation, action mask, done, reward components) in one all-gather, so every
rank holds the whole round in global order, exactly as one process stepping all K
would: the observation normaliser is updated on all K rows, the policy runs on all
K and every action is drawn from the one generator every rank keeps in the same
state. The policy is tiny next to a host epoch, so running it K-wide on every rank
costs nothing that matters; the environments are the cost, and they are split.
Since an episode depends only on its seed and actions (each environment has its own
random stream), a round is the same whether one process or eight step it; the
update (`ppo.ppo_update` with the world) then splits every minibatch over the ranks.

Rank 0 alone writes the run folder, so the transitions every rank's recorders
produce are gathered to it once per round (`RoundLines`) and written in the order
one process writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from esper.simic.rewards import COMPONENTS
from esper.simic.vec_env import EpisodeStats, VecEnv
from esper.tolaria.distributed import World, shard

_REWARD_KEYS = ("total", *COMPONENTS)


def split_description(n_envs: int, world_size: int) -> str:
    """How K environments are shared out, e.g. "8 environments over 3 processes: 2, 3, 3"."""
    sizes = [hi - lo for lo, hi in (shard(n_envs, r, world_size) for r in range(world_size))]
    return f"{n_envs} environments over {world_size} processes: {', '.join(map(str, sizes))}"


class SharedVecEnv:
    """A `VecEnv` of this rank's environments, seen as the global K: what `collect_rollout` steps."""

    def __init__(self, local: VecEnv, world: World, n_envs: int) -> None:
        if world.size > n_envs:
            raise ValueError(too_many_processes(world.size, n_envs))
        self.local = local
        self.world = world
        self.n_envs = n_envs
        self.bounds = [shard(n_envs, rank, world.size) for rank in range(world.size)]
        self.lo, self.hi = self.bounds[world.rank]
        if len(local.envs) != self.hi - self.lo:
            raise ValueError(f"rank {world.rank} holds {len(local.envs)} environments, its share is {self.hi - self.lo}")
        self.layout = local.layout
        self.space = local.space
        self.episode_length = local.episode_length

    @property
    def steps_per_episode(self) -> int:
        return self.local.steps_per_episode

    def reset(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """New episodes (seeds for all K; this rank starts its share); every rank gets all K rows."""
        obs, masks = self.local.reset(list(seeds[self.lo : self.hi]))
        obs, masks, _, _ = self._gather(obs, masks, [dict.fromkeys(_REWARD_KEYS, 0.0)] * len(obs), False)
        return obs, masks

    def step(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]], bool]:
        """One epoch in every environment (this rank steps its share); returns all K rows."""
        obs, masks, rewards, done = self.local.step(indices[self.lo : self.hi])
        return self._gather(obs, masks, rewards, done)

    def _gather(
        self, obs: torch.Tensor, masks: torch.Tensor, rewards: list[dict[str, float]], done: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]], bool]:
        """One all-gather of every rank's rows (padded to the largest share), back in global order.

        float64 carries the observations (float32), masks and the rewards (Python floats) exactly.
        """
        width = (obs.shape[1], masks.shape[1], len(_REWARD_KEYS))
        rows = torch.cat(
            [
                obs.double(),
                masks.double(),
                torch.tensor([[r[k] for k in _REWARD_KEYS] for r in rewards], dtype=torch.float64),
                torch.full((len(obs), 1), float(done), dtype=torch.float64),
            ],
            dim=1,
        )
        largest = max(hi - lo for lo, hi in self.bounds)
        padded = torch.zeros(largest, rows.shape[1], dtype=torch.float64)
        padded[: len(rows)] = rows
        gathered = self.world.all_gather(padded)
        table = torch.cat([part[: hi - lo] for part, (lo, hi) in zip(gathered, self.bounds, strict=True)])
        obs_all, masks_all, rewards_all, done_all = table.split([*width, 1], dim=1)
        dones = set(done_all.view(-1).tolist())
        if len(dones) != 1:
            raise RuntimeError("environments in lockstep must finish together; their episode lengths differ")
        rewards_list = [dict(zip(_REWARD_KEYS, row, strict=True)) for row in rewards_all.tolist()]
        return obs_all.to(obs.dtype), masks_all.bool(), rewards_list, bool(dones.pop())

    def episode_stats(self) -> list[EpisodeStats]:
        """Every environment's finished episode, in global order."""
        return [stats for part in self.world.all_gather_object(self.local.episode_stats()) for stats in part]


def too_many_processes(processes: int, n_envs: int) -> str:
    return (
        f"{processes} processes for {n_envs} environments: every process steps at least one; "
        f"use --envs {processes} or more, or at most {n_envs} processes"
    )


class RoundLines:
    """The transition lines of this rank's environments in one round, handed to rank 0 at its end.

    Each environment's recorder writes through its own `for_env(k)` view. One process
    writes the lines of step t for environments 0..K-1, then those of step t+1, so
    rank 0 orders the gathered lines by (t, k) before writing them.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[int, int, dict[str, Any]]] = []

    def for_env(self, env_index: int) -> _EnvLines:
        return _EnvLines(self, env_index)

    def flush(self, world: World, log: Any | None) -> None:
        """Gather every rank's lines to rank 0, which writes them to `log` in one process's order."""
        gathered = world.gather_object(self.lines)
        self.lines = []
        if gathered is None:
            return
        for _, _, row in sorted((line for part in gathered for line in part), key=lambda line: line[:2]):
            log.write(row)


class _EnvLines:
    """What one environment's `EpisodeRecorder` writes to: it files lines under its environment."""

    def __init__(self, lines: RoundLines, env_index: int) -> None:
        self.lines = lines
        self.env_index = env_index

    def write(self, row: dict[str, Any]) -> None:
        self.lines.lines.append((row["t"], self.env_index, row))
