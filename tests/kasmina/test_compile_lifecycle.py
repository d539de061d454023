"""A seed's whole lifecycle under torch.compile: outputs match eager, alpha steps never recompile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from seed_lifecycle import grow
from torch._dynamo.testing import CompileCounter

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.kasmina.slot import QualityGates
from esper.leyline import SeedStage, TaskConfig

# Gates that let a seed through on schedule: this test is about mechanics, not judgement.
_OPEN_GATES = QualityGates(
    min_training_improvement=-1.0,
    min_training_epochs=0,
    min_seed_gradient_ratio=0.0,
    min_shadowing_epochs=0,
    min_contribution=-1.0,
)
BLENDING_STEPS = 5


def _model() -> MorphogeneticModel:
    torch.manual_seed(0)
    config = TaskConfig(topology="cnn", blending_epochs=BLENDING_STEPS)
    return MorphogeneticModel(CNNHost(n_blocks=3, base_channels=8), ["block2"], gates=_OPEN_GATES, task_config=config)


def test_lifecycle_compiled_matches_eager_and_alpha_never_recompiles() -> None:
    torch._dynamo.reset()
    model = _model()
    slot = model.seed_slots["block2"]
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    frames: dict[str, int] = {}

    def step(label: str) -> None:
        expected = model(x)
        got = compiled(x)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=label)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(got, y).backward()
        with torch.no_grad():
            for param in model.parameters():
                if param.grad is not None:
                    param -= 0.01 * param.grad
        frames[label] = counter.frame_count

    step("dormant")
    slot.germinate("conv_light", host_module=model.host)
    step("germinated")
    assert slot.advance_stage(SeedStage.TRAINING).passed
    step("training")
    slot.state.metrics.seed_gradient_norm_ratio = 1.0
    assert slot.advance_stage(SeedStage.BLENDING).passed
    alphas = []
    while slot.stage == SeedStage.BLENDING:
        step(f"blending{len(alphas)}")
        alphas.append(slot.alpha)
        slot.step_epoch()  # one alpha step of the ramp; enters SHADOWING at the end
    step("shadowing")
    slot.state.metrics.counterfactual_contribution = 0.1
    assert slot.advance_stage(SeedStage.PROBATIONARY).passed
    step("probationary")
    assert slot.advance_stage(SeedStage.FOSSILIZED).passed
    step("fossilized")  # the seed now runs from the slot's stack
    slot.germinate("norm", host_module=model.host)  # a second seed on top of the fossil
    assert slot.advance_stage(SeedStage.TRAINING).passed
    step("stacked")

    assert len(alphas) >= 3 and len(set(alphas)) == len(alphas)  # the ramp moved alpha every step
    assert frames[f"blending{len(alphas) - 1}"] == frames["blending0"]  # no recompile per alpha step
    # GERMINATED, TRAINING, BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED; a second seed TRAINING.
    stage_changes = 7
    assert counter.frame_count <= stage_changes + 1, frames


def test_direct_alpha_assignment_is_honoured_compiled_and_eager_without_recompiling() -> None:
    torch._dynamo.reset()
    model = _model().eval()
    slot = model.seed_slots["block2"]
    grow(slot, SeedStage.BLENDING, "conv_light", host_module=model.host)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for param in slot.seed.parameters():
            param.normal_()  # a seed far from identity, so alpha visibly matters
        outputs = []
        for alpha in (0.2, 0.5, 0.9):
            slot.state.alpha = alpha
            got = compiled(x)
            torch.testing.assert_close(got, model(x), rtol=1e-6, atol=1e-6)
            outputs.append(got)
        assert counter.frame_count == 1  # three alphas, one graph
        # force_alpha picks another branch (may compile once more) and writes the same buffer.
        with slot.force_alpha(0.3):
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(outputs[0], outputs[2])
    assert slot._alpha.item() == pytest.approx(0.9)  # force_alpha restored the buffer


def test_alpha_change_between_forward_and_backward_is_safe() -> None:
    model = _model()
    slot = model.seed_slots["block2"]
    grow(slot, SeedStage.BLENDING, "conv_light", host_module=model.host)
    slot.set_alpha(0.3)
    with slot.force_alpha(0.6):
        out = model(torch.randn(2, 3, 16, 16))
    slot.set_alpha(0.4)  # the buffer changes before backward: the graph kept its own copy
    out.sum().backward()
    assert all(p.grad is not None for p in slot.seed.parameters())
