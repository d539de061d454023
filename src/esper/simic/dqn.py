"""Offline masked Double DQN with a conservative (CQL) penalty, on prioritized replay.

Learning a controller from recorded runs means learning from a fixed dataset
that mostly shows one behaviour (the heuristic's). Plain Q-learning then
overestimates actions the data never tried, and the greedy policy chases those
errors. CQL (Kumar et al. 2020) adds `logsumexp_a Q(s, a) - Q(s, a_data)`, which
pushes down every valid action's value relative to the one taken, so the policy
stays close to what the data supports unless the evidence says otherwise.
`cql_weight=0` gives plain masked Double DQN.

Rare outcomes (a fossilization, a cull, a governor rollback) are the few steps
that carry the real signal, so they enter the prioritized buffer with a higher
priority; after each update a sample's priority becomes its |TD error|.

The buffer stores each step's action mask as extra columns next to its
observation (the PER contract holds states and next states, not masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esper.leyline.ranges import (
    AtLeastOne,
    Fraction,
    Interval,
    LearningRate,
    NonNegativeFloat,
    PositiveFloat,
    Seed,
    check_fields,
)
from esper.simic.actions import apply_mask
from esper.simic.networks import NetworkConfig, init_layer, mlp_torso
from esper.simic.prioritized_buffer import PrioritizedReplayBuffer


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    # Discount per epoch; None: the discount the recorded shaping term was computed with
    # (see `learning_discount`).
    gamma: Annotated[float, Interval(ge=0, lt=1)] | None = None
    drop_shaping: bool = False  # learn without the potential-based terms (shaping; the contribution where recorded as one)
    lr: LearningRate = 1e-3  # Adam learning rate
    batch_size: AtLeastOne = 128
    updates: AtLeastOne = 3000  # gradient steps over the whole dataset
    target_every: AtLeastOne = 200  # hard copy of the online net into the target net
    cql_weight: NonNegativeFloat = 1.0  # conservative penalty; 0 = plain masked Double DQN
    rare_priority: PositiveFloat = 10.0  # initial priority of fossilize / cull / rollback steps
    base_priority: PositiveFloat = 1.0  # initial priority of every other step
    per_alpha: Fraction = 0.6  # how strongly priorities shape sampling
    per_beta: Fraction = 0.4  # importance-sampling correction, annealed to 1 over the run
    grad_clip: PositiveFloat = 10.0
    hidden: AtLeastOne = 64
    layers: AtLeastOne = 2
    seed: Seed = 0

    def __post_init__(self) -> None:
        check_fields(self)


def learning_discount(config: OfflineConfig, shaping_gamma: float, shaping_in_reward: bool) -> OfflineConfig:
    """`config` with the discount to learn with: by default the recorded shaping term's own.

    Potential-based shaping, gamma * Phi(s') - Phi(s), leaves the best policy
    unchanged only under the same gamma. Learning the recorded (shaped) rewards
    with another discount turns the shaping into a real reward for sitting in
    high-potential stages (about +0.005 per step for gamma 0.95 against the
    recorded 0.99: more than the rent of a seed), so that mismatch is refused.
    Without the shaping term in the reward any discount is sound.
    """
    if config.gamma is None:
        return replace(config, gamma=shaping_gamma)
    if shaping_in_reward and not math.isclose(config.gamma, shaping_gamma, rel_tol=0.0, abs_tol=1e-9):
        raise ValueError(
            f"the recorded rewards hold potential-based shaping computed with gamma {shaping_gamma} "
            f"(transitions_meta.json shaping_gamma), which only cancels out when learning with the "
            f"same discount, not --gamma {config.gamma}: leave --gamma unset (or give --gamma "
            f"{shaping_gamma}), or add --drop-shaping to learn without the shaping term"
        )
    return config


class QNetwork(nn.Module):
    """Q-values for every action from a (normalised) observation."""

    def __init__(self, obs_size: int, n_actions: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.config = NetworkConfig(hidden=hidden, layers=layers)  # saved in policy.pt
        self.torso = mlp_torso(obs_size, self.config)
        self.head = init_layer(hidden, n_actions, gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs))


class QPolicy(nn.Module):
    """A Q-network behind the actor-critic's call signature, so `PolicyController` runs it.

    Masked Q-values stand in for logits: the argmax is the greedy action among
    the possible ones (sampling from them would be a Boltzmann policy). No value
    head and no recurrent state.
    """

    def __init__(self, q: QNetwork) -> None:
        super().__init__()
        self.q = q

    def forward(self, obs: torch.Tensor, mask: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None, None]:
        return apply_mask(self.q(obs), mask), None, state


@dataclass(slots=True)
class Transitions:
    """A dataset of decision steps, one row each (float observations, bool masks)."""

    obs: torch.Tensor  # (N, obs)
    mask: torch.Tensor  # (N, A) bool
    action: torch.Tensor  # (N,) long
    reward: torch.Tensor  # (N,)
    next_obs: torch.Tensor  # (N, obs)
    next_mask: torch.Tensor  # (N, A) bool
    done: torch.Tensor  # (N,) float
    rare: torch.Tensor  # (N,) bool: fossilize, cull or rollback happened at this step

    def __len__(self) -> int:
        return self.action.shape[0]


def td_and_cql_loss(
    online: QNetwork,
    target: QNetwork,
    batch: dict[str, torch.Tensor],
    weights: torch.Tensor,
    obs_size: int,
    config: OfflineConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Importance-weighted Double-DQN TD loss plus the CQL penalty; returns |TD errors| too."""
    if config.gamma is None:
        raise ValueError("config.gamma is unset: resolve it with learning_discount first")
    obs, mask = batch["states"][:, :obs_size], batch["states"][:, obs_size:] > 0.5
    next_obs, next_mask = batch["next_states"][:, :obs_size], batch["next_states"][:, obs_size:] > 0.5
    actions = batch["actions"].long().reshape(-1)
    q = online(obs)
    q_taken = q.gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        # Double DQN: the online net picks the next action (among valid ones), the target net rates it.
        best_next = apply_mask(online(next_obs), next_mask).argmax(dim=1, keepdim=True)
        next_value = target(next_obs).gather(1, best_next).squeeze(1)
        target_value = batch["rewards"] + config.gamma * (1.0 - batch["dones"]) * next_value
    td_error = target_value - q_taken
    td_loss = (weights * F.smooth_l1_loss(q_taken, target_value, reduction="none")).mean()
    cql = (torch.logsumexp(apply_mask(q, mask), dim=1) - q_taken).mean()
    loss = td_loss + config.cql_weight * cql
    stats = {"td_loss": td_loss.item(), "cql": cql.item(), "q_mean": q_taken.mean().item()}
    return loss, td_error.abs().detach(), stats


def train_offline(data: Transitions, config: OfflineConfig) -> tuple[QNetwork, list[dict[str, float]]]:
    """Fit a Q-network to recorded transitions; returns it and the loss history (every 100 updates).

    A loss that stops being finite ends training with a `RuntimeError` naming the
    update and the loss terms (finite data with clipped gradients should not
    diverge, so it says what to change).
    """
    if len(data) == 0:
        raise ValueError("no transitions to learn from: record some runs first")
    torch.manual_seed(config.seed)
    obs_size, n_actions = data.obs.shape[1], data.mask.shape[1]
    online = QNetwork(obs_size, n_actions, config.hidden, config.layers)
    target = QNetwork(obs_size, n_actions, config.hidden, config.layers)
    target.load_state_dict(online.state_dict())
    optimizer = torch.optim.Adam(online.parameters(), lr=config.lr)
    buffer = PrioritizedReplayBuffer(
        capacity=len(data),
        alpha=config.per_alpha,
        beta=config.per_beta,
        beta_increment=(1.0 - config.per_beta) / config.updates,
        seed=config.seed,
    )
    priorities = np.where(data.rare.numpy(), config.rare_priority, config.base_priority)
    buffer.add_batch(
        torch.cat([data.obs, data.mask.float()], dim=1),
        data.action,
        data.reward,
        torch.cat([data.next_obs, data.next_mask.float()], dim=1),
        data.done,
        priorities,
    )
    history: list[dict[str, float]] = []
    for update in range(config.updates):
        batch, indices, weights = buffer.sample(min(config.batch_size, len(data)))
        loss, td_abs, stats = td_and_cql_loss(
            online, target, batch, torch.as_tensor(weights), obs_size, config
        )
        if not math.isfinite(loss.item()):
            raise RuntimeError(
                f"offline training diverged at update {update}: loss {loss.item()} ({stats}); "
                f"try a lower --lr (now {config.lr}) or --gamma (now {config.gamma})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(online.parameters(), config.grad_clip)
        optimizer.step()
        buffer.update_priorities(indices, td_abs.numpy() + 1e-3)
        if (update + 1) % config.target_every == 0:
            target.load_state_dict(online.state_dict())
        if update % 100 == 0 or update == config.updates - 1:
            history.append({"update": update, "loss": loss.item(), **stats})
    return online, history
