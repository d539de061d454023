"""GAE by hand and per environment; the PPO update lowers its loss; networks and config."""

import pytest
import torch

from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.ppo import PPOConfig, Rollout, compute_gae, ppo_loss, ppo_update, update_batch


def test_gae_matches_a_hand_computed_example():
    # One env, three steps, the episode ends after the last. gamma 0.9, lambda 0.8.
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])
    advantages, returns = compute_gae(rewards, values, dones, torch.tensor([9.9]), gamma=0.9, lam=0.8)
    # delta_2 = 2 - 0.3 = 1.7 (terminal: the 9.9 after it is ignored)        A_2 = 1.7
    # delta_1 = 0 + 0.9*0.3 - 0.4 = -0.13;   A_1 = -0.13 + 0.72*1.7   = 1.094
    # delta_0 = 1 + 0.9*0.4 - 0.5 = 0.86;    A_0 = 0.86 + 0.72*1.094 = 1.64768
    assert advantages.view(-1).tolist() == pytest.approx([1.64768, 1.094, 1.7])
    assert returns.view(-1).tolist() == pytest.approx([2.14768, 1.494, 2.0])


def test_gae_bootstraps_from_last_value_when_not_done():
    advantages, _ = compute_gae(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([2.0]), 0.9, 0.8)
    assert advantages.item() == pytest.approx(1 + 0.9 * 2.0 - 0.5)


def test_gae_never_mixes_environments():
    torch.manual_seed(0)
    rewards = torch.stack([torch.tensor([1.0, 0.0, 0.0, 5.0]), torch.tensor([-3.0, 2.0, 0.5, 0.0])], dim=1)
    values = torch.randn(4, 2)
    dones = torch.stack([torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])], dim=1)
    last = torch.tensor([0.7, -0.2])
    together, together_returns = compute_gae(rewards, values, dones, last, 0.99, 0.95)
    for k in range(2):
        alone, alone_returns = compute_gae(rewards[:, k : k + 1], values[:, k : k + 1], dones[:, k : k + 1], last[k : k + 1], 0.99, 0.95)
        assert torch.allclose(together[:, k], alone[:, 0])
        assert torch.allclose(together_returns[:, k], alone_returns[:, 0])
    # env 0's episode ends at step 1: its step-1 advantage sees nothing of step 2's reward.
    assert together[1, 0].item() == pytest.approx(0.0 - values[1, 0].item())


def fixed_rollout(model: ActorCritic, steps: int = 6, envs: int = 4, obs_size: int = 5, n_actions: int = 4) -> Rollout:
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(steps, envs, obs_size, generator=generator)
    masks = torch.ones(steps, envs, n_actions, dtype=torch.bool)
    masks[..., 3] = False
    with torch.no_grad():
        logits, values, _ = model(obs, masks)
        actions = torch.multinomial(torch.softmax(logits.view(-1, n_actions), -1), 1, generator=generator).view(steps, envs)
        logprobs = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    rewards = (actions == 1).float() - 0.1 * (actions == 2).float()
    dones = torch.zeros(steps, envs)
    dones[-1] = 1.0
    return Rollout(obs, masks, actions, logprobs, values, rewards, dones, torch.zeros(steps, envs, 5))


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_ppo_update_lowers_the_loss_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    model = ActorCritic(5, 4, NetworkConfig(kind=kind, hidden=16))
    rollout = fixed_rollout(model)
    config = PPOConfig(learning_rate=3e-3, update_epochs=8, num_minibatches=2, target_kl=None)
    batch = update_batch(rollout, config, model.recurrent)
    before, _ = ppo_loss(model, batch, config)
    stats = ppo_update(model, torch.optim.Adam(model.parameters(), lr=config.learning_rate), rollout, config, torch.Generator().manual_seed(0))
    after, _ = ppo_loss(model, batch, config)
    assert after.item() < before.item()
    assert set(stats) >= {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance"}
    assert stats["update_epochs"] == 8


def test_target_kl_stops_the_update_early():
    torch.manual_seed(0)
    model = ActorCritic(5, 4, NetworkConfig(hidden=16))
    config = PPOConfig(learning_rate=0.05, update_epochs=10, target_kl=1e-6)
    stats = ppo_update(model, torch.optim.Adam(model.parameters(), lr=0.05), fixed_rollout(model), config, torch.Generator())
    assert stats["update_epochs"] < 10


def test_configs_refuse_nonsense():
    with pytest.raises(ValueError):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError):
        NetworkConfig(kind="transformer")


def test_one_update_makes_a_positive_advantage_action_likelier_and_a_negative_one_rarer():
    torch.manual_seed(0)
    model = ActorCritic(5, 4, NetworkConfig(hidden=16))
    envs = 8
    obs = torch.randn(1, 1, 5).expand(1, envs, 5)  # one state, seen by 8 one-step episodes
    masks = torch.ones(1, envs, 4, dtype=torch.bool)
    actions = torch.tensor([[1, 2] * (envs // 2)])
    with torch.no_grad():
        logits, values, _ = model(obs, masks)
        logprobs = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    rewards = (actions == 1).float() - (actions == 2).float()  # action 1 pays, action 2 costs
    rollout = Rollout(obs, masks, actions, logprobs, values, rewards, torch.ones(1, envs), torch.zeros(1, envs, 5))

    def policy() -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(obs[:, :1], masks[:, :1])[0], -1).view(-1)

    before = policy()
    config = PPOConfig(update_epochs=1, num_minibatches=1, target_kl=None, ent_coef=0.0)
    ppo_update(model, torch.optim.Adam(model.parameters(), lr=1e-2), rollout, config, torch.Generator().manual_seed(0))
    after = policy()
    assert after[1] > before[1]  # positive advantage: more likely
    assert after[2] < before[2]  # negative advantage: less likely
