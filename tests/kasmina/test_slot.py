"""SeedSlot mechanics and lifecycle, SeedState / SeedMetrics records and QualityGates."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
from seed_lifecycle import grow
from torch import nn

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import CNNHost
from esper.kasmina.slot import QualityGates, SeedMetrics, SeedSlot, SeedState
from esper.kasmina.state import STAGE_HISTORY_LEN
from esper.leyline import (
    LIFECYCLE_EVENTS,
    GateLevel,
    SeedStage,
    TaskConfig,
    TelemetryEvent,
    TelemetryEventType,
)

S = SeedStage


# ---------------------------------------------------------------- helpers
def _randomize(module: nn.Module, seed: int = 1, std: float = 0.3) -> nn.Module:
    """Make zero-initialised residual branches non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


class TinyHost(nn.Module):
    """conv -> [slot] -> relu -> conv -> mean: a host with one injection point of 8 channels."""

    topology = "cnn"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 4, 3, padding=1)
        self.slot: SeedSlot | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_a(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_a(x)
        if self.slot is not None:
            h = self.slot(h)
        return self.conv_b(torch.relu(h)).mean(dim=(2, 3))

    def host_params(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("slot.")]


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 4, generator=g)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean()


def _training_slot(host: TinyHost, blueprint: str = "conv_light") -> SeedSlot:
    slot = SeedSlot("mid", channels=8)
    host.slot = slot
    grow(slot, S.TRAINING, blueprint, seed_id="seed-1", host_module=host)
    _randomize(slot.seed)
    return slot


def _features(shape=(2, 8, 5, 5), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _fresh_slot(**kwargs) -> SeedSlot:
    return SeedSlot("s1", channels=8, **kwargs)


def _blended_slot(stage: SeedStage, alpha: float, blueprint: str = "conv_light") -> SeedSlot:
    """A slot whose randomised seed reached `stage` through the lifecycle, then run at `alpha`."""
    slot = _fresh_slot()
    grow(slot, stage, blueprint)
    _randomize(slot.seed)
    slot.state.alpha = alpha
    return slot


# ---------------------------------------------------------------- the DESIGN example
def test_design_example_incubator_is_identity() -> None:
    slot = SeedSlot("test", channels=32, device="cpu")
    slot.germinate("norm", "seed-1", host_module=CNNHost())
    slot.state.stage = SeedStage.TRAINING
    slot.state.alpha = 0.0
    _randomize(slot.seed)  # even a non-identity seed leaves the value untouched
    x = torch.randn(1, 32, 8, 8)
    assert torch.equal(slot(x), x)
    with torch.no_grad():
        assert torch.equal(slot(x), x)


def test_assigning_a_stage_is_a_recorded_lifecycle_move() -> None:
    slot = _fresh_slot()
    slot.germinate("conv_light", "seed-1")
    slot.drain_transitions()
    slot.state.stage = S.TRAINING
    assert slot.state.previous_stage == S.GERMINATED
    assert list(slot.state.stage_history)[-1] == (int(S.TRAINING), 0)
    (move,) = slot.drain_transitions()
    assert (move.seed_id, move.from_stage, move.to_stage) == ("seed-1", S.GERMINATED, S.TRAINING)
    slot.state.stage = S.CULLED  # with the cull's side effect: the seed is gone
    assert slot.seed is None and slot.stage == S.CULLED


@pytest.mark.parametrize("target", [S.BLENDING, S.FOSSILIZED, S.DORMANT, S.UNKNOWN])
def test_assigning_an_illegal_stage_raises_and_changes_nothing(target: SeedStage) -> None:
    slot = _fresh_slot()
    slot.germinate("conv_light", "seed-1")
    history = list(slot.state.stage_history)
    with pytest.raises(ValueError, match=f"GERMINATED -> {target.name}"):
        slot.state.stage = target
    assert slot.state.stage == S.GERMINATED and list(slot.state.stage_history) == history
    assert slot.seed is not None


def test_empty_and_germinated_slots_pass_host_through() -> None:
    slot = _fresh_slot()
    x = _features()
    assert slot(x) is x or torch.equal(slot(x), x)
    slot.germinate("conv_light")
    _randomize(slot.seed)
    assert slot.state.stage == S.GERMINATED
    assert torch.equal(slot(x), x)


# ---------------------------------------------------------------- incubator gradients
def _host_grads(host: TinyHost) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in host.host_params()}


def test_incubator_leaves_host_gradients_exactly_unchanged() -> None:
    x, y = _data()
    host = TinyHost()
    # Reference: no slot at all; keep the gradient arriving at the features too.
    h = host.features(x)
    h.retain_grad()
    (host.conv_b(torch.relu(h)).mean(dim=(2, 3)) - y).pow(2).mean().backward()
    reference = _host_grads(host)
    upstream = h.grad.clone()
    reference_out = host(x).detach()
    host.zero_grad(set_to_none=True)

    slot = _training_slot(host)
    assert slot.isolate_gradients is True
    out = host(x)
    assert torch.equal(out, reference_out)
    (out - y).pow(2).mean().backward()
    got = _host_grads(host)
    assert got.keys() == reference.keys()
    for name in reference:
        assert torch.equal(got[name], reference[name]), name

    # The seed gets the task gradient (straight-through): compare to a reference VJP.
    seed_params = list(slot.seed.parameters())
    expected = torch.autograd.grad(slot.seed(h.detach()), seed_params, grad_outputs=upstream)
    for p, e in zip(seed_params, expected):
        assert p.grad is not None
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


