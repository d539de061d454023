"""policy.pt and the observation layout: a policy trained on other features is refused on load."""

from __future__ import annotations

import pytest
import torch

from esper.cli import main
from esper.nissa.files import TorchFileError
from esper.simic.actions import ActionSpace
from esper.simic.features import RUN_FEATURES, FeatureLayout, RunningNorm
from esper.simic.networks import ActorCritic, NetworkConfig
from esper.simic.policy import PolicyController, policy_payload

SLOTS, BLUEPRINTS = ("block2", "block3"), ("norm", "attention")
CAPACITY = RUN_FEATURES[RUN_FEATURES.index("train_loss_progress"):]  # added with the FLOP-priced reward


def saved_policy(path, older: bool = False) -> None:
    """A policy.pt as `esper train ppo` writes it; `older`: with the features of the versions
    before the capacity features (no capacity or blueprint-outcome features)."""
    layout, space = FeatureLayout(SLOTS, BLUEPRINTS), ActionSpace(SLOTS, BLUEPRINTS)
    names = layout.names()
    if older:
        names = [n for n in names if n not in CAPACITY and not n.endswith((".fossilized", ".culled"))]
    model = ActorCritic(len(names), len(space), NetworkConfig())
    payload = policy_payload(model, RunningNorm(len(names)), layout, space, task="digits", episode_length=5, reward={})
    torch.save({**payload, "feature_names": names}, path)


def test_a_policy_of_this_layout_loads(tmp_path):
    saved_policy(tmp_path / "policy.pt")
    assert PolicyController.load(tmp_path / "policy.pt").layout.size == FeatureLayout(SLOTS, BLUEPRINTS).size


def test_a_policy_trained_on_the_older_features_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    old = tmp_path / "old.pt"
    saved_policy(old, older=True)
    with pytest.raises(TorchFileError, match=r"does not match the observation features .* only here \['train_loss_progress'.*train it again"):
        PolicyController.load(old)
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["evaluate", "--policy", str(old), "--episodes", "1", "--episode-length", "3"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "train it again with this version" in out and "Traceback" not in out
