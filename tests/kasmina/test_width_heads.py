"""Attention-head width seeds: new heads behind a transformer layer, blended in by alpha, merged
into its attention (wider q|k|v and output projection, more heads) when kept."""

from __future__ import annotations

import copy

import pytest
import torch
from seed_lifecycle import S, grow, train_step_leaves_host_bitwise
from seed_lifecycle import grow_configured as _grow

from esper.kasmina.host import MLPHost, MorphogeneticModel, TransformerHost
from esper.kasmina.width import WidthSeed, carry_optimizer_state, join, widen_static
from esper.leyline import TaskConfig
from esper.runtime.static_host import StaticSeedsHostFactory
from esper.tolaria.flops import FlopMeter

BLUEPRINTS = {"net2wider": "widen_heads", "zero": "widen_heads_zero"}
HEAD_DIM = 4


def _host() -> TransformerHost:
    return TransformerHost(vocab_size=11, n_embd=8, n_head=2, n_layer=2, block_size=6, dropout=0.0)


def _model(init: str = "net2wider", noise: float = 0.01, units: int | None = None):
    torch.manual_seed(0)
    host = _host()
    blueprint = BLUEPRINTS[init]
    options = ({"noise": noise} if init == "net2wider" else {}) | ({} if units is None else {"units": units})
    config = TaskConfig(topology="transformer", blueprint_kwargs={blueprint: options})
    model = MorphogeneticModel(host, task_config=config)
    x = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(1))
    return model, model.seed_slots["layer1"], x


def _attn(model):
    return model.host.layers[0].attn


def _randomise(seed: WidthSeed) -> None:
    """Weights away from their initialisation (as training moves them), so a merge has work to do."""
    with torch.no_grad():
        for param in (seed.weight, seed.bias, seed.out_weight):
            param.add_(0.3 * torch.randn_like(param))


def test_training_keeps_the_host_output_and_gradient_bitwise_while_the_new_heads_learn() -> None:
    model, slot, x = _model()
    seed = train_step_leaves_host_bitwise(model, slot, x)
    assert isinstance(seed, WidthSeed) and seed.kind == "heads" and seed.units_added == 2
    for param in (seed.weight, seed.bias, seed.out_weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("stage", [S.TRAINING, S.BLENDING, S.PROBATIONARY])
def test_the_counterfactual_is_the_host_without_the_new_heads_bitwise(stage) -> None:
    model, slot, x = _model(noise=0.5)
    model.eval()
    expected = model(x)
    _grow(model, slot, stage)
    _randomise(slot.seed)
    with slot.force_alpha(0.0):
        assert torch.equal(model(x), expected)


def test_blending_scales_the_new_heads_contribution_to_the_output_projection() -> None:
    model, slot, x = _model(init="zero")
    _grow(model, slot, S.BLENDING)
    _randomise(slot.seed)
    model.eval()
    outputs = []
    _attn(model).proj.register_forward_hook(lambda m, a, out: outputs.append(out))
    for alpha in (0.0, 1.0, 0.3):
        with slot.force_alpha(alpha):
            model(x)
    host, full, blended = outputs
    assert not torch.allclose(full, host)
    torch.testing.assert_close(blended, host + 0.3 * (full - host), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("init", ["net2wider", "zero"])
def test_fresh_heads_at_full_alpha_and_merged_keep_the_function(init: str) -> None:
    """Zero outgoing weights, and Net2Wider copies with no noise (their projection columns
    split with the copied head), compute what the host did: live at alpha 1, and merged."""
    model, slot, x = _model(init=init, noise=0.0, units=3)
    model.eval()
    expected = model(x)
    _grow(model, slot, S.GERMINATED)
    with slot.force_alpha(1.0):
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    _grow(model, slot, S.FOSSILIZED)
    assert _attn(model).n_head == 5
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["net2wider", "zero"])
def test_fossilized_heads_are_merged_into_a_wider_attention_with_the_same_output(init: str) -> None:
    model, slot, x = _model(init=init, noise=0.3)
    attn = _attn(model)
    host_params = model.host_param_count()
    q, k, v = (t.clone() for t in attn.qkv.weight.detach().split(8))
    _grow(model, slot, S.PROBATIONARY)
    _randomise(slot.seed)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    seed = slot.seed
    new_q, new_k, new_v = (t.clone() for t in seed.weight.detach().split(8))
    added = seed.added_params()
    _grow(model, slot, S.FOSSILIZED)
    assert not any(isinstance(m, WidthSeed) for m in model.modules())
    assert attn.n_head == 4 and attn.head_dim == HEAD_DIM
    assert (attn.qkv.in_features, attn.qkv.out_features, attn.proj.in_features, attn.proj.out_features) == (8, 48, 16, 8)
    # Each of q, k, v holds the old heads' rows, then the new heads'.
    for old, new, merged in zip((q, k, v), (new_q, new_k, new_v), attn.qkv.weight.detach().split(16), strict=True):
        assert torch.equal(merged, torch.cat([old, new]))
    assert [(r.kind, r.units_added, r.width) for r in slot.widenings] == [("heads", 2, 4)]
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert model.host_param_count() == host_params and model.seed_param_count() == added > 0
    assert not attn.proj._forward_hooks and not attn.qkv._forward_pre_hooks
    model.train()
    model(x).sum().backward()  # the wider attention trains
    assert attn.qkv.weight.grad.shape == attn.qkv.weight.shape


def test_culled_heads_leave_the_host_as_it_was() -> None:
    model, slot, x = _model()
    before = copy.deepcopy(model.state_dict())
    model.eval()
    expected = model(x)
    _grow(model, slot, S.BLENDING)
    slot.cull("test")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), expected)
    attn = _attn(model)
    assert attn.n_head == 2 and not attn.proj._forward_hooks and not attn.qkv._forward_pre_hooks


