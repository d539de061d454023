"""Warm start for PPO: the policy begins as the controller whose runs were recorded.

PPO from a random policy spends its first hundreds of episodes germinating and
culling at random, and on this machine a few hundred episodes is all a run gets
(the 40-round mnist5k-tiny recipe learned to keep one early seed and still churned).
A warm start fits the actor-critic to recorded runs (the heuristic's, typically)
before the first round, so PPO improves on that controller instead of rediscovering it:

- the observation normaliser takes the recordings' statistics (PPO keeps updating it);
- the actor is fitted to the recorded actions: cross-entropy on the masked logits
  (behaviour cloning);
- the critic is fitted to the value of the recorded behaviour under the run's own
  reward: fitted TD(0) evaluation, V(s) <- r + gamma V_target(s') (1 - done), with a
  target copy refreshed every `target_every` updates. TD on single transitions needs
  no episode grouping (PPO recordings interleave their environments' lines), and a
  critic that already knows the returns keeps PPO's first advantages from being noise
  that would pull the cloned actor away at once.

The recorded steps' rewards are re-weighed to the run's reward config (weights and
prices may differ from the recording's; the rest may not, see `RecordedTransitions.reweighed`).
Only the MLP network can be cloned from single steps: an LSTM's decision depends on
the episode before it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from esper.leyline.ranges import AtLeastOne, LearningRate, check_fields
from esper.simic.features import FeatureLayout, RunningNorm
from esper.simic.networks import ActorCritic
from esper.simic.recorded import RecordedTransitions, load_transitions, recorded_layout


@dataclass(frozen=True, slots=True)
class WarmStartConfig:
    """How long and how fast the actor-critic is fitted to the recordings (flags --warm-start-*)."""

    updates: AtLeastOne = 2000  # gradient steps for the actor and the critic each (Adam)
    batch_size: AtLeastOne = 256  # recorded steps per step, drawn with replacement
    learning_rate: LearningRate = 1e-3
    target_every: AtLeastOne = 50  # critic: hard copy into the TD target net (a 30-step episode needs ~30 copies to propagate)

    def __post_init__(self) -> None:
        check_fields(self)


def read_recordings_for(sources: Sequence[str], task: str) -> RecordedTransitions:
    """The recorded runs a new run on `task` is fitted to; they must be of that task."""
    recorded = load_transitions(sources)
    if recorded.meta["task"] != task:
        raise ValueError(f"the warm-start runs were recorded on task {recorded.meta['task']}, this run trains on "
                         f"{task}: warm-start from runs of the same task")  # fmt: skip
    return recorded


def check_recorded_layout(recorded: RecordedTransitions, layout: FeatureLayout) -> None:
    """The recordings' slots and blueprints must be the run's: the policy's inputs and outputs are named by them."""
    theirs, _ = recorded_layout(recorded.meta)
    for what in ("slot_ids", "blueprints"):
        if getattr(theirs, what) != getattr(layout, what):
            raise ValueError(
                f"the warm-start runs were recorded with {what} {list(getattr(theirs, what))}, this run has "
                f"{list(getattr(layout, what))}: give the run the same --slots and --blueprints as the recordings"
            )


def warm_start(
    model: ActorCritic,
    norm: RunningNorm,
    recorded: RecordedTransitions,
    reward: torch.Tensor,
    gamma: float,
    config: WarmStartConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """Fit `norm`, then `model`'s actor and critic, to the recorded steps (in place).

    `reward` holds every recorded step's reward under the run's reward config. Returns
    what the job reports: the share of recorded actions the fitted policy's argmax
    takes, and the actor's and critic's last losses.
    """
    if model.recurrent:
        raise ValueError("a warm start clones single recorded steps, which needs the mlp network (--network-kind mlp)")
    columns = recorded.columns
    norm.update(columns["obs"])
    obs, next_obs = norm(columns["obs"]).unsqueeze(0), norm(columns["next_obs"]).unsqueeze(0)
    mask, next_mask = columns["mask"].unsqueeze(0), columns["next_mask"].unsqueeze(0)
    actions, live = columns["action"], 1.0 - columns["done"]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    target = copy.deepcopy(model)
    actor_loss = critic_loss = 0.0
    for update in range(config.updates):
        if update % config.target_every == 0:
            target.load_state_dict(model.state_dict())
        batch = torch.randint(len(actions), (config.batch_size,), generator=generator)
        logits, values, _ = model(obs[:, batch], mask[:, batch])
        with torch.no_grad():
            _, next_values, _ = target(next_obs[:, batch], next_mask[:, batch])
            td_target = reward[batch] + gamma * next_values[0] * live[batch]
        actor = F.cross_entropy(logits[0], actions[batch])
        critic = 0.5 * (values[0] - td_target).pow(2).mean()
        optimizer.zero_grad()
        (actor + critic).backward()  # the MLP's actor and critic share no parameters
        optimizer.step()
        actor_loss, critic_loss = actor.item(), critic.item()
    with torch.no_grad():
        logits, _, _ = model(obs, mask)
        agreement = (logits[0].argmax(-1) == actions).float().mean().item()
    return {"steps": len(actions), "agreement": agreement, "actor_loss": actor_loss, "critic_loss": critic_loss}
