"""Hosts with injection points, compile-friendliness, and MorphogeneticModel with several slots."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from seed_lifecycle import grow
from torch import nn

from esper.kasmina.host import CNNHost, MLPHost, MorphogeneticModel, TransformerHost
from esper.kasmina.slot import QualityGates, SeedSlot
from esper.leyline import SeedStage

VOCAB = 23


def _randomize(module: nn.Module, seed: int = 1, std: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tokens(batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def _small_transformer(**kwargs) -> TransformerHost:
    torch.manual_seed(0)
    options = {"vocab_size": VOCAB, "n_embd": 16, "n_head": 2, "n_layer": 2, "block_size": 16}
    options.update(kwargs)
    return TransformerHost(**options)


class Recorder(nn.Module):
    """A stand-in slot that records the shape it sees and passes features through."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(x.shape)
        return x


# ---------------------------------------------------------------- CNNHost
def test_cnn_host_output_shape() -> None:
    torch.manual_seed(0)
    host = CNNHost()
    assert host(_images()).shape == (2, 10)
    host = CNNHost(num_classes=7, n_blocks=2, base_channels=4)
    assert host(_images(3, 16)).shape == (3, 7)


def test_cnn_host_slot_keys_and_injection_points() -> None:
    host = CNNHost(n_blocks=3, base_channels=8)
    # The tuple of injection-point keys in trunk order: _slot_keys[0] is the first slot's key.
    assert host._slot_keys == ("block2", "block3") == tuple(host.injection_points)
    assert isinstance(host.injection_points, dict)
    # A slot after every block but the first, unless asked for (a width seed widens the first conv there).
    assert len(host.injection_points) == 2
    wide_open = CNNHost(n_blocks=3, base_channels=8, first_block_slot=True)
    assert wide_open._slot_keys == ("block1", "block2", "block3") == tuple(wide_open.injection_points)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in host.injection_points.items())
    # Each injection point reports the channel count of the features seen there.
    recorders = {key: Recorder() for key in host.injection_points}
    for key, rec in recorders.items():
        host.register_slot(key, rec)
    host(_images(2, 16))
    for key, rec in recorders.items():
        assert len(rec.shapes) == 1
        assert rec.shapes[0][1] == host.injection_points[key]
    # The points follow the blocks: channels double after each one.
    assert sorted(host.injection_points.values()) == [16, 32]


def test_cnn_host_forward_does_no_string_formatting() -> None:
    source = inspect.getsource(CNNHost.forward)
    assert 'f"' not in source and "f'" not in source and ".format(" not in source


def test_cnn_host_unknown_slot_raises() -> None:
    host = CNNHost(n_blocks=2, base_channels=4)
    with pytest.raises(ValueError, match="nowhere"):
        host.register_slot("nowhere", Recorder())
    with pytest.raises(ValueError):
        host.unregister_slot(next(iter(host.injection_points)))  # nothing registered there


