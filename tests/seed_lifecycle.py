"""Walk a seed through the REAL lifecycle, for tests that need a seed in a given stage.

Tests do not assign `slot.state.stage`: they germinate and let `step_epoch` and
`advance_stage` move the seed through its gates, writing only the measurements
the trainer writes each epoch (a gradient-norm reading for G2, a counterfactual
contribution for G4 and G5). Alpha and `isolate_gradients` may be set after.
(`pythonpath = ["tests"]` in pyproject.toml makes `from seed_lifecycle import grow` work.)
"""

from __future__ import annotations

from torch import nn

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
