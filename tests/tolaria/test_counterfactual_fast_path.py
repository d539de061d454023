"""The counterfactual fast path (trunk once, tails per slot) equals the naive k + 1 passes exactly."""

from __future__ import annotations

import pytest
import torch
from seed_lifecycle import grow
from torch import nn

from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage
from esper.tolaria.trainer import validate_with_counterfactuals


def _randomize(module: nn.Module, seed: int, std: float = 1.0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _cnn_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 3, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(3)
    ]


def _token_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 32, (4, 12), generator=generator), torch.randint(0, 32, (4, 12), generator=generator))
        for _ in range(3)
    ]


def _grow(model: MorphogeneticModel, plan: dict[str, tuple[str, SeedStage, float]]) -> None:
    for i, (key, (blueprint, stage, alpha)) in enumerate(plan.items()):
        slot = model.seed_slots[key]
        grow(slot, stage, blueprint, host_module=model.host)
        _randomize(slot.seed, seed=100 + i)
        slot.state.alpha = alpha


def _cnn_model() -> MorphogeneticModel:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(n_blocks=4, base_channels=8))
    # BatchNorm with non-trivial running statistics: eval mode must use them in both paths.
    model.train()
    with torch.no_grad():
        for inputs, _ in _cnn_batches():
            model(inputs)
    return model


CNN_PLANS = {
    "one": {"block2": ("conv_light", SeedStage.BLENDING, 0.6)},
    "three": {
        "block2": ("conv_light", SeedStage.BLENDING, 0.4),
        "block3": ("depthwise", SeedStage.SHADOWING, 1.0),
        "block4": ("attention", SeedStage.PROBATIONARY, 1.0),
    },
    "mixed": {
        "block2": ("norm", SeedStage.TRAINING, 0.0),  # incubating: not measured
        "block4": ("conv_heavy", SeedStage.BLENDING, 0.7),
    },
}


def _host_labelled(model: MorphogeneticModel, batches: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Targets = the host's own predictions, so any seed that changes a prediction shows."""
    model.eval()
    with torch.no_grad():
        return [(inputs, model(inputs).argmax(dim=-1)) for inputs, _ in batches]


@pytest.mark.parametrize("plan", list(CNN_PLANS))
def test_fast_path_equals_naive_cnn(plan: str) -> None:
    model = _cnn_model()
    batches = _host_labelled(model, _cnn_batches())
    _grow(model, CNN_PLANS[plan])
    naive = validate_with_counterfactuals(model, batches, naive=True)
    fast = validate_with_counterfactuals(model, batches)
    assert fast.contributions == naive.contributions
    assert (fast.loss, fast.accuracy) == (naive.loss, naive.accuracy)
    assert any(value != 0.0 for value in naive.contributions.values())  # the seeds really matter
    for key, value in fast.contributions.items():
        assert model.seed_slots[key].state.metrics.counterfactual_contribution == value


def test_fast_path_equals_naive_transformer() -> None:
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=32, n_embd=16, n_head=2, n_layer=3, block_size=16, dropout=0.1)
    model = MorphogeneticModel(host)
    batches = _host_labelled(model, _token_batches())
    _grow(
        model,
        {
            "layer1": ("mlp", SeedStage.BLENDING, 0.5),
            "layer2": ("attention", SeedStage.SHADOWING, 1.0),
            "layer3": ("lora", SeedStage.PROBATIONARY, 1.0),
        },
    )
    naive = validate_with_counterfactuals(model, batches, naive=True)
    fast = validate_with_counterfactuals(model, batches)
    assert fast.contributions == naive.contributions
    assert (fast.loss, fast.accuracy) == (naive.loss, naive.accuracy)
    assert set(fast.contributions) == {"layer1", "layer2", "layer3"}


def test_no_measured_slot_gives_plain_validation() -> None:
    model = _cnn_model()
    result = validate_with_counterfactuals(model, _cnn_batches())
    assert result.contributions == {}
    assert result == validate_with_counterfactuals(model, _cnn_batches(), naive=True)


def test_fast_path_equals_naive_with_stacks_and_keeps_the_fossils() -> None:
    """A counterfactual removes only a slot's live seed: it resumes after the slot's fossils."""
    model = _cnn_model()
    batches = _host_labelled(model, _cnn_batches())
    block2 = model.seed_slots["block2"]
    grow(block2, SeedStage.FOSSILIZED, "conv_light", host_module=model.host)
    _randomize(block2.fossils[0], seed=7)
    _grow(model, {"block2": ("depthwise", SeedStage.BLENDING, 0.8), "block3": ("conv_light", SeedStage.SHADOWING, 1.0)})
    naive = validate_with_counterfactuals(model, batches, naive=True)
    fast = validate_with_counterfactuals(model, batches)
    assert fast.contributions == naive.contributions and set(fast.contributions) == {"block2", "block3"}
    assert (fast.loss, fast.accuracy) == (naive.loss, naive.accuracy)
    # Without the live seed the fossil still acts: the counterfactual is not the bare host.
    model.eval()
    with torch.no_grad(), block2.force_alpha(0.0):
        without_live = [model(inputs) for inputs, _ in batches]
        fossils = block2.fossils
        block2.fossils = nn.ModuleList()
        bare = [model(inputs) for inputs, _ in batches]
        block2.fossils = fossils
    assert any(not torch.equal(a, b) for a, b in zip(without_live, bare, strict=True))
