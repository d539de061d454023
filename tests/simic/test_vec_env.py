"""Lockstep environments: independent hosts, one episode per reset, any controller fits."""

import pytest
import torch

from esper.jobs.heuristic import resolve_blueprints
from esper.leyline import ActionKind
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.simic.actions import ActionSpace
from esper.simic.features import FeatureLayout, RunningNorm
from esper.simic.networks import ActorCritic
from esper.simic.policy import PolicyController, RandomController
from esper.simic.ppo import sample
from esper.simic.vec_env import MorphogeneticEnv, VecEnv, play
from esper.tolaria import EpochLoop, run_epochs


@pytest.fixture(scope="module")
def digits():
    spec = get_task("digits")
    return spec, spec.load_data(), resolve_blueprints(spec, None)


def test_vec_env_runs_independent_environments_in_lockstep(digits):
    spec, data, blueprints = digits
    env = VecEnv(spec, data, n_envs=2, episode_length=4, blueprints=blueprints)
    trainers = lambda: [e.trainer for e in env.envs]
    obs, masks = env.reset([0, 1])
    assert obs.shape == (2, env.layout.size) and masks.shape == (2, len(env.space))
    first, second = trainers()
    assert first is not second and first.model is not second.model
    assert first.optimizers is not second.optimizers and first.governor is not second.governor
    assert not torch.equal(obs[0], obs[1])  # different seeds, different hosts and data order
    generator = torch.Generator().manual_seed(0)
    dones = []
    for _ in range(env.steps_per_episode):
        actions = sample(torch.where(masks, 0.0, -1e8), generator)
        obs, masks, rewards, done = env.step(actions)
        assert len(rewards) == 2 and all("total" in r for r in rewards)
        dones.append(done)
    assert dones == [False, False, True]
    for stats in env.episode_stats():
        assert 0.0 <= stats.final_val_accuracy <= 1.0
        assert sum(stats.actions.values()) == env.steps_per_episode
    # A reset builds fresh hosts.
    env.reset([2, 3])
    assert trainers()[0] is not first


def test_same_seed_same_episode(digits):
    spec, data, _ = digits
    env = MorphogeneticEnv(spec, data, episode_length=3)
    runs = [play(env, RandomController(ActionSpace(spec.slots, ["norm", "conv_light"]), seed=5), 7).to_dict() for _ in range(2)]
    assert runs[0] == runs[1]


def test_policy_and_random_controllers_drive_an_ordinary_trainer(digits, tmp_path):
    """Both fit the Controller protocol: the heuristic job's epoch loop runs them unchanged."""
    spec, data, blueprints = digits
    layout = FeatureLayout(spec.slots, tuple(blueprints))
    model = ActorCritic(layout.size, len(ActionSpace(spec.slots, blueprints)))
    for controller in (PolicyController(model, RunningNorm(layout.size), layout, deterministic=False), RandomController(ActionSpace(spec.slots, blueprints), seed=1)):
        trainer = build_trainer(spec, data, seed=0, fast_mode=True)
        epochs_seen, outcomes_seen = [], []

        def on_epoch(result, outcomes, _moves, epochs=epochs_seen, seen=outcomes_seen) -> None:
            epochs.append(result.record.epoch)
            seen.extend(outcomes)

        run_epochs(EpochLoop(trainer, 6, on_epoch), controller)
        assert trainer.epoch == 6 and epochs_seen == list(range(6))
        # Both only choose what the masks allow: every germination found its slot free.
        germinations = [done for action, done, _ in outcomes_seen if action.kind == ActionKind.GERMINATE]
        assert germinations and all(germinations)
        state = controller.state_dict()
        controller.load_state_dict(state)


def test_an_episode_does_not_depend_on_the_environments_stepped_beside_it(digits):
    """Each environment draws from its own random stream: a seed planted in episode 7 gets the
    same weights whether episode 7 runs alone or after another environment's germination
    (what lets several processes share the environments of one PPO round)."""
    spec, data, _ = digits
    blueprints = ["norm", "conv_light"]

    def planted_seed(seeds: list[int]) -> dict[str, torch.Tensor]:
        env = VecEnv(spec, data, n_envs=len(seeds), episode_length=3, blueprints=blueprints)
        env.reset(seeds)
        germinate = env.space.names().index("GERMINATE block2 conv_light")
        env.step(torch.full((len(seeds),), germinate))
        return env.envs[seeds.index(7)].trainer.slots["block2"].seed.state_dict()

    alone, beside = planted_seed([7]), planted_seed([8, 7])
    assert alone.keys() == beside.keys()
    assert all(torch.equal(alone[name], beside[name]) for name in alone)