def test_incubator_fresh_seed_still_receives_gradient() -> None:
    x, y = _data()
    host = TinyHost()
    slot = SeedSlot("mid", channels=8)
    host.slot = slot
    grow(slot, S.TRAINING, "conv_light", host_module=host)  # zero-initialised last layer
    _loss(host, x, y).backward()
    grads = [p.grad for p in slot.seed.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_without_isolation_host_gradients_change() -> None:
    x, y = _data()
    host = TinyHost()
    _loss(host, x, y).backward()
    reference = _host_grads(host)
    host.zero_grad(set_to_none=True)

    slot = _training_slot(host)
    slot.isolate_gradients = False  # set directly: the next forward must honour it
    out = host(x)
    host.slot = None
    assert torch.equal(out, host(x))  # value is still the host's
    host.slot = slot
    (out - y).pow(2).mean().backward()
    got = _host_grads(host)
    assert not torch.equal(got["conv_a.weight"], reference["conv_a.weight"])
    assert torch.equal(got["conv_b.weight"], reference["conv_b.weight"])  # downstream unaffected


# ---------------------------------------------------------------- blending and force_alpha
@pytest.mark.parametrize("stage", [S.BLENDING, S.SHADOWING, S.PROBATIONARY])
@pytest.mark.parametrize("alpha", [0.3, 0.8, 1.0])
def test_blended_output_is_lerp(stage: SeedStage, alpha: float) -> None:
    slot = _blended_slot(stage, alpha)
    x = _features()
    with torch.no_grad():
        seed_out = slot.seed(x)
        expected = (1 - alpha) * x + alpha * seed_out
        out = slot(x)
    assert not torch.allclose(seed_out, x)  # the seed really does something
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert slot.alpha == alpha


def test_blending_gradients_reach_the_host_through_its_own_term() -> None:
    alpha = 0.25
    slot = _blended_slot(S.BLENDING, alpha)
    slot.isolate_gradients = True  # set directly: the next forward honours it
    x = _features().requires_grad_(True)
    upstream = _features(seed=4)
    slot(x).backward(upstream)
    # Isolated seed input: the host only gets its (1 - alpha) share.
    torch.testing.assert_close(x.grad, (1 - alpha) * upstream)


def test_force_alpha_zero_gives_host_and_restores() -> None:
    slot = _blended_slot(S.BLENDING, 0.6)
    x = _features()
    blended = slot(x).detach()
    assert not torch.equal(blended, x)
    with slot.force_alpha(0.0):
        assert slot.alpha == 0.0
        assert torch.equal(slot(x), x)
    assert slot.alpha == 0.6
    assert torch.equal(slot(x).detach(), blended)


def test_force_alpha_restores_on_exception() -> None:
    slot = _blended_slot(S.PROBATIONARY, 1.0)
    x = _features()
    with pytest.raises(KeyError), slot.force_alpha(0.0):
        assert torch.equal(slot(x), x)
        raise KeyError("boom")
    assert slot.alpha == 1.0
    assert not torch.equal(slot(x), x)


def test_force_alpha_nested() -> None:
    slot = _blended_slot(S.BLENDING, 0.5, "norm")
    with slot.force_alpha(0.0):
        with slot.force_alpha(1.0):
            assert slot.alpha == 1.0
        assert slot.alpha == 0.0
    assert slot.alpha == 0.5


def test_force_alpha_zero_in_the_incubator_gives_host() -> None:
    slot = _blended_slot(S.TRAINING, 0.0)
    x = _features()
    with slot.force_alpha(0.0):
        assert torch.equal(slot(x), x)


def test_set_alpha_clamps() -> None:
    slot = _fresh_slot()
    slot.germinate("norm")
    slot.set_alpha(1.5)
    assert slot.alpha == 1.0 and slot.state.metrics.current_alpha == 1.0
    slot.set_alpha(-0.2)
    assert slot.alpha == 0.0


# ---------------------------------------------------------------- SeedState / SeedMetrics
def test_seed_state_positional_args_raise() -> None:
    with pytest.raises(TypeError):
        SeedState("a", "b", "c")  # type: ignore[misc]
    with pytest.raises(TypeError):
        SeedState("a", "b")  # type: ignore[misc]


def test_seed_state_transition_follows_the_lifecycle() -> None:
    state = SeedState(seed_id="a", blueprint_id="norm")
    assert state.can_transition_to(S.GERMINATED)
    assert not state.can_transition_to(S.TRAINING)
    assert state.transition(S.TRAINING) is False
    assert state.stage == S.DORMANT
    assert state.transition(S.GERMINATED) is True
    assert state.stage == S.GERMINATED and state.previous_stage == S.DORMANT
    assert state.transition(S.FOSSILIZED) is False
    assert state.stage == S.GERMINATED


def test_seed_state_history_is_bounded() -> None:
    state = SeedState(seed_id="a", blueprint_id="norm")
    cycle = [S.GERMINATED, S.CULLED, S.EMBARGOED, S.RESETTING, S.DORMANT]
    for _ in range(100):
        for stage in cycle:
            assert state.transition(stage)
    assert len(state.stage_history) == STAGE_HISTORY_LEN  # the latest moves only
    assert state.stage_history[-1] == (int(S.DORMANT), 0)


def test_seed_metrics_is_a_slots_dataclass_with_design_fields() -> None:
    m = SeedMetrics()
    for name in (
        "epochs_total",
        "epochs_in_current_stage",
        "initial_val_accuracy",
        "current_val_accuracy",
        "best_val_accuracy",
        "accuracy_at_stage_start",
        "accuracy_at_blending_start",
        "isolation_violations",
        "gradient_norm_avg",
        "current_alpha",
        "alpha_ramp_step",
    ):
        assert hasattr(m, name), name
    assert m.counterfactual_contribution is None
    assert m.seed_gradient_norm_ratio == 0.0
    with pytest.raises(AttributeError):
        m.not_a_field = 1


def test_seed_metrics_derived_improvements_are_assignable() -> None:
    m = SeedMetrics()
    m.current_val_accuracy = 0.7
    m.accuracy_at_stage_start = 0.5
    m.initial_val_accuracy = 0.4
    assert m.improvement_since_stage_start == pytest.approx(0.2)
    assert m.total_improvement == pytest.approx(0.3)

    m.improvement_since_stage_start = 0.05
    assert m.improvement_since_stage_start == pytest.approx(0.05)
    m.total_improvement = -0.1
    assert m.total_improvement == pytest.approx(-0.1)
    assert m.current_val_accuracy == 0.7  # the measured value is not rewritten
    assert m.improvement_since_stage_start == pytest.approx(0.05)  # independent quantities

    # Still derived afterwards: a new accuracy moves both by the same amount.
    m.current_val_accuracy = 0.8
    assert m.improvement_since_stage_start == pytest.approx(0.15)
    assert m.total_improvement == pytest.approx(0.0)


def test_assigned_improvement_is_what_g2_sees() -> None:
    gates = QualityGates(min_training_improvement=0.01)
    state = _g2_state()
    state.metrics.improvement_since_stage_start = 0.02
    assert gates.check_gate(state, S.BLENDING).passed
    state.metrics.improvement_since_stage_start = 0.0
    assert not gates.check_gate(state, S.BLENDING).passed


# ---------------------------------------------------------------- QualityGates
def _state(stage: SeedStage = S.GERMINATED, **kwargs) -> SeedState:
    return SeedState(seed_id="seed-1", blueprint_id="norm", slot_id="s1", stage=stage, **kwargs)


def _g2_state(ratio: float = 0.2) -> SeedState:
    state = _state(S.TRAINING)
    m = state.metrics
    m.epochs_in_current_stage = 5
    m.seed_gradient_norm_ratio = ratio
    m.current_val_accuracy = m.accuracy_at_stage_start = 0.5
    return state


def _check(result, gate: GateLevel, passed: bool) -> None:
    assert result.gate == gate
    assert result.passed is passed
    assert bool(result.checks_failed) is (not passed)
    assert isinstance(result.checks_passed, list) and isinstance(result.checks_failed, list)
    assert isinstance(result.message, str) and result.message
    if passed:
        assert result.score == pytest.approx(1.0)
    else:
        assert 0.0 <= result.score < 1.0


def test_g0() -> None:
    gates = QualityGates()
    _check(
        gates.check_gate(_state(S.DORMANT, probe_shapes=((1, 8), (1, 8))), S.GERMINATED), GateLevel.G0, True
    )
    bad_id = SeedState(seed_id="", blueprint_id="norm", probe_shapes=((1, 8), (1, 8)))
    _check(gates.check_gate(bad_id, S.GERMINATED), GateLevel.G0, False)
    bad_bp = SeedState(seed_id="x", blueprint_id="", probe_shapes=((1, 8), (1, 8)))
    _check(gates.check_gate(bad_bp, S.GERMINATED), GateLevel.G0, False)
    unprobed = SeedState(seed_id="x", blueprint_id="norm")
    _check(gates.check_gate(unprobed, S.GERMINATED), GateLevel.G0, False)
    changed = SeedState(seed_id="x", blueprint_id="norm", probe_shapes=((1, 8), (1, 4)))
    result = gates.check_gate(changed, S.GERMINATED)
    _check(result, GateLevel.G0, False)
    assert result.checks_failed == ["shape_changed (1, 8) -> (1, 4) (a seed must preserve its input shape)"]


def test_g1() -> None:
    gates = QualityGates()
    _check(gates.check_gate(_state(S.GERMINATED), S.TRAINING), GateLevel.G1, True)
    _check(gates.check_gate(_state(S.DORMANT), S.TRAINING), GateLevel.G1, False)


def test_g2_passes_when_everything_is_fine() -> None:
    result = QualityGates().check_gate(_g2_state(), S.BLENDING)
    _check(result, GateLevel.G2, True)


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.049])
def test_g2_fails_when_the_seed_is_not_learning(ratio: float) -> None:
    result = QualityGates().check_gate(_g2_state(ratio), S.BLENDING)
    _check(result, GateLevel.G2, False)
    assert len(result.checks_failed) == 1
    assert result.checks_failed[0].startswith("seed_gradient_low")


