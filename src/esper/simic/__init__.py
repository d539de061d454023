"""Learning the controller: observations, actions, rewards, PPO, lockstep environments, policies."""

from esper.simic.actions import MASKED_LOGIT, ActionSpace, action_name, apply_mask
from esper.simic.features import FeatureLayout, Observer, RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.policy import PolicyController, RandomController, policy_payload
from esper.simic.ppo import PPOConfig, Rollout, collect_rollout, compute_gae, ppo_loss, ppo_update
from esper.simic.rewards import COMPONENTS, RewardConfig, RewardTracker
from esper.simic.vec_env import EVAL_SEED_OFFSET, EpisodeStats, MorphogeneticEnv, VecEnv

__all__ = [
    "COMPONENTS",
    "EVAL_SEED_OFFSET",
    "MASKED_LOGIT",
    "ActionSpace",
    "ActorCritic",
    "EpisodeStats",
    "FeatureLayout",
    "MorphogeneticEnv",
    "NetworkConfig",
    "Observer",
    "PPOConfig",
    "PolicyController",
    "RandomController",
    "RewardConfig",
    "RewardTracker",
    "Rollout",
    "RunningNorm",
    "VecEnv",
    "action_name",
    "apply_mask",
    "collect_rollout",
    "compute_gae",
    "policy_payload",
    "ppo_loss",
    "ppo_update",
]
