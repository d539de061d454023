"""Gradient isolation primitives: straight-through incubator, blending, alpha ramp, monitor."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from esper.kasmina.isolation import (
    AlphaSchedule,
    GradientIsolationMonitor,
    blend_with_isolation,
    ste_forward,
)


def _pair(
    shape: tuple[int, ...] = (2, 4, 3, 3), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    host = torch.randn(shape, generator=g)
    seed_t = torch.randn(shape, generator=g) * 3.0 + 1.0
    return host, seed_t


# ---------------------------------------------------------------- ste_forward
def test_ste_value_is_exactly_the_host() -> None:
    host, seed = _pair()
    out = ste_forward(host, seed)
    assert torch.equal(out, host)
    assert out.shape == host.shape and out.dtype == host.dtype


def test_ste_value_is_exact_for_extreme_magnitudes() -> None:
    host = torch.tensor([1e-30, -3.0, 1e30, 0.1])
    seed = torch.tensor([1e30, 1e-30, -7.0, 0.3])
    assert torch.equal(ste_forward(host, seed), host)


def test_ste_gradients_reach_both_inputs_unchanged() -> None:
    host, seed = _pair()
    host.requires_grad_(True)
    seed.requires_grad_(True)
    upstream = torch.randn(host.shape, generator=torch.Generator().manual_seed(3))
    ste_forward(host, seed).backward(upstream)
    assert torch.equal(host.grad, upstream)
    assert torch.equal(seed.grad, upstream)


def test_ste_gradients_through_a_seed_module() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    host = x.clone().requires_grad_(True)
    upstream = torch.randn(3, 4)
    ste_forward(host, lin(host.detach())).backward(upstream)
    # Reference: d/dW of <upstream, W x + b> = upstream^T x.
    torch.testing.assert_close(lin.weight.grad, upstream.T @ x)
    torch.testing.assert_close(lin.bias.grad, upstream.sum(0))
    assert torch.equal(host.grad, upstream)


def test_ste_compiles_fullgraph_and_matches_eager() -> None:
    compiled = torch.compile(ste_forward, fullgraph=True, backend="eager")
    host, seed = _pair()
    host.requires_grad_(True)
    seed.requires_grad_(True)
    out = compiled(host, seed)
    assert torch.equal(out, ste_forward(host, seed))
    assert torch.equal(out, host)
    upstream = torch.full_like(out, 2.0)
    out.backward(upstream)
    assert torch.equal(host.grad, upstream)
    assert torch.equal(seed.grad, upstream)


# ---------------------------------------------------------------- blend_with_isolation
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_blend_is_a_lerp(alpha: float) -> None:
    host, seed = _pair()
    out = blend_with_isolation(host, seed, alpha)
    torch.testing.assert_close(out, (1 - alpha) * host + alpha * seed, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor0d"])
@pytest.mark.parametrize(
    ("alpha", "expect"), [(-0.5, "host"), (0.0, "host"), (1.0, "seed"), (1.7, "seed")]
)
def test_blend_clamps_alpha(alpha: float, expect: str, as_tensor: bool) -> None:
    host, seed = _pair()
    a = torch.tensor(alpha) if as_tensor else alpha
    out = blend_with_isolation(host, seed, a)
    assert torch.equal(out, host if expect == "host" else seed)


def test_blend_tensor_alpha_matches_float_alpha() -> None:
    host, seed = _pair()
    for alpha in (0.2, 0.6):
        torch.testing.assert_close(
            blend_with_isolation(host, seed, torch.tensor(alpha)),
            blend_with_isolation(host, seed, alpha),
        )


def test_blend_detach_host_semantics() -> None:
    alpha = 0.25
    host, seed = _pair()
    upstream = torch.randn(host.shape, generator=torch.Generator().manual_seed(5))

    h, s = host.clone().requires_grad_(True), seed.clone().requires_grad_(True)
    blend_with_isolation(h, s, alpha, detach_host=True).backward(upstream)
    assert h.grad is None  # the host term carries no gradient
    torch.testing.assert_close(s.grad, alpha * upstream)

    h, s = host.clone().requires_grad_(True), seed.clone().requires_grad_(True)
    blend_with_isolation(h, s, alpha, detach_host=False).backward(upstream)
    torch.testing.assert_close(h.grad, (1 - alpha) * upstream)
    torch.testing.assert_close(s.grad, alpha * upstream)


def test_blend_default_detaches_host() -> None:
    host, seed = _pair()
    h = host.clone().requires_grad_(True)
    s = seed.clone().requires_grad_(True)
    blend_with_isolation(h, s, 0.5).sum().backward()
    assert h.grad is None
    assert s.grad is not None


@pytest.mark.parametrize("detach_host", [True, False])
@pytest.mark.parametrize("alpha", [0.3, 1.7, "tensor"])
def test_blend_compiles_fullgraph_and_matches_eager(alpha: object, detach_host: bool) -> None:
    a = torch.tensor(0.4) if alpha == "tensor" else alpha
    compiled = torch.compile(blend_with_isolation, fullgraph=True, backend="eager")
    host, seed = _pair()
    h1, s1 = host.clone().requires_grad_(True), seed.clone().requires_grad_(True)
    h2, s2 = host.clone().requires_grad_(True), seed.clone().requires_grad_(True)
    out_c = compiled(h1, s1, a, detach_host)
    out_e = blend_with_isolation(h2, s2, a, detach_host)
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    out_c.sum().backward()
    out_e.sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=0)
    assert (h1.grad is None) == (h2.grad is None) == detach_host


# ---------------------------------------------------------------- AlphaSchedule
@pytest.mark.parametrize("total", [1, 2, 5, 10, 37])
def test_alpha_schedule_endpoints_exact(total: int) -> None:
    schedule = AlphaSchedule(total)
    assert schedule(0) == 0.0
    assert schedule(total) == 1.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_alpha_schedule_is_monotone_and_bounded(temperature: float) -> None:
    total = 20
    schedule = AlphaSchedule(total, temperature=temperature)
    values = [schedule(i) for i in range(total + 1)]
    assert all(b > a for a, b in itertools.pairwise(values))  # strictly increasing
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values[0] == 0.0 and values[-1] == 1.0


def test_alpha_schedule_is_a_sigmoid_ramp() -> None:
    # Symmetric around the midpoint and slow at both ends, fast in the middle.
    total = 20
    schedule = AlphaSchedule(total)
    assert schedule(total // 2) == pytest.approx(0.5, abs=1e-12)
    for i in range(total + 1):
        assert schedule(i) + schedule(total - i) == pytest.approx(1.0, abs=1e-12)
    steps = [schedule(i + 1) - schedule(i) for i in range(total)]
    assert steps[total // 2] > steps[0] and steps[total // 2] > steps[-1]


def test_alpha_schedule_clamps_outside_the_ramp() -> None:
    schedule = AlphaSchedule(10)
    assert schedule(-3) == 0.0
    assert schedule(25) == 1.0


def test_alpha_schedule_temperature_changes_the_middle() -> None:
    total = 20
    sharp = AlphaSchedule(total, temperature=0.5)
    default = AlphaSchedule(total)
    wide = AlphaSchedule(total, temperature=4.0)
    quarter = total // 4
    # Below the midpoint a sharper ramp is lower, a wider one higher; ends stay fixed.
    assert sharp(quarter) < default(quarter) < wide(quarter)
    assert sharp(total - quarter) > default(total - quarter) > wide(total - quarter)
    for s in (sharp, default, wide):
        assert s(0) == 0.0 and s(total) == 1.0


def test_alpha_schedule_custom_range_is_within_bounds() -> None:
    schedule = AlphaSchedule(7, start=0.2, end=0.9)
    values = [schedule(i) for i in range(8)]
    assert values[0] == pytest.approx(0.2, abs=1e-12)
    assert values[-1] == pytest.approx(0.9, abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(values))


def test_alpha_schedule_custom_endpoints_exact() -> None:
    schedule = AlphaSchedule(7, start=0.2, end=0.9)
    assert schedule(0) == 0.2
    assert schedule(7) == 0.9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_steps": 0},
        {"total_steps": -5},
        {"total_steps": 10, "temperature": 0.0},
        {"total_steps": 10, "temperature": -1.0},
    ],
)
def test_alpha_schedule_bad_args_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AlphaSchedule(**kwargs)


# ---------------------------------------------------------------- GradientIsolationMonitor
def _ref_norm(params) -> float:
    grads = [p.grad.flatten() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def _host_and_seed() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
    seed = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    return host, seed


def test_monitor_norms_match_reference() -> None:
    host, seed = _host_and_seed()
    monitor = GradientIsolationMonitor()
    monitor.register(host, seed)
    x = torch.randn(5, 6)
    h = host(x)
    (h.pow(2).sum() + 3.0 * seed(h).sum()).backward()
    _, stats = monitor.check_isolation()
    assert set(stats) >= {"host_grad_norm", "seed_grad_norm", "isolated", "violations"}
    assert stats["host_grad_norm"] == pytest.approx(_ref_norm(host.parameters()), rel=1e-5)
    assert stats["seed_grad_norm"] == pytest.approx(_ref_norm(seed.parameters()), rel=1e-5)
    assert stats["host_grad_norm"] > 0 and stats["seed_grad_norm"] > 0
    assert isinstance(stats["host_grad_norm"], float)
    assert isinstance(stats["seed_grad_norm"], float)


def test_monitor_backward_through_seed_only_is_isolated() -> None:
    host, seed = _host_and_seed()
    monitor = GradientIsolationMonitor()
    monitor.register(host, seed)
    x = torch.randn(5, 6)
    h = host(x)
    seed(h.detach()).pow(2).sum().backward()
    isolated, stats = monitor.check_isolation()
    assert isolated is True and stats["isolated"] is True
    assert stats["violations"] == 0 and monitor.violations == 0
    assert stats["host_grad_norm"] == 0.0
    assert stats["seed_grad_norm"] == pytest.approx(_ref_norm(seed.parameters()), rel=1e-5)


def test_monitor_counts_violations_and_resets() -> None:
    host, seed = _host_and_seed()
    monitor = GradientIsolationMonitor()
    monitor.register(host, seed)
    x = torch.randn(5, 6)
    seed(host(x)).sum().backward()  # reaches the host: a violation
    isolated, stats = monitor.check_isolation()
    assert isolated is False and stats["isolated"] is False
    assert stats["violations"] == 1
    isolated, stats = monitor.check_isolation()
    assert stats["violations"] == 2
    monitor.reset()
    assert monitor.violations == 0
    # Clean backward after reset: isolated again, no new violations.
    host.zero_grad(set_to_none=True)
    seed.zero_grad(set_to_none=True)
    seed(host(x).detach()).sum().backward()
    isolated, stats = monitor.check_isolation()
    assert isolated is True and stats["violations"] == 0


def test_monitor_threshold() -> None:
    host, seed = _host_and_seed()
    x = torch.randn(5, 6)
    (1e-3 * host(x).sum()).backward()
    norm = _ref_norm(host.parameters())
    assert 0 < norm
    loose = GradientIsolationMonitor(threshold=norm * 10)
    loose.register(host, seed)
    assert loose.check_isolation()[0] is True
    strict = GradientIsolationMonitor(threshold=norm / 10)
    strict.register(host, seed)
    assert strict.check_isolation()[0] is False


def test_monitor_does_not_double_count_a_seed_inside_the_host() -> None:
    torch.manual_seed(0)
    seed = nn.Linear(6, 6)
    host = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), seed, nn.Linear(6, 3))  # seed lives in host
    monitor = GradientIsolationMonitor()
    monitor.register(host, seed)
    host(torch.randn(4, 6)).pow(2).sum().backward()
    _, stats = monitor.check_isolation()
    host_only = [p for i in (0, 3) for p in host[i].parameters()]
    assert stats["host_grad_norm"] == pytest.approx(_ref_norm(host_only), rel=1e-5)
    assert stats["seed_grad_norm"] == pytest.approx(_ref_norm(seed.parameters()), rel=1e-5)
    # And it is really smaller than the norm over everything (the seed had gradient).
    assert stats["host_grad_norm"] < _ref_norm(host.parameters())


def test_monitor_with_no_gradients_reports_zero() -> None:
    host, seed = _host_and_seed()
    monitor = GradientIsolationMonitor()
    monitor.register(host, seed)
    isolated, stats = monitor.check_isolation()
    assert isolated is True
    assert stats["host_grad_norm"] == 0.0 and stats["seed_grad_norm"] == 0.0
    assert not math.isnan(stats["host_grad_norm"])