@pytest.mark.parametrize("ratio", [0.05, 0.051, 3.0])
def test_g2_passes_at_or_above_the_default_ratio(ratio: float) -> None:
    result = QualityGates().check_gate(_g2_state(ratio), S.BLENDING)
    _check(result, GateLevel.G2, True)
    assert not any(c.startswith("seed_gradient_low") for c in result.checks_passed)


def test_g2_ratio_threshold_is_configurable() -> None:
    state = _g2_state(0.2)
    assert QualityGates().check_gate(state, S.BLENDING).passed
    result = QualityGates(min_seed_gradient_ratio=0.5).check_gate(state, S.BLENDING)
    assert not result.passed
    assert result.checks_failed[0].startswith("seed_gradient_low")


def test_g2_other_failures() -> None:
    gates = QualityGates(
        min_training_improvement=0.0, max_isolation_violations=0, min_training_epochs=3
    )
    state = _g2_state()
    state.metrics.improvement_since_stage_start = -0.05
    _check(gates.check_gate(state, S.BLENDING), GateLevel.G2, False)

    state = _g2_state()
    state.metrics.isolation_violations = 1
    _check(gates.check_gate(state, S.BLENDING), GateLevel.G2, False)

    state = _g2_state()
    state.metrics.epochs_in_current_stage = 2
    _check(gates.check_gate(state, S.BLENDING), GateLevel.G2, False)
    state.metrics.epochs_in_current_stage = 3
    _check(gates.check_gate(state, S.BLENDING), GateLevel.G2, True)


