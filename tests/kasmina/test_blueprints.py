"""Blueprint registry and seed-module behaviour: shape, identity at init, training, causality."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from esper.kasmina.blueprints import BlueprintRegistry, BlueprintSpec
from esper.kasmina.blueprints.registry import TOPOLOGIES, feature_shape, infer_topology

# Eager FlexAttention on CPU warns that it is unfused; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

DIMS = {"cnn": 8, "transformer": 32, "mlp": 16}
ALL_BLUEPRINTS = [
    (topology, spec.name) for topology in TOPOLOGIES for spec in BlueprintRegistry.list_specs(topology)
]
# Seeds that start from the host's own layers (tests/kasmina/test_depth_seeds.py) are not zero
# branches: alone they are not the identity on arbitrary features.
BRANCH_BLUEPRINTS = [
    (topology, name) for topology, name in ALL_BLUEPRINTS if not BlueprintRegistry.get(topology, name).from_host
]
# Where a topology's features keep their channels: (B, C, H, W), (B, T, C), (B, C).
CHANNEL_SHAPES = {"cnn": lambda d: (1, d, 1, 1), "transformer": lambda d: (1, 1, d), "mlp": lambda d: (1, d)}


def _input(topology: str, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = {"cnn": (2, dim, 6, 6), "transformer": (2, 8, dim), "mlp": (16, dim)}[topology]
    return torch.randn(shape, generator=g)


def _randomize(module: nn.Module) -> nn.Module:
    """Make zero-initialised branches non-trivial so outputs depend on every weight."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module


