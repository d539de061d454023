"""Observation layout, the per-slot stage clock, and the running normaliser."""

import pytest
import torch

from esper.leyline import EpochSignals, FossilReport, SeedReport, SeedStage
from esper.simic.features import FeatureLayout, Observer, RunningNorm

LAYOUT = FeatureLayout(("block2", "block3"), ("norm", "attention"))


def signals(epoch: int, stage: SeedStage | None, seed_id: str = "s1", contribution: float | None = None) -> EpochSignals:
    report = None if stage is None else SeedReport(seed_id, "attention", "block3", stage, 1, 40, 0.5, contribution, 0.2, True)
    return EpochSignals(epoch, 10, 1.0 - 0.1 * epoch, 0.5, 1.0, 0.4 + 0.01 * epoch, 400, 40, {"block2": None, "block3": report})


def feature(obs: torch.Tensor, name: str) -> float:
    return obs[LAYOUT.names().index(name)].item()


def test_layout_size_matches_names_and_observations():
    obs = Observer(LAYOUT).observe(signals(0, None))
    assert obs.shape == (LAYOUT.size,) == (len(LAYOUT.names()),)
    assert len(set(LAYOUT.names())) == LAYOUT.size


def test_slot_features_encode_stage_blueprint_and_contribution():
    obs = Observer(LAYOUT).observe(signals(2, SeedStage.BLENDING, contribution=0.03))
    assert feature(obs, "block3.stage_BLENDING") == 1.0
    assert feature(obs, "block3.blueprint_attention") == 1.0 and feature(obs, "block3.blueprint_norm") == 0.0
    assert feature(obs, "block3.contribution") == pytest.approx(0.03)
    assert feature(obs, "block3.contribution_measured") == 1.0
    assert feature(obs, "block3.params_ratio") == pytest.approx(40 / 400)
    assert feature(obs, "block2.stage_DORMANT") == 1.0
    assert feature(obs, "params_added_ratio") == pytest.approx(40 / 400)


def test_slot_features_encode_the_stack_under_a_free_slot():
    free = signals(5, None)
    free.fossils = {"block2": [], "block3": [FossilReport("s1", "attention", "block3", 40, 0.03, 4),
                                            FossilReport("s2", "norm", "block3", 8, 0.01, 9)]}  # fmt: skip
    obs = Observer(LAYOUT).observe(free)
    assert feature(obs, "block3.stack_depth") == 2.0 and feature(obs, "block2.stack_depth") == 0.0
    assert feature(obs, "block3.fossil_params_ratio") == pytest.approx(48 / 400)
    assert feature(obs, "block3.stage_DORMANT") == 1.0  # the slot is free for the next seed
    assert feature(obs, "block3.blueprint_attention") == 0.0  # the one-hot is the live seed's


def test_epochs_in_stage_counts_and_restarts_on_a_new_stage_or_seed():
    observer = Observer(LAYOUT)
    seen = [
        feature(observer.observe(s), "block3.epochs_in_stage")
        for s in (
            signals(0, SeedStage.TRAINING),
            signals(1, SeedStage.TRAINING),
            signals(2, SeedStage.TRAINING),
            signals(3, SeedStage.BLENDING),
            signals(4, SeedStage.BLENDING, seed_id="s2"),
        )
    ]
    assert seen == [0.0, 1.0, 2.0, 0.0, 0.0]


def test_observer_state_round_trip_gives_the_same_next_observation():
    first = Observer(LAYOUT)
    for epoch in range(4):
        first.observe(signals(epoch, SeedStage.TRAINING))
    second = Observer(LAYOUT)
    second.load_state_dict(first.state_dict())
    nxt = signals(4, SeedStage.TRAINING)
    assert torch.equal(first.observe(nxt), second.observe(nxt))


def test_running_norm_matches_the_statistics_of_everything_seen():
    data = torch.randn(300, 3) * torch.tensor([1.0, 10.0, 0.01]) + torch.tensor([5.0, -2.0, 0.0])
    norm = RunningNorm(3, clip=100.0)
    for chunk in data.split(37):
        norm.update(chunk)
    assert torch.allclose(norm.mean, data.double().mean(0), atol=1e-6)
    assert torch.allclose(norm.var, data.double().var(0, unbiased=False), rtol=1e-4)
    normed = norm(data)
    assert torch.allclose(normed.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(normed.std(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_running_norm_clips_and_round_trips():
    norm = RunningNorm(2, clip=3.0)
    norm.update(torch.randn(50, 2))
    assert norm(torch.tensor([[1e6, -1e6]])).abs().max().item() == 3.0
    restored = RunningNorm(2)
    restored.load_state_dict(norm.state_dict())
    x = torch.randn(4, 2)
    assert torch.equal(norm(x), restored(x))
    with pytest.raises(ValueError, match="features"):
        RunningNorm(5).load_state_dict(norm.state_dict())
