"""Offline masked Double DQN: the target on a hand example, and learning a known best action."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.simic.actions import apply_mask
from esper.simic.dqn import (
    OfflineConfig,
    Transitions,
    learning_discount,
    td_and_cql_loss,
    train_offline,
)


class FixedQ(nn.Module):
    def __init__(self, values: list[list[float]]) -> None:
        super().__init__()
        self.values = torch.tensor(values)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.values[: obs.shape[0]] + self.bias


def test_double_dqn_target_uses_online_argmax_among_valid_actions() -> None:
    # Online prefers action 2 next, but it is masked: it must pick action 1; the target net rates it 5.
    online = FixedQ([[1.0, 4.0, 9.0]])
    target = FixedQ([[7.0, 5.0, 100.0]])
    batch = {
        "states": torch.tensor([[0.0, 1.0, 1.0, 1.0]]),  # obs (1) + mask (3)
        "next_states": torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        "actions": torch.tensor([0]),
        "rewards": torch.tensor([0.5]),
        "dones": torch.tensor([0.0]),
    }
    config = OfflineConfig(gamma=0.9, cql_weight=0.0)
    _, td_abs, _ = td_and_cql_loss(online, target, batch, torch.ones(1), obs_size=1, config=config)
    # target = 0.5 + 0.9 * 5 = 5.0; Q(s, a=0) = 1.0 -> |TD| = 4.0
    assert td_abs.item() == pytest.approx(4.0)
    batch["dones"] = torch.tensor([1.0])
    _, td_abs, _ = td_and_cql_loss(online, target, batch, torch.ones(1), obs_size=1, config=config)
    assert td_abs.item() == pytest.approx(0.5)


def _bandit_data(n: int = 600) -> Transitions:
    """Two states; action 1 pays 1, action 0 pays 0, action 2 is never possible; one-step episodes."""
    generator = torch.Generator().manual_seed(0)
    state = torch.randint(0, 2, (n,), generator=generator)
    action = torch.randint(0, 2, (n,), generator=generator)
    obs = nn.functional.one_hot(state, 2).float()
    mask = torch.tensor([True, True, False]).expand(n, 3).clone()
    return Transitions(
        obs=obs, mask=mask, action=action, reward=(action == 1).float(), next_obs=obs,
        next_mask=mask, done=torch.ones(n), rare=action == 1,
    )


@pytest.mark.parametrize("cql_weight", [0.0, 1.0])
def test_offline_training_learns_the_better_action(cql_weight: float) -> None:
    data = _bandit_data()
    net, history = train_offline(data, OfflineConfig(gamma=0.95, updates=300, cql_weight=cql_weight, hidden=16))
    assert history[-1]["td_loss"] < history[0]["td_loss"]
    q = apply_mask(net(torch.eye(2)), torch.tensor([True, True, False]).expand(2, 3))
    assert q.argmax(dim=1).tolist() == [1, 1]


def test_empty_dataset_and_bad_config_are_refused() -> None:
    empty = _bandit_data(0)
    with pytest.raises(ValueError, match="record some runs"):
        train_offline(empty, OfflineConfig())
    with pytest.raises(ValueError, match="gamma"):
        OfflineConfig(gamma=1.0)


def test_discount_defaults_to_the_recorded_shaping_gamma_and_refuses_another() -> None:
    assert learning_discount(OfflineConfig(), shaping_gamma=0.99, shaping_in_reward=True).gamma == 0.99
    assert learning_discount(OfflineConfig(gamma=0.99), 0.99, shaping_in_reward=True).gamma == 0.99
    with pytest.raises(ValueError, match=r"gamma 0.99 .* not --gamma 0.95: leave --gamma unset .* --drop-shaping"):
        learning_discount(OfflineConfig(gamma=0.95), 0.99, shaping_in_reward=True)
    # Without the shaping term in the reward any discount is sound.
    assert learning_discount(OfflineConfig(gamma=0.95, drop_shaping=True), 0.99, shaping_in_reward=False).gamma == 0.95


def test_unresolved_discount_is_refused() -> None:
    with pytest.raises(ValueError, match="learning_discount"):
        train_offline(_bandit_data(8), OfflineConfig(updates=1))