def test_g3() -> None:
    gates = QualityGates()
    for alpha, ok in [(0.5, False), (0.94, False), (0.95, True), (1.0, True)]:
        _check(gates.check_gate(_state(S.BLENDING, alpha=alpha), S.SHADOWING), GateLevel.G3, ok)


def test_g4() -> None:
    gates = QualityGates(min_shadowing_epochs=2)
    state = _state(S.SHADOWING, alpha=1.0)
    state.metrics.epochs_in_current_stage = 2
    state.metrics.counterfactual_contribution = 0.03
    _check(gates.check_gate(state, S.PROBATIONARY), GateLevel.G4, True)
    state.metrics.counterfactual_contribution = None
    _check(gates.check_gate(state, S.PROBATIONARY), GateLevel.G4, False)
    state.metrics.counterfactual_contribution = 0.03
    state.metrics.epochs_in_current_stage = 1
    _check(gates.check_gate(state, S.PROBATIONARY), GateLevel.G4, False)


def test_g5() -> None:
    gates = QualityGates(min_contribution=0.01)
    state = _state(S.PROBATIONARY, alpha=1.0)
    state.metrics.counterfactual_contribution = 0.05
    _check(gates.check_gate(state, S.FOSSILIZED), GateLevel.G5, True)
    for contribution in (None, -0.2, 0.0, 0.005):
        state.metrics.counterfactual_contribution = contribution
        _check(gates.check_gate(state, S.FOSSILIZED), GateLevel.G5, False)
    state.metrics.counterfactual_contribution = 0.05
    state.is_healthy = False
    _check(gates.check_gate(state, S.FOSSILIZED), GateLevel.G5, False)


def test_gates_without_a_level_pass() -> None:
    result = QualityGates().check_gate(_state(S.TRAINING), S.CULLED)
    assert result.passed and result.gate is None


# ---------------------------------------------------------------- gradient ratio measurement
def test_record_gradient_norms_matches_the_real_norms() -> None:
    x, y = _data()
    host = TinyHost()
    slot = _training_slot(host)
    assert slot.state.metrics.seed_gradient_norm_ratio == 0.0
    _loss(host, x, y).backward()
    host_norm, seed_norm = slot.record_gradient_norms()

    host_ref = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for _, p in host.host_params()])
    )
    seed_ref = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in slot.seed.parameters()])
    )
    assert host_norm == pytest.approx(float(host_ref), rel=1e-5)
    assert seed_norm == pytest.approx(float(seed_ref), rel=1e-5)
    ratio = slot.state.metrics.seed_gradient_norm_ratio
    assert ratio == pytest.approx(float(seed_ref / host_ref), rel=1e-5)
    assert ratio > 0

    # A second, different measurement moves the ratio toward the new value.
    host.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.mul_(4.0)
    _loss(host, *_data(1)).backward()
    h2, s2 = slot.record_gradient_norms()
    new_ratio = s2 / h2
    assert abs(new_ratio - ratio) > 1e-3
    updated = slot.state.metrics.seed_gradient_norm_ratio
    assert min(ratio, new_ratio) < updated <= max(ratio, new_ratio)