def test_a_checkpoint_with_merged_heads_restores_them_before_the_weights_load() -> None:
    model, slot, x = _model()
    _grow(model, slot, S.FOSSILIZED)
    _grow(model, slot, S.BLENDING)  # a second head seed, live, on the wider attention
    _randomise(slot.seed)
    model.eval()
    expected = model(x)
    saved = {key: s.lifecycle_state() for key, s in model.seed_slots.items()}
    weights = model.state_dict()
    fresh, _, _ = _model()
    for key, s in fresh.seed_slots.items():
        s.load_lifecycle_state(saved[key], host_module=fresh.host)
    fresh.load_state_dict(weights)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    assert _attn(fresh).n_head == 4 and fresh.seed_slots["layer1"].seed.units_added == 4
    assert fresh.seed_param_count() == model.seed_param_count()


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_merge_carries_the_optimiser_state_in_the_q_k_v_layout(name: str) -> None:
    model, slot, x = _model()
    attn = _attn(model)
    old = attn.qkv.weight
    _grow(model, slot, S.PROBATIONARY)
    seed = slot.seed
    options = {"momentum": 0.9} if name == "SGD" else {}
    host_opt = getattr(torch.optim, name)(model.host_parameters(), lr=0.1, **options)
    seed_opt = getattr(torch.optim, name)(seed.parameters(), lr=0.1, **options)
    model.train()
    model(x).square().mean().backward()
    host_opt.step()
    seed_opt.step()
    old_state = {k: v.clone() for k, v in host_opt.state[old].items()}
    seed_state = {k: v.clone() for k, v in seed_opt.state[seed.weight].items()}
    _grow(model, slot, S.FOSSILIZED)
    (merge,) = slot.drain_merges()
    carry_optimizer_state((host_opt, seed_opt), merge)
    state = host_opt.state[attn.qkv.weight]
    for key, value in old_state.items():
        if value.shape == old.shape:  # momentum, moments: the q, k, v blocks each grew
            assert torch.equal(state[key], join(value, seed_state[key], 0, 3))
        else:
            assert torch.equal(state[key], value)  # AdamW's step
    host_opt.step()  # the optimiser steps the wider parameters


def test_export_is_the_wider_attention_as_plain_layers() -> None:
    model, slot, x = _model()
    _grow(model, slot, S.FOSSILIZED)
    _grow(model, slot, S.BLENDING)  # live: left out of the export, as at alpha 0
    model.eval()
    with slot.force_alpha(0.0):
        expected = model(x)
    plain = model.export()
    plain.eval()
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    assert plain.layers[0].attn.n_head == 4
    # As `esper export` writes it: a torch.export program, any batch and sequence length.
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=6)
    program = torch.export.export(plain, (x,), dynamic_shapes=({0: batch, 1: tokens},)).module()
    torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=1e-5)
    assert program(x[:1, :3]).shape == (1, 3, 11)


