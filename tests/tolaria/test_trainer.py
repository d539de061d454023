"""Tolaria: optimiser groups, counterfactual validation on a constructed case, the governor."""

from __future__ import annotations

import io
import math

import pytest
import torch
from seed_lifecycle import grow
from torch import Tensor, nn

import esper
from esper.kasmina.blueprints import BlueprintRegistry
from esper.leyline import Action, ActionKind, SeedStage, TelemetryEventType
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.tolaria import validate_with_counterfactuals


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ToyModel(nn.Module):
    """Logits are the (B, 2) input itself times one parameter; a slot is grafted on that."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Scale()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(x)


class Offset(nn.Module):
    """Adds [0, 1] along the feature axis: turns a tie into a vote for class 1."""

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x + torch.tensor([0.0, 1.0]).view(shape)


@pytest.fixture
def offset_blueprint():
    BlueprintRegistry.register("toy_offset", "mlp", param_estimate=0)(lambda dim: Offset())
    try:
        yield "toy_offset"
    finally:
        BlueprintRegistry.unregister("mlp", "toy_offset")


def test_counterfactual_equals_known_offset_effect(offset_blueprint: str) -> None:
    model = esper.graft(ToyModel(), ["scale"], torch.zeros(1, 2))
    slot = model.seed_slots["scale"]
    grow(slot, SeedStage.BLENDING, offset_blueprint)
    slot.state.alpha = 1.0
    inputs = torch.zeros(8, 2)  # host alone: a tie -> argmax 0
    targets = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])  # 6/8 are class 1
    result = validate_with_counterfactuals(model, [(inputs, targets)])
    assert result.accuracy == pytest.approx(0.75)  # the seed votes 1 everywhere
    assert result.contributions == {"scale": pytest.approx(0.75 - 0.25)}
    assert slot.state.metrics.counterfactual_contribution == pytest.approx(0.5)
    assert slot.alpha == 1.0  # force_alpha restored


def test_counterfactual_is_per_slot_and_skips_incubating_seeds() -> None:
    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0)
    slots = trainer.slots
    grow(slots["block2"], SeedStage.TRAINING, "norm", host_module=trainer.model.host)
    result = validate_with_counterfactuals(trainer.model, trainer.val_loader)
    assert result.contributions == {}


def _digits_trainer(events: list | None = None):
    spec = get_task("digits")
    return build_trainer(spec, spec.load_data(), seed=0, on_telemetry=None if events is None else events.append)


def test_seed_param_groups_follow_the_lifecycle() -> None:
    trainer = _digits_trainer()
    host_group_params = len(trainer.optimizers.host.param_groups[0]["params"])
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    assert trainer.optimizers.slot_order() == ["block2"]
    trainer.apply([Action(ActionKind.GERMINATE, "block3", "norm")])
    assert trainer.optimizers.slot_order() == ["block2", "block3"]
    trainer.apply([Action(ActionKind.CULL, "block2")])
    assert trainer.optimizers.slot_order() == ["block3"]
    # The host optimiser was never rebuilt.
    assert len(trainer.optimizers.host.param_groups[0]["params"]) == host_group_params


def _stack_two_fossils(trainer) -> None:
    """Germinate in block2, take the seed to probation through its gates, fossilize; twice."""
    for _ in range(2):
        trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
        grow(trainer.slots["block2"], SeedStage.PROBATIONARY)
        (outcome,) = trainer.apply([Action(ActionKind.FOSSILIZE, "block2")])
        assert outcome[1], outcome


def test_a_slot_grows_a_stack_whose_fossils_train_with_the_host() -> None:
    trainer = _digits_trainer()
    host_params = trainer.model.host_param_count()
    _stack_two_fossils(trainer)
    slot = trainer.slots["block2"]
    assert slot.state is None and slot.stack_depth == 2
    optimizers = trainer.optimizers
    assert optimizers.seed_order() == []
    assert optimizers.fossil_order() == [("block2", "block2-seed1"), ("block2", "block2-seed2")]
    in_host = {id(p) for group in optimizers.host.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.model.fossil_parameters()} <= in_host
    # Reported as added, optimised as host: the host's own count does not change.
    assert trainer.model.host_param_count() == host_params
    assert trainer.model.seed_param_count() == slot.fossil_param_count() == sum(r.params for r in slot.fossil_reports)
    before = [p.detach().clone() for p in slot.fossils.parameters()]
    trainer.run_epoch()
    assert all(not torch.equal(a, b) for a, b in zip(before, slot.fossils.parameters(), strict=True))
    trainer.end_epoch()
    signals = trainer.signals(trainer.run_epoch(), total_epochs=10)
    assert signals.slots["block2"] is None  # free for the next seed
    assert [r.seed_id for r in signals.fossils["block2"]] == ["block2-seed1", "block2-seed2"]


def test_a_checkpoint_with_stacks_resumes_exactly() -> None:
    trainer = _digits_trainer()
    trainer.run_epoch()
    trainer.end_epoch()
    _stack_two_fossils(trainer)
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "norm")])  # a live seed on top
    trainer.end_epoch()
    trainer.run_epoch()
    trainer.end_epoch()
    saved = io.BytesIO()  # through bytes, as a checkpoint on disk: no tensor shared with `trainer`
    torch.save(trainer.state_dict(), saved)
    resumed = _digits_trainer()
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert resumed.optimizers.state_dict()["seed_groups"] == trainer.optimizers.state_dict()["seed_groups"]
    for _ in range(2):
        expected, got = trainer.run_epoch(), resumed.run_epoch()
        assert (got.train_loss, got.val_loss, got.seed_params) == (expected.train_loss, expected.val_loss, expected.seed_params)
        trainer.end_epoch()
        resumed.end_epoch()


def test_training_moves_seed_and_host_and_measures_gradient_ratio() -> None:
    trainer = _digits_trainer()
    trainer.run_epoch()
    trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()  # GERMINATED -> TRAINING
    slot = trainer.slots["block2"]
    before = [p.detach().clone() for p in slot.seed.parameters()]
    trainer.run_epoch()
    after = list(slot.seed.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    ratio = slot.state.metrics.seed_gradient_norm_ratio
    assert ratio > 0 and math.isfinite(ratio)


def test_governor_rolls_back_on_nan_culls_the_seed_and_the_run_continues() -> None:
    events: list = []
    trainer = _digits_trainer(events)
    for _ in range(2):
        trainer.run_epoch()
        trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()
    snapshot_host = [p.detach().clone() for p in trainer.model.host_parameters()]
    slot = trainer.slots["block2"]
    assert slot.stage == SeedStage.TRAINING
    with torch.no_grad():
        next(slot.seed.parameters()).fill_(float("nan"))  # the seed goes bad
    record = trainer.run_epoch()
    assert record.rollback is not None and "non-finite" in record.rollback
    assert slot.stage == SeedStage.CULLED
    assert trainer.optimizers.slot_order() == []
    for restored, saved in zip(trainer.model.host_parameters(), snapshot_host):
        assert torch.equal(restored, saved)
    assert math.isfinite(record.val_loss)
    rollbacks = [e for e in events if e.event_type == TelemetryEventType.GOVERNOR_ROLLBACK]
    assert len(rollbacks) == 1 and rollbacks[0].data["slots"] == ["block2"]
    trainer.end_epoch()
    follow_up = trainer.run_epoch()
    assert follow_up.rollback is None and math.isfinite(follow_up.train_loss)


def test_governor_detects_train_and_validation_explosions_after_two_good_epochs() -> None:
    governor = _digits_trainer().governor
    assert governor.diagnose(50.0, 50.0) is None  # no history yet: only non-finite losses count
    for _ in range(3):
        governor.accept(train_loss=0.1, val_loss=0.2, train_accuracy=0.9)
    assert governor.diagnose(0.11, 0.25) is None
    assert "train loss" in governor.diagnose(5.0, 0.2)
    assert "val loss" in governor.diagnose(0.1, 5.0)  # an eval-mode-only explosion is caught
    assert "non-finite" in governor.diagnose(0.1, float("inf"))


def test_governor_does_not_call_noise_on_a_memorised_training_set_an_explosion() -> None:
    # A small host on mnist5k memorises its training set: train loss ~0.004, and an epoch at 0.02
    # (5x, but 0.016 nats) is noise. It stopped a real compare run with "3 consecutive rollbacks".
    governor = _digits_trainer().governor
    for _ in range(3):
        governor.accept(train_loss=0.004, val_loss=0.1, train_accuracy=1.0)
    assert governor.diagnose(0.02, 0.1) is None
    assert "train loss" in governor.diagnose(0.3, 0.1)  # a real jump still is one