def test_record_gradient_norms_on_an_empty_slot() -> None:
    assert _fresh_slot().record_gradient_norms() is None


# ---------------------------------------------------------------- lifecycle
def test_full_lifecycle_to_fossilized() -> None:
    events: list[TelemetryEvent] = []
    slot = SeedSlot(
        "s1", channels=8, on_telemetry=events.append, task_config=TaskConfig(blending_epochs=5)
    )
    state = slot.germinate("conv_light", "seed-1")
    assert state.stage == S.GERMINATED and slot.state is state
    state.metrics.seed_gradient_norm_ratio = 0.5
    stages, alphas = [], []
    for _ in range(40):
        if state.stage == S.SHADOWING:
            state.metrics.counterfactual_contribution = 0.04
        if state.stage == S.PROBATIONARY:
            break
        slot.step_epoch()
        stages.append(state.stage)
        alphas.append(state.alpha)
    assert state.stage == S.PROBATIONARY
    # Visited every stage of the chain, in order.
    seen = list(dict.fromkeys(stages))
    assert seen == [S.TRAINING, S.BLENDING, S.SHADOWING, S.PROBATIONARY]
    # Alpha is 0 while training, then ramps monotonically toward 1.
    assert all(a == 0.0 for s, a in zip(stages, alphas) if s == S.TRAINING)
    blend = [a for s, a in zip(stages, alphas) if s in (S.BLENDING, S.SHADOWING, S.PROBATIONARY)]
    assert all(b >= a for a, b in itertools.pairwise(blend))
    assert blend[0] < 0.5 and blend[-1] >= 0.95
    seed = slot.seed
    result = slot.advance_stage()
    assert result.passed and result.gate == GateLevel.G5
    assert state.stage == S.FOSSILIZED
    # The seed joined the slot's stack and the slot is free for the next one.
    assert slot.state is None and slot.seed is None and slot.stage == S.DORMANT
    assert list(slot.fossils) == [seed]
    (fossil,) = slot.fossil_reports
    assert (fossil.seed_id, fossil.blueprint_id, fossil.counterfactual_contribution) == ("seed-1", "conv_light", 0.04)
    assert fossil.params == slot.fossil_param_count() == sum(p.numel() for p in seed.parameters())
    types = [e.event_type for e in events]
    assert types[0] == TelemetryEventType.SEED_GERMINATED
    assert types[-1] == TelemetryEventType.SEED_FOSSILIZED
    assert types.count(TelemetryEventType.SEED_STAGE_CHANGED) == 4


def test_alpha_is_full_once_blending_is_done() -> None:
    slot = SeedSlot("s1", channels=8, task_config=TaskConfig(blending_epochs=5))
    slot.germinate("norm")
    grow(slot, S.SHADOWING)
    assert slot.alpha == 1.0
    state = grow(slot, S.PROBATIONARY)
    assert slot.advance_stage().passed
    assert state.stage == S.FOSSILIZED
    assert state.alpha == 1.0  # kept at full strength


def test_fossilized_seed_cannot_be_culled() -> None:
    slot = _fresh_slot()
    grow(slot, S.FOSSILIZED, "conv_light")
    _randomize(slot.fossils[0])
    x = _features()
    with torch.no_grad():
        kept = slot(x)
    assert slot.cull("try") is False  # nothing live to cull: the fossil is part of the host
    assert slot.stack_depth == 1
    with torch.no_grad():
        assert torch.equal(slot(x), kept)


# ---------------------------------------------------------------- stacks
def test_a_fossil_runs_at_full_strength_before_the_next_seed() -> None:
    slot = _fresh_slot()
    grow(slot, S.FOSSILIZED, "conv_light", seed_id="first")
    fossil = _randomize(slot.fossils[0])
    x = _features()
    with torch.no_grad():
        assert torch.equal(slot(x), fossil(x))
    grow(slot, S.BLENDING, "conv_light", seed_id="second")
    live = _randomize(slot.seed, seed=2)
    slot.state.alpha = 0.4
    with torch.no_grad():
        below = fossil(x)
        torch.testing.assert_close(slot(x), 0.6 * below + 0.4 * live(below), rtol=1e-5, atol=1e-6)
        with slot.force_alpha(0.0):  # the counterfactual removes the live seed only
            assert torch.equal(slot(x), below)


