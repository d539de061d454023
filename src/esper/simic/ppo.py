"""PPO for the controller, CleanRL style: rollout, GAE, clipped update, all in one place.

One round = one episode in each of the K environments (`VecEnv`), collected with
one batched policy forward per step, then one PPO update on that batch.

Rollout tensors are (T, K, ...): time first, one column per environment. GAE
runs backwards along the time axis independently for every column, so
environments are never interleaved; an episode's last step is terminal, so
nothing is bootstrapped past it.

Logged numbers (`ppo_update` returns them):
  policy_loss        clipped surrogate loss, -min(r A, clip(r, 1-e, 1+e) A), mean
  value_loss         0.5 x squared error of the value against the GAE return (clipped like the policy if clip_vloss)
  entropy            mean entropy of the masked policy: how undecided it still is
  approx_kl          mean (r - 1) - log r, the low-variance KL(old || new) estimator (Schulman)
  clip_fraction      share of samples whose ratio left [1-e, 1+e]
  explained_variance 1 - Var(return - value) / Var(return): 1 is a perfect critic, <= 0 a useless one
  update_epochs      passes over the batch actually run (fewer if target_kl stopped it early)

Under torchrun (DD-PPO, `simic.distributed`) every rank holds the same rollout and
draws the same minibatches; each computes the loss of its share of every minibatch
and the shares' gradients are averaged, weighted by share size, before the one
clipped step every rank takes: the step one process would take on the minibatch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import torch
from torch import nn

from esper.leyline.ranges import (
    AtLeastOne,
    Fraction,
    Interval,
    LearningRate,
    NonNegativeFloat,
    PositiveFloat,
    check_fields,
)
from esper.simic.features import RunningNorm
from esper.simic.networks import ActorCritic
from esper.simic.rewards import COMPONENTS
from esper.simic.vec_env import VecEnv
from esper.tolaria.distributed import World, shard

# The numbers `ppo_loss` logs per minibatch (means over its samples).
LOSS_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


@dataclass(frozen=True, slots=True)
class PPOConfig:
    learning_rate: LearningRate = 3e-3  # Adam step size (CleanRL's 3e-4 barely moves this small policy in 100 rounds)
    gamma: Annotated[float, Interval(gt=0, le=1)] = 0.99  # discount per epoch
    gae_lambda: Fraction = 0.95  # GAE bias/variance trade-off
    clip_coef: Annotated[float, Interval(gt=0, le=1)] = 0.2  # e in the clipped surrogate (ratios within 1 +- e)
    ent_coef: NonNegativeFloat = 0.01  # weight of the entropy bonus
    vf_coef: NonNegativeFloat = 0.5  # weight of the value loss
    max_grad_norm: PositiveFloat = 0.5  # global gradient-norm clip
    update_epochs: AtLeastOne = 10  # passes over each round's batch (batches are small: K x (L-1) samples)
    num_minibatches: AtLeastOne = 4  # minibatches per pass (over samples; over environments for the LSTM)
    target_kl: PositiveFloat | None = 0.03  # stop the passes early once approx_kl exceeds this (None: never)
    norm_adv: bool = True  # standardise advantages per minibatch
    clip_vloss: bool = True  # clip value updates like policy updates

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(slots=True)
class Rollout:
    """One round of experience, (T, K, ...) tensors."""

    obs: torch.Tensor  # normalised observations
    masks: torch.Tensor  # valid actions
    actions: torch.Tensor
    logprobs: torch.Tensor  # log pi_old(a | s)
    values: torch.Tensor  # V_old(s)
    rewards: torch.Tensor
    dones: torch.Tensor  # 1.0 where the episode ended after this step
    components: torch.Tensor  # (T, K, len(COMPONENTS)) reward components, for the logs


def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw actions from masked logits (..., A). Masked actions have probability exactly 0."""
    probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])


def collect_rollout(
    env: VecEnv, model: ActorCritic, norm: RunningNorm, seeds: list[int], generator: torch.Generator
) -> Rollout:
    """Play one episode in every environment, sampling from the current policy.

    Only the policy runs without gradients: the hosts inside the environments train.
    """
    raw, mask = env.reset(seeds)
    steps, state = [], None
    for _ in range(env.steps_per_episode):
        norm.update(raw)
        obs = norm(raw)
        with torch.no_grad():
            logits, value, state = model(obs.unsqueeze(0), mask.unsqueeze(0), state)
            logits, value = logits[0], value[0]
            action = sample(logits, generator)
            logprob = torch.log_softmax(logits, dim=-1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        next_raw, next_mask, rewards, done = env.step(action)
        reward = torch.tensor([r["total"] for r in rewards], dtype=torch.float32)
        components = torch.tensor([[r[c] for c in COMPONENTS] for r in rewards], dtype=torch.float32)
        steps.append((obs, mask, action, logprob, value, reward, torch.full_like(reward, float(done)), components))
        raw, mask = next_raw, next_mask
    return Rollout(*(torch.stack(column) for column in zip(*steps)))


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for (T, K) tensors, each column (environment) on its own.

    delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t);  A_t = delta_t + gamma lam (1 - done_t) A_{t+1}.
    `last_values` (K,) is V after the final step (ignored where that step is terminal).
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(last_values)
    next_value = last_values
    for t in reversed(range(rewards.shape[0])):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_advantage = delta + gamma * lam * live * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