def test_register_and_unregister_slot_changes_forward() -> None:
    torch.manual_seed(0)
    host = CNNHost(n_blocks=2, base_channels=4).eval()
    x = _images(2, 16)
    plain = host(x)

    class Zero(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(h)

    key = next(iter(host.injection_points))
    host.register_slot(key, Zero())
    assert not torch.allclose(host(x), plain)
    host.unregister_slot(key)
    assert torch.equal(host(x), plain)


def test_cnn_host_compiles_fullgraph_eager_backend() -> None:
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=3, base_channels=8).eval()
    x = _images()
    compiled = torch.compile(host, fullgraph=True, backend="eager")
    out = compiled(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, host(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_cnn_host_compiles_with_inductor() -> None:
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=3).eval()
    x = _images()
    compiled = torch.compile(host, fullgraph=True)
    with torch.no_grad():
        out = compiled(x)
        expected = host(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- TransformerHost
def test_transformer_host_output_shape() -> None:
    host = _small_transformer()
    assert host(_tokens()).shape == (2, 16, VOCAB)
    assert host(_tokens(3, 5)).shape == (3, 5, VOCAB)


def test_transformer_host_injection_points() -> None:
    host = _small_transformer(n_layer=3)
    assert host._slot_keys == ("layer1", "layer2", "layer3")
    assert len(host.injection_points) == 3  # a slot after every layer
    assert set(host.injection_points.values()) == {16}
    recorders = {key: Recorder() for key in host.injection_points}
    for key, rec in recorders.items():
        host.register_slot(key, rec)
    host(_tokens(2, 7))
    for rec in recorders.values():
        assert rec.shapes == [torch.Size((2, 7, 16))]


def test_transformer_host_rejects_long_sequences() -> None:
    host = _small_transformer(block_size=8)
    with pytest.raises(ValueError, match=r"Sequence length 9 exceeds block_size 8"):
        host(_tokens(2, 9))
    assert host(_tokens(2, 8)).shape == (2, 8, VOCAB)  # exactly block_size is fine


def test_transformer_host_is_causal() -> None:
    host = _small_transformer().eval()
    a = _tokens(1, 12)
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(host(a)[:, :8], host(b)[:, :8])


def test_transformer_host_compiles_fullgraph_eager_backend() -> None:
    host = _small_transformer().eval()
    x = _tokens()
    compiled = torch.compile(host, fullgraph=True, backend="eager")
    out = compiled(x)
    assert out.shape == (2, 16, VOCAB)
    torch.testing.assert_close(out, host(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- MLPHost
@pytest.mark.parametrize("n_layer", [1, 5])
def test_transformer_host_starts_at_the_uniform_loss(n_layer: int) -> None:
    """GPT-2's init (nanoGPT): a fresh LM predicts near-uniformly, so its first loss is ln(vocab).

    PyTorch's default init (a tied N(0, 1) embedding) started this host at ~43 nats.
    """
    vocab = 96
    torch.manual_seed(0)
    host = TransformerHost(vocab, n_embd=64, n_head=4, n_layer=n_layer, block_size=32, dropout=0.0)
    tokens, targets = torch.randint(0, vocab, (2, 8, 32))
    with torch.no_grad():
        loss = nn.functional.cross_entropy(host(tokens).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.1


def test_transformer_host_scales_residual_projections_by_depth() -> None:
    """Each layer's writes into the residual stream start smaller the more layers add up."""
    torch.manual_seed(0)
    stds = {}
    for n_layer in (1, 8):
        host = TransformerHost(64, n_embd=128, n_head=4, n_layer=n_layer, block_size=8)
        stds[n_layer] = host.layers[0].attn.proj.weight.std().item(), host.layers[0].mlp[2].weight.std().item()
        assert host.layers[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for shallow, deep in zip(stds[1], stds[8], strict=True):
        assert shallow == pytest.approx(0.02 / math.sqrt(2), rel=0.05)
        assert deep == pytest.approx(0.02 / 4, rel=0.05)


def test_mlp_host_shapes_and_injection_points() -> None:
    torch.manual_seed(0)
    host = MLPHost(in_features=12, num_classes=3, hidden=8, n_layers=3)
    assert host.topology == "mlp"
    assert host._slot_keys == ("layer1", "layer2", "layer3")
    assert host.injection_points == {"layer1": 8, "layer2": 8, "layer3": 8}
    recorders = {key: Recorder() for key in host.injection_points}
    for key, rec in recorders.items():
        host.register_slot(key, rec)
    x = torch.randn(5, 12)
    assert host(x).shape == (5, 3)
    assert all(rec.shapes == [torch.Size((5, 8))] for rec in recorders.values())
    with pytest.raises(ValueError, match="n_layers"):
        MLPHost(in_features=4, n_layers=0)


def test_mlp_host_compiles_fullgraph_eager_backend() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(MLPHost(in_features=12, num_classes=3, hidden=8))
    model.germinate("layer2", "mlp")
    model.seed_slots["layer2"].step_epoch()  # -> TRAINING
    x = torch.randn(4, 12)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the staged trunk
# Gates that let a seed through on schedule: these tests are about mechanics, not judgement.
OPEN_GATES = QualityGates(
    min_training_improvement=-1.0,
    min_training_epochs=0,
    min_seed_gradient_ratio=0.0,
    min_shadowing_epochs=0,
    min_contribution=-1.0,
)


def _blended(model: MorphogeneticModel, key: str, alpha: float, seed: int) -> SeedSlot:
    """Germinate a random-weight seed at `key` and walk it through the lifecycle to BLENDING."""
    model.germinate(key, "conv_light")
    slot = model.seed_slots[key]
    _randomize(slot.seed, seed=seed)
    slot.step_epoch()  # GERMINATED -> TRAINING
    slot.step_epoch()  # TRAINING -> BLENDING (G2 open)
    assert slot.stage == SeedStage.BLENDING
    slot.set_alpha(alpha)
    return slot


def _open_cnn_model() -> MorphogeneticModel:
    torch.manual_seed(0)
    return MorphogeneticModel(CNNHost(num_classes=5, n_blocks=3, base_channels=4), gates=OPEN_GATES)


def test_run_taps_record_the_features_entering_a_slot() -> None:
    model = _open_cnn_model().eval()
    host = model.host
    first = host._slot_keys[0]
    slots = [_blended(model, key, 0.5, seed=30 + i) for i, key in enumerate(host._slot_keys)]
    x = _images(2, 16)
    taps = dict.fromkeys([first])
    with torch.no_grad():
        assert torch.equal(host.run(host.stem(x), taps=taps), model(x))  # recording changes nothing
        stage_input = host.trunk[0](host.stem(x))
        # The tap holds the stage's own output, before the slot acts on it ...
        assert torch.equal(taps[first], host.trunk[1].forward(stage_input))
        assert not torch.equal(taps[first], host.trunk[1](stage_input))  # the call applies the slot
        # ... so resuming after the stage gives the output with that slot passing its input through.
        with slots[0].force_alpha(0.0):
            without_first = model(x)
        assert torch.equal(host.run(taps[first], host.stage_index(first) + 1), without_first)
    assert [len(block._forward_hooks) for block in host.trunk] == [0, 1, 1]  # recorders removed


def test_deepcopy_gives_independent_slots() -> None:
    model = _open_cnn_model().eval()
    key = model.host._slot_keys[0]
    clone = copy.deepcopy(model)
    _blended(model, key, 1.0, seed=4)
    x = _images(2, 16)
    assert clone.seed_slots[key].state is None
    assert not torch.equal(model(x), clone(x))  # the clone's trunk runs the clone's (empty) slot
    clone.host.unregister_slot(key)
    assert len(model.host.injection_module(key)._forward_hooks) == 1  # the original keeps its own
    assert len(clone.host.injection_module(key)._forward_hooks) == 0


# ---------------------------------------------------------------- MorphogeneticModel
def test_model_needs_a_host_and_points_to_graft() -> None:
    with pytest.raises(TypeError, match=r"Sequential.*esper\.graft\(model, targets, example_input\)"):
        MorphogeneticModel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


def _cnn_model(slot_ids=None) -> MorphogeneticModel:
    torch.manual_seed(0)
    return MorphogeneticModel(CNNHost(num_classes=5, n_blocks=3, base_channels=4), slot_ids)


def test_model_has_one_slot_per_point() -> None:
    model = _cnn_model()
    host = model.host
    assert set(model.seed_slots) == set(host.injection_points)
    for key, slot in model.seed_slots.items():
        assert isinstance(slot, SeedSlot)
        assert slot.slot_id == key
        assert slot.channels == host.injection_points[key]
    only = _cnn_model([next(iter(CNNHost(n_blocks=3, base_channels=4).injection_points))])
    assert len(only.seed_slots) == 1


def test_model_unknown_slot_raises() -> None:
    with pytest.raises(ValueError, match="nowhere"):
        _cnn_model(["nowhere"])


def test_model_germinate_and_parameter_split() -> None:
    model = _cnn_model()
    keys = list(model.seed_slots)
    assert len(keys) == 2
    assert model.seed_parameters() == []
    host_ids = {id(p) for p in model.host_parameters()}
    assert host_ids == {id(p) for p in model.parameters()}

    state_a = model.germinate(keys[0], "conv_light", "seed-a")
    state_b = model.germinate(keys[1], "norm", "seed-b")
    assert state_a.stage == SeedStage.GERMINATED and state_a.slot_id == keys[0]
    assert state_b.seed_id == "seed-b" and state_b.blueprint_id == "norm"
    assert model.seed_slots[keys[0]].seed is not None

    host_params = model.host_parameters()
    seed_params = model.seed_parameters()
    host_ids = {id(p) for p in host_params}
    seed_ids = {id(p) for p in seed_params}
    all_ids = {id(p) for p in model.parameters()}
    assert seed_ids and host_ids
    assert host_ids.isdisjoint(seed_ids)
    assert host_ids | seed_ids == all_ids
    assert len(host_params) == len(host_ids) and len(seed_params) == len(seed_ids)
    per_slot = [{id(p) for p in model.seed_parameters(k)} for k in keys]
    assert per_slot[0] | per_slot[1] == seed_ids and per_slot[0].isdisjoint(per_slot[1])
    assert per_slot[0] == {id(p) for p in model.seed_slots[keys[0]].seed.parameters()}
    assert model.seed_param_count() == sum(p.numel() for p in seed_params)
    assert model.host_param_count() == sum(p.numel() for p in host_params)


def test_model_transformer_parameter_split_with_tied_weights() -> None:
    model = MorphogeneticModel(_small_transformer())
    keys = list(model.seed_slots)
    model.germinate(keys[0], "lora")
    model.germinate(keys[1], "mlp")
    host_ids = {id(p) for p in model.host_parameters()}
    seed_ids = {id(p) for p in model.seed_parameters()}
    assert host_ids.isdisjoint(seed_ids)
    assert host_ids | seed_ids == {id(p) for p in model.parameters()}


def test_model_germinated_seed_in_the_incubator_leaves_output_unchanged() -> None:
    model = _cnn_model().eval()
    x = _images(2, 16)
    before = model(x).detach()
    key = next(iter(model.seed_slots))
    slot = model.seed_slots[key]
    grow(slot, SeedStage.TRAINING, "conv_light", host_module=model.host)
    _randomize(slot.seed)
    assert torch.equal(model(x), before)


def test_model_with_training_and_blending_seeds_compiles() -> None:
    model = _cnn_model()
    k_train, k_blend = list(model.seed_slots)
    grow(model.seed_slots[k_train], SeedStage.TRAINING, "conv_light", host_module=model.host)
    grow(model.seed_slots[k_blend], SeedStage.BLENDING, "depthwise", host_module=model.host)
    for i, key in enumerate((k_train, k_blend)):
        _randomize(model.seed_slots[key].seed, seed=10 + i)
    model.seed_slots[k_blend].state.alpha = 0.4
    model.eval()
    x = _images(2, 16)
    eager = model(x)
    with model.seed_slots[k_blend].force_alpha(0.0):
        host_only = model(x)
    assert not torch.allclose(eager, host_only)  # the blending seed really contributes

    compiled = torch.compile(model, fullgraph=True, backend="eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    # Gradients flow through the compiled graph to both seeds and the host.
    out.sum().backward()
    for key in (k_train, k_blend):
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0
            for p in model.seed_slots[key].seed.parameters()
        )
    assert any(p.grad is not None for p in model.host_parameters())


def test_compiled_model_honours_later_state_changes() -> None:
    model = _cnn_model().eval()
    key = list(model.seed_slots)[-1]
    slot = model.seed_slots[key]
    grow(slot, SeedStage.TRAINING, "conv_light", host_module=model.host)
    _randomize(slot.seed, seed=3)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = _images(2, 16)
    outputs = []
    for change in ("incubator", "blending", "alpha", "force_alpha", "cull"):
        if change == "blending":
            grow(slot, SeedStage.BLENDING)
            slot.state.alpha = 0.2
        elif change == "alpha":
            slot.state.alpha = 0.7
        elif change == "cull":
            assert slot.cull()
        if change == "force_alpha":
            with slot.force_alpha(0.0):
                got, expected = compiled(x), model(x)
        else:
            got, expected = compiled(x), model(x)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=change)
        outputs.append(expected.detach())
    assert torch.equal(outputs[0], outputs[3]) and torch.equal(outputs[0], outputs[4])  # the host's
    assert not torch.allclose(outputs[1], outputs[2])  # alpha 0.7 differs from 0.2
    assert not torch.allclose(outputs[0], outputs[2])  # and from the host


def test_model_gradient_ratio_uses_only_host_parameters() -> None:
    model = _cnn_model()
    keys = list(model.seed_slots)
    for i, key in enumerate(keys):
        slot = model.seed_slots[key]
        grow(slot, SeedStage.TRAINING, "conv_light", host_module=model.host)
        _randomize(slot.seed, seed=20 + i)
    model(_images(2, 16)).pow(2).sum().backward()
    host_ref = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in model.host_parameters()])
    )
    for key in keys:
        slot = model.seed_slots[key]
        seed_ref = torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in slot.seed.parameters()])
        )
        host_norm, seed_norm = slot.record_gradient_norms()
        assert seed_norm == pytest.approx(float(seed_ref), rel=1e-5)
        assert host_norm == pytest.approx(float(host_ref), rel=1e-5), key