def test_stack_through_the_real_lifecycle_and_a_culled_second_seed_leaves_the_fossil() -> None:
    events: list[TelemetryEvent] = []
    slot = _fresh_slot(on_telemetry=events.append)
    grow(slot, S.FOSSILIZED, "conv_light", seed_id="kept")
    grow(slot, S.TRAINING, "norm", seed_id="tried")  # germinates again in the same slot
    assert slot.stack_depth == 1 and slot.state.seed_id == "tried"
    assert slot.cull("no good") is True
    while slot.state is not None:
        slot.step_epoch()
    assert [r.seed_id for r in slot.fossil_reports] == ["kept"] and len(slot.fossils) == 1
    grow(slot, S.FOSSILIZED, "norm", seed_id="third")
    assert [r.blueprint_id for r in slot.fossil_reports] == ["conv_light", "norm"]
    assert slot.fossil_param_count() == sum(r.params for r in slot.fossil_reports)
    fossilized = [e for e in events if e.event_type == TelemetryEventType.SEED_FOSSILIZED]
    assert [(e.seed_id, e.data["stack_depth"]) for e in fossilized] == [("kept", 1), ("third", 2)]


def test_a_stack_survives_a_checkpoint_and_rebuilds_before_the_weights_load() -> None:
    slot = _fresh_slot()
    grow(slot, S.FOSSILIZED, "conv_light", seed_id="a")
    grow(slot, S.FOSSILIZED, "norm", seed_id="b")
    grow(slot, S.BLENDING, "conv_light", seed_id="c")
    for module in (*slot.fossils, slot.seed):
        _randomize(module)
    restored = _fresh_slot()
    restored.load_lifecycle_state(json.loads(json.dumps(slot.lifecycle_state())))
    restored.load_state_dict(slot.state_dict())
    assert restored.fossil_reports == slot.fossil_reports and restored.state.seed_id == "c"
    x = _features()
    with torch.no_grad():
        assert torch.equal(restored(x), slot(x))


def test_cull_on_empty_slot_returns_false() -> None:
    assert _fresh_slot().cull() is False


def test_cull_embargo_reset_cycle() -> None:
    embargo = 2
    slot = SeedSlot("s1", channels=8, task_config=TaskConfig(embargo_epochs=embargo))
    slot.germinate("conv_light", "seed-1")
    _randomize(slot.seed)
    slot.step_epoch()
    assert slot.state.stage == S.TRAINING
    assert slot.cull("testing") is True
    assert slot.state.stage == S.CULLED
    x = _features()
    assert torch.equal(slot(x), x)  # culled: host unchanged
    with pytest.raises(RuntimeError):
        slot.germinate("norm")

    slot.step_epoch()
    assert slot.state.stage == S.EMBARGOED
    for _ in range(embargo):
        assert slot.state.stage == S.EMBARGOED
        with pytest.raises(RuntimeError, match=r"(?i)embargo") as info:
            slot.germinate("norm")
        assert "s1" in str(info.value)
        slot.step_epoch()
    assert slot.state.stage == S.RESETTING
    with pytest.raises(RuntimeError):
        slot.germinate("norm")
    slot.step_epoch()
    assert slot.state is None  # back to DORMANT
    assert slot.stage == S.DORMANT
    assert torch.equal(slot(x), x)
    state = slot.germinate("norm", "seed-2")
    assert state.stage == S.GERMINATED and state.seed_id == "seed-2"


def test_germinating_an_occupied_slot_raises() -> None:
    slot = _fresh_slot()
    slot.germinate("norm", "seed-1")
    with pytest.raises(RuntimeError, match="seed-1"):
        slot.germinate("conv_light", "seed-2")
    assert slot.state.seed_id == "seed-1"
    assert slot.state.blueprint_id == "norm"


def test_unknown_blueprint_lists_available_ones() -> None:
    slot = _fresh_slot()
    with pytest.raises(ValueError, match="no_such_blueprint") as info:
        slot.germinate("no_such_blueprint")
    message = str(info.value)
    for name in ("norm", "attention", "depthwise", "conv_light", "conv_heavy"):
        assert name in message
    assert slot.state is None and slot.seed is None


def test_shape_changing_blueprint_is_refused() -> None:
    name = "_test_bad_shape"

    @BlueprintRegistry.register(name, "cnn", 1, "doubles channels")
    def bad(dim: int) -> nn.Module:
        return nn.Conv2d(dim, dim * 2, 1)

    try:
        slot = _fresh_slot()
        with pytest.raises(ValueError, match=r"G0 failed: shape_changed \(2, 8, 8, 8\) -> \(2, 16, 8, 8\)"):
            slot.germinate(name)
        assert slot.state is None and slot.seed is None
        assert slot.germinate("norm").stage == S.GERMINATED  # slot still usable
    finally:
        BlueprintRegistry.unregister("cnn", name)


def test_germinate_picks_topology_from_the_host() -> None:
    class FakeTransformerHost(nn.Module):
        topology = "transformer"

    slot = SeedSlot("t", channels=16)
    grow(slot, S.TRAINING, "lora", host_module=FakeTransformerHost())
    assert slot.seed_topology == "transformer"
    x = torch.randn(2, 5, 16)
    assert torch.equal(slot(x), x)


