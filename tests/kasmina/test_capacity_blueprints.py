"""Seeds that add real capacity: exact identity at birth, shape kept, every weight learns, causal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage

CAPACITY = [("cnn", "inverted_bottleneck"), ("cnn", "residual_block"), ("transformer", "block")]


def _features(topology: str, dim: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (4, dim, 7, 7) if topology == "cnn" else (3, 10, dim)
    return torch.randn(shape, generator=g)


def _create(topology: str, name: str, dim: int = 16, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return BlueprintRegistry.create(topology, name, dim, **kwargs)


@pytest.mark.parametrize(("topology", "name"), CAPACITY)
@pytest.mark.parametrize("train", [False, True])
def test_identity_at_birth_exactly(topology: str, name: str, train: bool) -> None:
    seed = _create(topology, name).train(train)
    x = _features(topology)
    y = seed(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)  # bitwise: x + 0, whatever the branch computed


@pytest.mark.parametrize(
    ("topology", "host", "slot"),
    [
        ("cnn", lambda: CNNHost(num_classes=10, n_blocks=3, base_channels=8), "block2"),
        (
            "transformer",
            lambda: TransformerHost(20, 32, 2, 2, block_size=12, dropout=0.0),
            "layer1",
        ),
    ],
)
def test_planting_a_fresh_seed_leaves_the_host_function_unchanged(topology, host, slot) -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(host())
    x = torch.randn(2, 3, 16, 16) if topology == "cnn" else torch.randint(0, 20, (2, 12))
    model.eval()
    with torch.no_grad():
        before = model(x)
        name = "inverted_bottleneck" if topology == "cnn" else "block"
        model.germinate(slot, name)
        model.seed_slots[slot].step_epoch()  # GERMINATED -> TRAINING: the seed runs
        assert model.seed_slots[slot].stage == SeedStage.TRAINING
        # At full strength, as a blended seed would run: the output is the seed's alone.
        with model.seed_slots[slot].force_alpha(1.0):
            after = model(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize(("topology", "name"), CAPACITY)
def test_gradient_reaches_every_parameter_after_the_first_step(topology: str, name: str) -> None:
    seed = _create(topology, name)
    x = _features(topology)
    target = torch.randn_like(x)
    opt = torch.optim.SGD(seed.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        F.mse_loss(seed(x), target).backward()
        if step == 0:
            # Only the zero-initialised output layer(s) learn at first: the rest sit behind zeros.
            opt.step()
    silent = [n for n, p in seed.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reached {silent}"


def test_inverted_bottleneck_expansion_sets_the_inner_width() -> None:
    seed = _create("cnn", "inverted_bottleneck", dim=8, expansion=6)
    assert seed.expand.out_channels == seed.depthwise.groups == 48
    assert seed.project.in_channels == 48 and seed.project.out_channels == 8
    with pytest.raises(ValueError, match="expansion >= 1"):
        _create("cnn", "inverted_bottleneck", expansion=0)


def test_block_is_a_whole_pre_norm_gpt_layer() -> None:
    seed = _create("transformer", "block", dim=32, n_head=4, expansion=2)
    assert seed.attn.n_head == 4 and seed.mlp.fc1.out_features == 64
    # Two zero-initialised output projections, one per residual branch.
    assert not seed.attn.proj.weight.any() and not seed.mlp.fc2.weight.any()


@pytest.mark.parametrize("grad", [False, True])
def test_block_never_sees_the_future(grad: bool) -> None:
    seed = _create("transformer", "block", dim=32)
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_(0.0, 0.3)
    x = _features("transformer", 32)
    k = 4
    x_perturbed = x.clone()
    x_perturbed[:, k + 1 :] = torch.randn_like(x[:, k + 1 :])
    with torch.set_grad_enabled(grad):
        y, y_perturbed = seed(x), seed(x_perturbed)
    torch.testing.assert_close(y[:, : k + 1], y_perturbed[:, : k + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(y[:, k + 1 :], y_perturbed[:, k + 1 :])