def ppo_loss(model: ActorCritic, mb: dict[str, torch.Tensor], config: PPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO objective on one minibatch: clipped surrogate - entropy bonus + value loss."""
    logits, values, _ = model(mb["obs"], mb["masks"])
    logp_all = torch.log_softmax(logits, dim=-1)
    logprob = logp_all.gather(-1, mb["actions"].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    log_ratio = logprob - mb["logprobs"]
    ratio = log_ratio.exp()
    adv = mb["advantages"]
    if config.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)).mean()
    value_error = (values - mb["returns"]).pow(2)
    if config.clip_vloss:
        clipped = mb["values"] + (values - mb["values"]).clamp(-config.clip_coef, config.clip_coef)
        value_error = torch.max(value_error, (clipped - mb["returns"]).pow(2))
    value_loss = 0.5 * value_error.mean()
    loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": entropy.item(),
            "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
            "clip_fraction": ((ratio - 1).abs() > config.clip_coef).float().mean().item(),
        }
    return loss, stats


def update_batch(rollout: Rollout, config: PPOConfig, recurrent: bool) -> dict[str, torch.Tensor]:
    """The rollout plus GAE advantages and returns, shaped so minibatches split dim 1.

    For an MLP samples are independent: the batch becomes one time step of T*K
    samples. For the LSTM it stays (T, K): minibatches are whole environment columns.
    """
    advantages, returns = compute_gae(
        rollout.rewards, rollout.values, rollout.dones, torch.zeros_like(rollout.values[-1]), config.gamma, config.gae_lambda
    )
    batch = {
        "obs": rollout.obs, "masks": rollout.masks, "actions": rollout.actions, "logprobs": rollout.logprobs,
        "values": rollout.values, "advantages": advantages, "returns": returns,
    }  # fmt: skip
    if recurrent:
        return batch
    return {k: v.reshape(1, -1, *v.shape[2:]) for k, v in batch.items()}


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    config: PPOConfig,
    generator: torch.Generator,
    world: World | None = None,
) -> dict[str, float]:
    """Clipped PPO on one rollout of complete episodes; returns the logged numbers (means over minibatches).

    With a distributed `world`, every rank passes the same rollout and generator state
    and gets the same update; each computes only its share of every minibatch.
    """
    world = world or World.single()
    batch = update_batch(rollout, config, model.recurrent)
    units = batch["actions"].shape[1]
    minibatch = max(units // config.num_minibatches, 1)
    # Advantages are standardised over the whole minibatch here, before it is shared out,
    # so the loss of a share must not standardise them again.
    share_config = replace(config, norm_adv=False)
    history: list[dict[str, float]] = []
    epochs_run = 0
    for _ in range(config.update_epochs):
        epochs_run += 1
        order = torch.randperm(units, generator=generator)
        for start in range(0, units, minibatch):
            mb = {k: v[:, order[start : start + minibatch]] for k, v in batch.items()}
            adv = mb["advantages"]
            if config.norm_adv and adv.numel() > 1:
                mb["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)
            lo, hi = shard(mb["actions"].shape[1], world.rank, world.size)
            share = {k: v[:, lo:hi] for k, v in mb.items()}
            optimizer.zero_grad()
            stats = dict.fromkeys(LOSS_STATS, 0.0)  # a rank with no share this step adds nothing
            if hi > lo:
                loss, stats = ppo_loss(model, share, share_config)
                loss.backward()
            means = world.reduce_gradients(
                model.parameters(), share["actions"].numel(), [stats[k] for k in LOSS_STATS], fill_missing=True
            )
            stats = dict(zip(LOSS_STATS, means, strict=True))
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            history.append(stats)
        if config.target_kl is not None and history[-1]["approx_kl"] > config.target_kl:
            break
    logged = {k: sum(h[k] for h in history) / len(history) for k in history[0]}
    logged["explained_variance"] = explained_variance(batch["values"].flatten(), batch["returns"].flatten())
    logged["update_epochs"] = epochs_run
    return logged