def _seed(topology: str, name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return BlueprintRegistry.create(topology, name, DIMS[topology], **kwargs)


def test_builtin_blueprints_are_registered() -> None:
    cnn = {n for t, n in ALL_BLUEPRINTS if t == "cnn"}
    transformer = {n for t, n in ALL_BLUEPRINTS if t == "transformer"}
    mlp = {n for t, n in ALL_BLUEPRINTS if t == "mlp"}
    assert cnn == {
        "norm", "attention", "depthwise", "conv_light", "conv_heavy", "inverted_bottleneck",
        "residual_block", "deepen", "widen", "widen_half", "widen_zero",
    }  # fmt: skip
    assert transformer == {
        "norm", "lora", "attention", "mlp", "flex_attention", "block", "stack",
        "widen", "widen_half", "widen_zero", "widen_heads", "widen_heads_zero",
    }  # fmt: skip
    assert mlp == {"norm", "lowrank", "mlp", "deepen", "widen", "widen_half", "widen_zero"}


@pytest.mark.parametrize(("topology", "name"), BRANCH_BLUEPRINTS)
def test_fresh_seed_is_identity_and_preserves_shape(topology: str, name: str) -> None:
    seed = _seed(topology, name)
    x = _input(topology, DIMS[topology])
    with torch.no_grad():
        y = seed(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("topology", "name"), BRANCH_BLUEPRINTS)
def test_seed_trains_towards_target(topology: str, name: str) -> None:
    dim = DIMS[topology]
    seed = _seed(topology, name)
    x = _input(topology, dim)
    # A fixed random per-channel affine map: within reach (at least partly) of every seed.
    g = torch.Generator().manual_seed(2)
    channel = CHANNEL_SHAPES[topology](dim)
    scale = 1 + 0.5 * torch.randn(channel, generator=g)
    shift = 0.3 * torch.randn(channel, generator=g)
    target = x * scale + shift

    opt = torch.optim.Adam(seed.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(seed(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", ["attention", "flex_attention"])
@pytest.mark.parametrize("grad", [False, True])
def test_attention_seeds_never_see_the_future(name: str, grad: bool) -> None:
    seed = _randomize(_seed("transformer", name))
    x = _input("transformer", DIMS["transformer"])
    k = 3
    x_perturbed = x.clone()
    x_perturbed[:, k + 1 :] = torch.randn_like(x[:, k + 1 :])
    with torch.set_grad_enabled(grad):
        y, y_perturbed = seed(x), seed(x_perturbed)
    torch.testing.assert_close(y[:, : k + 1], y_perturbed[:, : k + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(y[:, k + 1 :], y_perturbed[:, k + 1 :])


def _causal_sdpa_reference(seed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    B, T, C = x.shape
    h = F.layer_norm(x, (C,), seed.ln.weight, seed.ln.bias)
    q, k, v = F.linear(h, seed.qkv.weight, seed.qkv.bias).split(C, dim=2)
    q, k, v = [t.view(B, T, seed.n_head, C // seed.n_head).transpose(1, 2) for t in (q, k, v)]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return x + F.linear(y.transpose(1, 2).reshape(B, T, C), seed.proj.weight, seed.proj.bias)


def test_flex_attention_matches_causal_sdpa_reference() -> None:
    seed = _randomize(_seed("transformer", "flex_attention"))
    x = _input("transformer", DIMS["transformer"])
    with torch.no_grad():
        reference = _causal_sdpa_reference(seed, x)
        flex_out = seed(x)  # forward-only: runs FlexAttention itself, even on CPU
    assert (x.shape[1], x.device) in seed._block_masks
    torch.testing.assert_close(flex_out, reference, atol=1e-5, rtol=0)

    train_out = seed(x)  # needs grad: SDPA fallback off-GPU, same math
    torch.testing.assert_close(train_out, flex_out, atol=1e-5, rtol=0)
    train_out.sum().backward()
    assert all(p.grad is not None for p in seed.parameters())


def test_flex_attention_caches_block_mask_per_length() -> None:
    seed = _seed("transformer", "flex_attention")
    dim = DIMS["transformer"]
    with torch.no_grad():
        seed(torch.randn(1, 8, dim))
        seed(torch.randn(2, 8, dim))
        seed(torch.randn(1, 12, dim))
    assert set(seed._block_masks) == {(8, torch.device("cpu")), (12, torch.device("cpu"))}
    assert seed.block_mask(8, torch.device("cpu")) is seed.block_mask(8, torch.device("cpu"))


def test_checkpointed_mlp_matches_plain_mlp(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _randomize(_seed("transformer", "mlp"))
    ckpt = _seed("transformer", "mlp", checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())

    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    x = _input("transformer", DIMS["transformer"])
    upstream = torch.randn_like(x)
    outputs, grads = [], []
    for seed in (plain, ckpt):
        seed.train()
        xi = x.clone().requires_grad_()
        y = seed(xi)
        (y * upstream).sum().backward()
        outputs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in seed.parameters()])

    assert calls == [False]  # only the checkpointed seed, non-reentrant
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
    for g_plain, g_ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(g_plain, g_ckpt, atol=1e-6, rtol=0)

    ckpt.eval()  # no backward in eval: no point recomputing
    with torch.no_grad():
        ckpt(x)
    assert calls == [False]


@pytest.mark.parametrize(
    ("topology", "name"),
    [
        ("cnn", "attention"),
        ("cnn", "conv_heavy"),
        ("transformer", "lora"),
        ("transformer", "attention"),
        ("transformer", "mlp"),
        ("mlp", "lowrank"),
        ("mlp", "mlp"),
    ],
)
def test_fullgraph_compile_matches_eager(topology: str, name: str) -> None:
    seed = _randomize(_seed(topology, name))
    x = _input(topology, DIMS[topology])
    compiled = torch.compile(seed, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), seed(x), atol=1e-6, rtol=0)


# --- registry ---------------------------------------------------------------


def test_create_passes_kwargs_through() -> None:
    dim = 64
    assert BlueprintRegistry.get("transformer", "lora").actual_param_count(dim) == 2 * dim * 8
    lora4 = BlueprintRegistry.create("transformer", "lora", dim, rank=4)
    assert sum(p.numel() for p in lora4.parameters()) == 2 * dim * 4
    seed = BlueprintRegistry.create("transformer", "attention", dim, n_head=2)
    assert seed.n_head == 2
    with pytest.raises(ValueError, match="does not divide"):
        BlueprintRegistry.create("transformer", "attention", dim, n_head=3)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_list_specs_sorted_by_cost_and_estimates_are_honest(topology: str) -> None:
    specs = BlueprintRegistry.list_specs(topology)
    estimates = [s.param_estimate for s in specs]
    assert estimates == sorted(estimates)
    assert specs[0].name == "norm"
    assert specs[-1].name == {"cnn": "residual_block", "transformer": "stack", "mlp": "mlp"}[topology]
    for spec in specs:  # estimates are the parameter counts at dim=64
        assert spec.topology == topology
        if not spec.name.startswith("widen"):  # its units are the host layer's: alone it has none yet
            assert spec.actual_param_count(64) == spec.param_estimate


def test_unknown_names_list_what_exists() -> None:
    with pytest.raises(ValueError, match="Unknown topology 'rnn'. Available: cnn, mlp, transformer"):
        BlueprintRegistry.list_specs("rnn")
    with pytest.raises(ValueError, match="Available: cnn, mlp, transformer"):
        BlueprintRegistry.create("rnn", "norm", 8)
    expected = "Unknown blueprint 'foo' for topology 'cnn'. Available: attention, conv_heavy, "
    with pytest.raises(ValueError, match=expected + "conv_light, deepen, depthwise, inverted_bottleneck"):
        BlueprintRegistry.create("cnn", "foo", 8)
    with pytest.raises(ValueError, match="Available: attention, block, flex_attention, lora, mlp"):
        BlueprintRegistry.unregister("transformer", "foo")


def test_register_unregister_round_trip() -> None:
    def scale(dim: int, init: float = 1.0) -> nn.Module:
        seed = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        nn.init.constant_(seed.weight, init)
        return seed

    decorated = BlueprintRegistry.register("test_scale", "cnn", 1, "per-channel scale")(scale)
    try:
        assert decorated is scale
        spec = BlueprintRegistry.get("cnn", "test_scale")
        assert spec == BlueprintSpec("test_scale", "cnn", scale, 1, "per-channel scale")
        assert BlueprintRegistry.list_specs("cnn")[0] is spec
        assert spec.actual_param_count(5) == 5
        seed = BlueprintRegistry.create("cnn", "test_scale", 4, init=2.0)
        assert torch.equal(seed.weight, torch.full((4, 1, 1, 1), 2.0))
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.param_estimate = 2  # type: ignore[misc]
        with pytest.raises(ValueError, match="already registered"):
            BlueprintRegistry.register("test_scale", "cnn", 1)(scale)
    finally:
        BlueprintRegistry.unregister("cnn", "test_scale")
    with pytest.raises(ValueError, match="Unknown blueprint 'test_scale'"):
        BlueprintRegistry.get("cnn", "test_scale")
    assert [t for t in ALL_BLUEPRINTS if t[0] == "cnn"] == [
        ("cnn", s.name) for s in BlueprintRegistry.list_specs("cnn")
    ]


def test_duplicate_builtin_registration_raises() -> None:
    with pytest.raises(ValueError, match="'mlp' already registered for topology 'transformer'"):
        BlueprintRegistry.register("mlp", "transformer", 1)(lambda dim: nn.Identity())
    assert BlueprintRegistry.get("transformer", "mlp").param_estimate == 33_216


def test_feature_layouts_round_trip() -> None:
    """A probe shape of each topology is read back as that topology with its channels."""
    assert feature_shape("cnn", 5) == (2, 5, 8, 8)
    assert feature_shape("transformer", 5) == (2, 8, 5)
    assert feature_shape("mlp", 5) == (2, 5)
    for topology in TOPOLOGIES:
        assert infer_topology(feature_shape(topology, 7)) == (topology, 7)
    assert infer_topology((2, 3, 4, 5, 6)) is None
    assert infer_topology((7,)) is None
