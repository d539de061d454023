"""Walk a seed through the REAL lifecycle, for tests that need a seed in a given stage.

Tests do not assign `slot.state.stage`: they germinate and let `step_epoch` and
`advance_stage` move the seed through its gates, writing only the measurements
the trainer writes each epoch (a gradient-norm reading for G2, a counterfactual
contribution for G4 and G5). Alpha and `isolate_gradients` may be set after.
(`pythonpath = ["tests"]` in pyproject.toml makes `from seed_lifecycle import grow` work.)
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from esper.kasmina.slot import SeedSlot, SeedState
from esper.leyline import SeedStage

S = SeedStage


def grow(
    slot: SeedSlot,
    stage: SeedStage,
    blueprint: str = "norm",
    *,
    seed_id: str | None = None,
    host_module: nn.Module | None = None,
    contribution: float = 0.05,
) -> SeedState:
    """Germinate `blueprint` in the empty `slot` (unless it holds a seed) and move it to `stage`.

    Every move is a real one (gates, side effects, history). On the way the seed
    reports a healthy gradient ratio and, once blended, `contribution` as its
    counterfactual. CULLED is reached by culling the seed where it is.
    """
    if slot.state is None:
        slot.germinate(blueprint, seed_id, host_module=host_module)
    state = slot.state
    if stage == S.CULLED:
        if not slot.cull("culled by the test"):
            raise AssertionError(f"could not cull {state.seed_id} in {state.stage.name}")
        return state
    for _ in range(100):
        if state.stage == stage:
            return state
        if state.stage == S.TRAINING:
            state.metrics.record_gradient_norms(host_norm=1.0, seed_norm=1.0)  # the seed learns
        if state.stage in (S.BLENDING, S.SHADOWING, S.PROBATIONARY):
            state.metrics.counterfactual_contribution = contribution
        if state.stage == S.PROBATIONARY and stage == S.FOSSILIZED:
            result = slot.advance_stage(S.FOSSILIZED)
            if not result.passed:
                raise AssertionError(f"G5 refused {state.seed_id}: {result.message}")
            continue
        slot.step_epoch()
        if slot.state is not state:
            break
    raise AssertionError(f"{state.seed_id} did not reach {stage.name}: it is {state.stage.name}")


def grow_configured(model: nn.Module, slot: SeedSlot, stage: SeedStage) -> SeedState:
    """Move `slot`'s seed (of the one blueprint its model was configured for) to `stage`, the
    host given to it (a width seed widens a host layer)."""
    (blueprint,) = slot.task_config.blueprint_kwargs
    return grow(slot, stage, blueprint, host_module=model.host)


def host_grads(model: nn.Module) -> dict[str, Tensor]:
    """The gradients of the host's own parameters (not its slots')."""
    return {name: p.grad.clone() for name, p in model.host.named_parameters() if not name.startswith("slots.")}


def train_step_leaves_host_bitwise(model: nn.Module, slot: SeedSlot, x: Tensor) -> nn.Module:
    """Grow `slot`'s seed to TRAINING, take a training pass, and check the output and the host's
    gradients are bitwise those of the model without it; returns the seed."""
    bare = copy.deepcopy(model)
    bare.train()
    expected = bare(x)
    expected.square().sum().backward()
    grow_configured(model, slot, S.TRAINING)
    model.train()
    out = model(x)
    assert torch.equal(out, expected)
    out.square().sum().backward()
    bare_grads = host_grads(bare)
    assert all(torch.equal(g, bare_grads[name]) for name, g in host_grads(model).items())
    return slot.seed
