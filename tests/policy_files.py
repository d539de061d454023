"""An untrained policy.pt, written as `esper train ppo` writes it: for tests where the file's
format and layout matter, not what the policy learned."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from esper.simic.actions import ActionSpace
from esper.simic.features import FeatureLayout, RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.policy import policy_payload
from esper.simic.rewards import RewardConfig


def write_untrained_policy(path: Path, slots: Sequence[str], blueprints: Sequence[str], task: str = "digits",
                           episode_length: int = 4) -> Path:  # fmt: skip
    layout, space = FeatureLayout(tuple(slots), tuple(blueprints)), ActionSpace(tuple(slots), tuple(blueprints))
    model = ActorCritic(layout.size, len(space), NetworkConfig())
    payload = policy_payload(model, RunningNorm(layout.size), layout, space, task=task, round=0,
                             episode_length=episode_length, reward=asdict(RewardConfig()))  # fmt: skip
    torch.save(payload, path)
    return path