def test_the_static_arms_build_the_merged_heads_freshly_initialised() -> None:
    model, slot, x = _model()
    _grow(model, slot, S.FOSSILIZED)
    grown = model.export()
    torch.manual_seed(0)
    static = StaticSeedsHostFactory(lambda data: _host(), (), {}, (("heads@layer1", 4),))(None)
    assert sorted(p.shape for p in static.parameters()) == sorted(p.shape for p in grown.parameters())
    assert static.layers[0].attn.n_head == 4 and static(x).shape == grown(x).shape
    new_rows = static.layers[0].attn.qkv.weight[8:16]  # the q rows of the new heads: fresh, GPT's init
    assert not torch.equal(new_rows, grown.layers[0].attn.qkv.weight[8:16])
    assert 0.01 < new_rows.std() < 0.03


def test_a_host_without_heads_refuses_them_in_one_line() -> None:
    host = MLPHost(in_features=6, num_classes=3, hidden=8, n_layers=2)
    with pytest.raises(ValueError, match="MLPHost has no heads to widen"):
        widen_static(host, "layer1", 16, "heads")


def test_stacking_a_layer_with_merged_heads_copies_the_wider_attention() -> None:
    model, slot, _ = _model()
    _grow(model, slot, S.FOSSILIZED)
    grow(slot, S.GERMINATED, "stack", host_module=model.host)
    copied, source = slot.seed.block, model.host.layers[0]
    assert copied.attn.n_head == source.attn.n_head == 4
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), source.state_dict().values(), strict=True))
    h = torch.randn(2, 6, 8)
    with slot.force_alpha(0.0):  # the host's layer, without the slot's seed after it
        torch.testing.assert_close(copied(h), source(h))


def test_a_live_head_seed_is_priced_and_the_merged_attention_costs_more() -> None:
    model, slot, x = _model()
    meter = FlopMeter(model, (x, torch.randint(0, 11, (4, 6))))
    bare = meter.profile()
    model.germinate("layer1", "widen_heads")
    cost = meter.seed_cost("layer1", "widen_heads")
    assert cost.params == slot.seed_param_count() and cost.training > cost.inference > 0
    _grow(model, slot, S.FOSSILIZED)
    assert meter.profile().inference > bare.inference


@pytest.mark.parametrize("blueprint", ["widen_heads_zero", "widen_zero"])
def test_the_fast_counterfactual_switches_a_width_seed_inside_the_layer_off(blueprint: str) -> None:
    """A transformer's width seeds act inside the layer before their slot: the fast path
    resumes at that layer (not after it, where the seed's output is already in), so it
    measures what switching the seed off does, as the naive pass does, and prices that pass."""
    from esper.tolaria.flops import flop_counter
    from esper.tolaria.trainer import validate_with_counterfactuals

    model, slot, x = _model()
    grow(slot, S.BLENDING, blueprint, host_module=model.host)
    slot.set_alpha(0.7)
    with torch.no_grad():
        slot.seed.out_weight.normal_()
    targets = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(2))
    batches = [(x, targets), (x.flip(0), targets)]
    fast = validate_with_counterfactuals(model, batches)
    naive = validate_with_counterfactuals(model, batches, naive=True)
    assert fast.contributions == naive.contributions and fast.contributions["layer1"] != 0
    host = model.host
    assert host.resume_stage("layer1") == host.stage_index("layer1")
    profile = FlopMeter(model, batches[0]).profile()
    # Counted on meta tensors, where attention runs as matmuls the counter sees (CPU's fused
    # kernel is invisible to it), as the meter counts.
    meta = copy.deepcopy(model).to("meta").eval()
    host, taps = meta.host, dict.fromkeys(["layer1"])
    with torch.no_grad():
        host.run(host.stem(x.to("meta")), taps=taps)
        with meta.seed_slots["layer1"].force_alpha(0.0), flop_counter() as counter:
            host.run(taps["layer1"], host.resume_stage("layer1"))
    assert profile.counterfactual_fast == {"layer1": counter.get_total_flops() / 4}