def test_telemetry_events_carry_identity() -> None:
    events: list[TelemetryEvent] = []
    slot = SeedSlot("slot-7", channels=8, on_telemetry=events.append)
    slot.germinate("norm", "seed-42")
    grow(slot, S.BLENDING)
    slot.cull("bad seed")
    assert len(events) >= 4
    for event in events:
        assert isinstance(event, TelemetryEvent)
        assert event.slot_id == "slot-7"
        assert event.seed_id == "seed-42"
        assert event.blueprint_id == "norm"
        assert isinstance(event.epoch, int)
        json.dumps(event.to_dict())
    assert events[0].event_type == TelemetryEventType.SEED_GERMINATED and events[0].epoch == 0
    assert [e.epoch for e in events] == sorted(e.epoch for e in events)
    assert events[-1].event_type == TelemetryEventType.SEED_CULLED
    assert events[-1].epoch == slot.epoch
    assert "bad seed" in events[-1].message


def _two_lives(**slot_options) -> list[SeedSlot]:
    """Two seeds' whole lives: one fossilized, one culled and cleared back to DORMANT."""
    kept, dropped = SeedSlot("s1", channels=8, **slot_options), SeedSlot("s2", channels=8, **slot_options)
    grow(kept, S.FOSSILIZED, "norm", seed_id="kept")
    grow(dropped, S.CULLED, "norm", seed_id="dropped")
    while dropped.state is not None:
        dropped.step_epoch()
    return [kept, dropped]


def test_the_events_a_lifecycle_emits_are_exactly_the_lifecycle_events() -> None:
    events: list[TelemetryEvent] = []
    _two_lives(on_telemetry=events.append)
    assert {e.event_type for e in events} == LIFECYCLE_EVENTS


@pytest.mark.parametrize("fast_mode", [False, True])
def test_every_move_is_recorded_as_a_transition_fast_mode_too(fast_mode: bool) -> None:
    slots = _two_lives(on_telemetry=lambda e: None, fast_mode=fast_mode)
    moves = [(t.seed_id, t.from_stage, t.to_stage) for slot in slots for t in slot.drain_transitions()]
    chain = [S.DORMANT, S.GERMINATED, S.TRAINING, S.BLENDING, S.SHADOWING, S.PROBATIONARY, S.FOSSILIZED]
    assert [m for m in moves if m[0] == "kept"] == [("kept", a, b) for a, b in itertools.pairwise(chain)]
    dropped = [m[1:] for m in moves if m[0] == "dropped"]
    assert dropped == [(S.DORMANT, S.GERMINATED), (S.GERMINATED, S.CULLED), (S.CULLED, S.EMBARGOED),
                       (S.EMBARGOED, S.RESETTING), (S.RESETTING, S.DORMANT)]  # fmt: skip
    assert [slot.drain_transitions() for slot in slots] == [[], []]  # drained


def test_cull_reason_and_epoch_are_in_the_transition() -> None:
    slot = _fresh_slot()
    grow(slot, S.TRAINING)
    slot.drain_transitions()
    slot.cull("hurts: contribution -0.02")
    (move,) = slot.drain_transitions()
    assert (move.to_stage, move.reason, move.epoch) == (S.CULLED, "hurts: contribution -0.02", slot.epoch)


def test_pending_transitions_survive_a_checkpoint() -> None:
    slot = _fresh_slot()
    grow(slot, S.TRAINING)
    restored = _fresh_slot()
    restored.load_lifecycle_state(json.loads(json.dumps(slot.lifecycle_state())))
    assert restored.drain_transitions() == slot.drain_transitions() != []


