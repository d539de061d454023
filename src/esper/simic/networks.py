"""The actor-critic: a shared torso, a policy head over the flat action space, a value head.

`kind="mlp"` (default) sees only the current observation, which already carries
recent history (see `features.py`). `kind="lstm"` adds a recurrent core for
longer memory; its rollouts are whole episodes starting from a zero state, so
the PPO update simply replays each environment's sequence.

Every forward takes observations shaped (T, B, obs) and returns logits (T, B, A)
and values (T, B): rollouts call it with T=1, the update with the whole batch
(MLP: T=1 and B = all samples; LSTM: T = episode steps and B = environments).
Initialisation follows CleanRL: orthogonal weights, a policy head scaled by 0.01
so the first policy is near uniform over valid actions, a value head scaled by 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from esper.leyline.ranges import AtLeastOne, check_fields
from esper.simic.actions import apply_mask

State = tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    kind: str = "mlp"  # "mlp" or "lstm"
    hidden: AtLeastOne = 64  # width of every hidden layer (and the LSTM state)
    layers: AtLeastOne = 2  # hidden layers in the torso (before the LSTM, if any)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind not in ("mlp", "lstm"):
            raise ValueError(f"network kind must be 'mlp' or 'lstm', got '{self.kind}'")


def init_layer(in_features: int, out_features: int, gain: float = 2**0.5) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_torso(obs_size: int, config: NetworkConfig) -> nn.Sequential:
    widths = [obs_size] + [config.hidden] * config.layers
    return nn.Sequential(*(m for a, b in pairwise(widths) for m in (init_layer(a, b), nn.Tanh())))


class ActorCritic(nn.Module):
    """MLP: separate actor and critic torsos (as CleanRL), so the value loss, which is
    large and noisy early on, does not push the policy's features around.
    LSTM: one torso and recurrent core shared by both heads (one memory of the episode)."""

    def __init__(self, obs_size: int, n_actions: int, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        self.actor_torso = mlp_torso(obs_size, config)
        self.critic_torso = None if config.kind == "lstm" else mlp_torso(obs_size, config)
        self.lstm = nn.LSTM(config.hidden, config.hidden) if config.kind == "lstm" else None
        self.policy = init_layer(config.hidden, n_actions, gain=0.01)
        self.value = init_layer(config.hidden, 1, gain=1.0)

    @property
    def recurrent(self) -> bool:
        return self.lstm is not None

    def forward(
        self, obs: torch.Tensor, mask: torch.Tensor, state: State = None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Masked logits (T, B, A), values (T, B) and the next recurrent state (None for MLP)."""
        actor = self.actor_torso(obs)
        if self.lstm is not None:
            actor, state = self.lstm(actor, state)
            critic = actor
        else:
            critic = self.critic_torso(obs)
        return apply_mask(self.policy(actor), mask), self.value(critic).squeeze(-1), state
