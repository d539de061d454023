"""Observation layout, the per-slot stage clock, and the running normaliser."""

import math

import pytest
import torch
from conftest import epoch_signals, seed_report

from esper.leyline import (
    EpochSignals,
    FlopsReport,
    FossilReport,
    SeedStage,
    StageTransition,
)
from esper.simic.features import FeatureLayout, Observer, RunningNorm

LAYOUT = FeatureLayout(("block2", "block3"), ("norm", "attention"))


def signals(epoch: int, stage: SeedStage | None, seed_id: str = "s1", contribution: float | None = None) -> EpochSignals:
    report = None if stage is None else seed_report(stage, seed_id=seed_id, blueprint_id="attention", slot_id="block3",
                                                    epochs_total=1, params=40, alpha=0.5, contribution=contribution)  # fmt: skip
    return epoch_signals(epoch, train_loss=1.0 - 0.1 * epoch, val_accuracy=0.4 + 0.01 * epoch, host_params=400,
                         seed_params=40, slots={"block2": None, "block3": report})  # fmt: skip


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


def with_flops(s: EpochSignals, training: float, cumulative: float, inference: float) -> EpochSignals:
    s.flops = FlopsReport(training=training, cumulative_training=cumulative, inference_per_sample=inference)
    return s


def test_capacity_features_show_loss_progress_flops_spent_and_added():
    observer = Observer(LAYOUT)
    first = observer.observe(with_flops(signals(0, None), 100.0, 100.0, 4.0))
    assert feature(first, "training_flops_spent") == pytest.approx(100 / (100 * 10))  # of the host alone's episode
    assert feature(first, "training_flops_added") == feature(first, "inference_flops_added") == 0.0
    assert feature(first, "train_loss_progress") == 0.0  # no history yet
    for epoch in range(1, 4):
        obs = observer.observe(with_flops(signals(epoch, SeedStage.BLENDING), 150.0, 100.0 + 150.0 * epoch, 5.0))
    assert feature(obs, "training_flops_spent") == pytest.approx(550 / 1000)
    assert feature(obs, "training_flops_added") == pytest.approx(0.5)
    assert feature(obs, "inference_flops_added") == pytest.approx(0.25)
    # Train loss 1.0, 0.9, 0.8, 0.7: the tracker's geometric mean drop per epoch over its window.
    assert feature(obs, "train_loss_progress") == pytest.approx(observer.tracker.loss_progress)
    assert feature(obs, "train_loss_progress") > 0


def test_budget_features_are_the_fraction_left_and_one_without_a_limit():
    unlimited = Observer(LAYOUT).observe(signals(0, None))
    assert feature(unlimited, "budget_params_left") == feature(unlimited, "budget_inference_flops_left") == 1.0
    limited = signals(0, None)
    limited.budget_left = {"max_params_added": 0.25}
    obs = Observer(LAYOUT).observe(limited)
    assert feature(obs, "budget_params_left") == 0.25 and feature(obs, "budget_inference_flops_left") == 1.0


def test_blueprint_outcomes_count_the_episodes_fossilized_and_culled_seeds():
    def moved(epoch, seed_id, blueprint, to_stage):
        s = signals(epoch, None)
        s.transitions = [StageTransition("block3", seed_id, blueprint, SeedStage.PROBATIONARY, to_stage, "", epoch)]
        return s

    observer = Observer(LAYOUT)
    observer.observe(moved(0, "s1", "attention", SeedStage.FOSSILIZED))
    observer.observe(moved(1, "s2", "attention", SeedStage.CULLED))
    obs = observer.observe(moved(2, "s3", "attention", SeedStage.FOSSILIZED))
    assert feature(obs, "attention.fossilized") == 2.0 and feature(obs, "attention.culled") == 1.0
    assert feature(obs, "norm.fossilized") == feature(obs, "norm.culled") == 0.0
    restored = Observer(LAYOUT)
    restored.load_state_dict(observer.state_dict())
    assert feature(restored.observe(signals(3, None)), "attention.fossilized") == 2.0
    observer.reset()  # a new episode counts afresh
    assert feature(observer.observe(signals(0, None)), "attention.fossilized") == 0.0


def test_every_feature_is_finite_after_a_diverged_epoch():
    observer = Observer(LAYOUT)
    observer.observe(with_flops(signals(0, None), 100.0, 100.0, 4.0))
    bad = with_flops(signals(1, SeedStage.TRAINING), math.inf, math.inf, math.nan)
    bad.train_loss, bad.val_loss, bad.rolled_back = math.nan, math.inf, True
    assert torch.isfinite(observer.observe(bad)).all()




def test_the_policy_sees_each_slots_pressure_and_the_price_of_each_operator_there():
    from esper.runtime import get_task
    from esper.runtime.session import build_trainer

    blueprints = ("residual_block", "widen", "widen_half")
    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0, blueprints=blueprints)
    signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
    layout = FeatureLayout(("block2", "block3"), blueprints)
    obs = Observer(layout).observe(signals)
    assert obs.shape == (layout.size,) == (len(layout.names()),)

    def seen(name: str) -> float:
        return obs[layout.names().index(name)].item()

    host = signals.flops.inference_per_sample
    for slot in ("block2", "block3"):
        assert seen(f"{slot}.gradient_pressure") == pytest.approx(signals.pressure[slot]) and seen(f"{slot}.gradient_pressure") > 0
        for blueprint in blueprints:
            expected = signals.costs[slot][blueprint] / host
            assert seen(f"{slot}.cost_{blueprint}") == pytest.approx(expected, rel=1e-5) and expected > 0
        # A doubling costs more than a widening by half of the same layer.
        assert seen(f"{slot}.cost_widen") > seen(f"{slot}.cost_widen_half")