def test_a_cull_frees_the_slot_under_python_O() -> None:
    """The lifecycle must not live inside asserts: `python -O` strips them."""
    lifecycle = (
        "assert False, 'this line must be stripped'\n"
        "from esper.kasmina.slot import SeedSlot\n"
        "from esper.leyline import TaskConfig\n"
        "slot = SeedSlot('s', channels=8, task_config=TaskConfig(embargo_epochs=0))\n"
        "slot.germinate('norm')\n"
        "stages = [slot.stage]\n"
        "slot.cull('test')\n"
        "stages.append(slot.stage)\n"
        "for _ in range(3):\n"
        "    slot.step_epoch()\n"
        "    stages.append(slot.stage)\n"
        "print(*(stage.name for stage in stages), slot.seed is None)\n"
    )
    run = subprocess.run([sys.executable, "-O", "-c", lifecycle], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["GERMINATED", "CULLED", "EMBARGOED", "RESETTING", "DORMANT", "True"]


def test_assigning_the_device_moves_the_slot_and_keeps_the_probe_cache_when_unchanged() -> None:
    slot = SeedSlot("s1", channels=8, device="cpu")
    slot.germinate("norm")
    probe = slot._get_shape_probe("cnn")
    slot.device = torch.device("cpu")  # the plan's own test does this
    assert slot.device == torch.device("cpu")
    assert slot._get_shape_probe("cnn") is probe
    slot.device = "meta"
    assert slot.device.type == "meta" and slot._probe_cache == {}
    assert all(p.device.type == "meta" for p in slot.seed.parameters())


def test_fast_mode_emits_nothing() -> None:
    events: list[TelemetryEvent] = []
    slot = SeedSlot("s1", channels=8, on_telemetry=events.append, fast_mode=True)
    slot.germinate("norm")
    grow(slot, S.BLENDING)
    slot.cull()
    for _ in range(6):
        slot.step_epoch()
    assert slot.state is None
    assert events == []


def test_shape_probe_is_cached_and_dropped_on_device_change() -> None:
    slot = SeedSlot("s1", channels=8, device="cpu")
    first = slot._get_shape_probe("cnn")
    assert first.shape[1] == 8
    assert slot._get_shape_probe("cnn") is first
    slot.to("meta")
    moved = slot._get_shape_probe("cnn")
    assert moved.device.type == "meta"
    assert moved is not first
    assert moved.shape == first.shape
    assert slot._get_shape_probe("cnn") is moved
    slot.to_empty(device="cpu")  # meta tensors hold no data: to_empty moves back
    back = slot._get_shape_probe("cnn")
    assert back.device.type == "cpu"


def test_invalid_advance_stage_fails_and_keeps_the_stage() -> None:
    slot = _fresh_slot()
    slot.germinate("norm")
    for target in (S.FOSSILIZED, S.BLENDING, S.DORMANT, S.EMBARGOED):
        result = slot.advance_stage(target)
        assert result.passed is False
        assert result.checks_failed
        assert slot.state.stage == S.GERMINATED


def test_advance_stage_gate_failure_keeps_the_stage() -> None:
    slot = _fresh_slot()
    slot.germinate("norm")
    slot.step_epoch()
    assert slot.state.stage == S.TRAINING
    result = slot.advance_stage(S.BLENDING)  # ratio still 0: G2 refuses
    assert result.passed is False and result.gate == GateLevel.G2
    assert any(c.startswith("seed_gradient_low") for c in result.checks_failed)
    assert slot.state.stage == S.TRAINING


def test_advance_stage_on_empty_slot() -> None:
    result = _fresh_slot().advance_stage()
    assert result.passed is False


def test_training_stall_is_culled() -> None:
    max_epochs = 3
    events: list[TelemetryEvent] = []
    slot = SeedSlot(
        "s1",
        channels=8,
        on_telemetry=events.append,
        task_config=TaskConfig(max_training_epochs=max_epochs),
    )
    slot.germinate("norm")  # gradient ratio stays 0: G2 never passes
    slot.step_epoch()
    assert slot.state.stage == S.TRAINING
    for _ in range(max_epochs - 1):
        slot.step_epoch()
        assert slot.state.stage == S.TRAINING
    slot.step_epoch()
    slot.step_epoch()
    assert slot.state.stage in (S.CULLED, S.EMBARGOED)
    assert slot.seed is None
    assert TelemetryEventType.SEED_CULLED in [e.event_type for e in events]


def test_probation_expiry_is_culled() -> None:
    max_epochs = 2
    slot = SeedSlot("s1", channels=8, task_config=TaskConfig(max_probation_epochs=max_epochs))
    slot.germinate("norm")
    grow(slot, S.PROBATIONARY)
    for _ in range(max_epochs - 1):
        slot.step_epoch()
        assert slot.state.stage == S.PROBATIONARY
    slot.step_epoch()
    slot.step_epoch()
    assert slot.state.stage in (S.CULLED, S.EMBARGOED)
    assert slot.seed is None


def test_direct_stage_assignment_is_honoured_by_forward() -> None:
    slot = _fresh_slot()
    slot.germinate("conv_light")
    _randomize(slot.seed)
    x = _features()
    slot.state.stage = S.TRAINING
    slot.state.alpha = 0.5  # a TRAINING seed run at alpha 0.5 blends
    blended = slot(x).detach()
    assert not torch.equal(blended, x)
    slot.state.alpha = 0.0
    assert torch.equal(slot(x), x)
    slot.state.stage = S.CULLED
    assert torch.equal(slot(x), x)


def test_report() -> None:
    slot = _fresh_slot()
    assert slot.report() is None
    slot.germinate("norm", "seed-1")
    report = slot.report()
    assert report.seed_id == "seed-1" and report.slot_id == "s1"
    assert report.stage == S.GERMINATED
    assert report.params == sum(p.numel() for p in slot.seed.parameters()) > 0


def test_a_decided_seeds_event_carries_its_stage_history() -> None:
    events = []
    slot = _fresh_slot(on_telemetry=events.append)
    slot.germinate("norm", "seed-1")
    slot.step_epoch()  # G1: into TRAINING
    slot.cull("test")
    (culled,) = [e for e in events if e.event_type == TelemetryEventType.SEED_CULLED]
    assert culled.data["stage_history"] == [["GERMINATED", 0], ["TRAINING", 1], ["CULLED", 1]]
    assert all("stage_history" not in e.data for e in events if e.event_type == TelemetryEventType.SEED_STAGE_CHANGED)
