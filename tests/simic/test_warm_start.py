"""Warm start: a policy fitted to recorded runs takes their actions, and its critic knows their returns."""

from __future__ import annotations

import pytest
import torch

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import run_heuristic
from esper.simic.features import RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.recorded import RecordedTransitions, load_transitions
from esper.simic.rewards import RewardConfig
from esper.simic.warm_start import WarmStartConfig, warm_start

EAGER = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}
GAMMA = 0.9
QUICK = WarmStartConfig(updates=400, batch_size=32, learning_rate=3e-3, target_every=20)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedTransitions:
    """Two eager heuristic runs on digits (8 recorded steps each), paid against a reference."""
    root = tmp_path_factory.mktemp("recorded")
    for seed in (0, 1):
        config = HeuristicRunConfig(task="digits", epochs=9, seed=seed, heuristic=EAGER, reward={"terminal_reference": 0.9})
        run_heuristic(config, root / f"heuristic-{seed}")
    return load_transitions([root / "heuristic-0", root / "heuristic-1"])


def _fitted(recorded: RecordedTransitions, reward: torch.Tensor) -> tuple[ActorCritic, RunningNorm, dict[str, float]]:
    torch.manual_seed(0)
    model = ActorCritic(recorded.columns["obs"].shape[1], recorded.columns["mask"].shape[1])
    norm = RunningNorm(recorded.columns["obs"].shape[1])
    stats = warm_start(model, norm, recorded, reward, GAMMA, QUICK, torch.Generator().manual_seed(0))
    return model, norm, stats


def test_the_fitted_policy_takes_the_recorded_actions(recorded: RecordedTransitions) -> None:
    columns = recorded.columns
    assert len(set(columns["action"].tolist())) > 1, "the eager heuristic should germinate as well as wait"
    model, norm, stats = _fitted(recorded, columns["reward"])
    assert stats["steps"] == 16 and stats["agreement"] == 1.0
    logits, _, _ = model(norm(columns["obs"]).unsqueeze(0), columns["mask"].unsqueeze(0))
    taken = torch.softmax(logits[0], -1).gather(1, columns["action"].unsqueeze(1))
    assert taken.min() > 0.8  # decided: PPO starts from the recorded behaviour, not from uniform
    assert torch.allclose(norm.mean.float(), columns["obs"].mean(0), atol=1e-5)  # the recordings' statistics


def test_the_fitted_critic_knows_the_recorded_returns(recorded: RecordedTransitions) -> None:
    columns = recorded.columns
    model, norm, _ = _fitted(recorded, columns["reward"])
    assert columns["done"].tolist() == [0.0] * 7 + [1.0] + [0.0] * 7 + [1.0]  # one whole episode per run, in order
    returns, following = torch.zeros(len(recorded)), 0.0
    for i in reversed(range(len(recorded))):
        following = float(columns["reward"][i]) + GAMMA * following * (1.0 - float(columns["done"][i]))
        returns[i] = following
    _, values, _ = model(norm(columns["obs"]).unsqueeze(0), columns["mask"].unsqueeze(0))
    assert returns.abs().max() > 1.0, "the terminal reward should make the returns differ from 0"
    assert torch.allclose(values[0], returns, atol=0.15 * float(returns.abs().max()))


def test_the_critic_learns_the_reward_it_is_given(recorded: RecordedTransitions) -> None:
    """The rewards re-weighed to another terminal weight give other values (the run's reward, not the recording's)."""
    reward = recorded.meta["reward"]
    half = recorded.reweighed(RewardConfig(**{**reward, "terminal_weight": reward["terminal_weight"] / 2}))
    model, norm, _ = _fitted(recorded, half)
    full, _, _ = _fitted(recorded, recorded.columns["reward"])
    obs, mask = recorded.columns["obs"][:1], recorded.columns["mask"][:1]
    v_half = model(norm(obs).unsqueeze(0), mask.unsqueeze(0))[1].item()
    v_full = full(norm(obs).unsqueeze(0), mask.unsqueeze(0))[1].item()
    assert v_half == pytest.approx(v_full / 2, rel=0.3, abs=0.2)


def test_the_rest_of_the_reward_must_be_the_recorded_one(recorded: RecordedTransitions) -> None:
    other = RewardConfig(**{**recorded.meta["reward"], "terminal_reference": 0.8})
    with pytest.raises(ValueError, match=r"terminal_reference: 0.9 recorded, 0.8 asked"):
        recorded.reweighed(other)


def test_an_lstm_policy_is_refused(recorded: RecordedTransitions) -> None:
    model = ActorCritic(recorded.columns["obs"].shape[1], recorded.columns["mask"].shape[1], NetworkConfig(kind="lstm"))
    norm = RunningNorm(recorded.columns["obs"].shape[1])
    with pytest.raises(ValueError, match="needs the mlp network"):
        warm_start(model, norm, recorded, recorded.columns["reward"], GAMMA, QUICK, torch.Generator())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="updates must be >= 1"):
        WarmStartConfig(updates=0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        WarmStartConfig(learning_rate=0.0)

