"""Width seeds: new units behind the host, blended in by alpha, merged into the layer when kept."""

from __future__ import annotations

import copy

import pytest
import torch
from seed_lifecycle import S, grow, train_step_leaves_host_bitwise
from seed_lifecycle import grow_configured as _grow
from torch import nn

import esper
from esper.kasmina.host import CNNHost, MLPHost, MorphogeneticModel, TransformerHost
from esper.kasmina.width import WidthSeed, carry_optimizer_state
from esper.leyline import TaskConfig

HOSTS = {
    "cnn-first": (
        lambda: CNNHost(num_classes=5, n_blocks=3, base_channels=4, in_channels=1, first_block_slot=True),
        "block1",
    ),
    "cnn-middle": (
        lambda: CNNHost(num_classes=5, n_blocks=3, base_channels=4, in_channels=1),
        "block2",
    ),
    "cnn-last": (
        lambda: CNNHost(num_classes=5, n_blocks=3, base_channels=4, in_channels=1),
        "block3",
    ),
    "mlp-middle": (lambda: MLPHost(in_features=6, num_classes=3, hidden=8, n_layers=2), "layer1"),
    "mlp-last": (lambda: MLPHost(in_features=6, num_classes=3, hidden=8, n_layers=2), "layer2"),
    "transformer": (
        lambda: TransformerHost(
            vocab_size=11, n_embd=8, n_head=2, n_layer=2, block_size=6, dropout=0.0
        ),
        "layer1",
    ),
}


def _inputs(host: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if isinstance(host, CNNHost):
        return torch.randn(4, 1, 16, 16, generator=generator)
    if isinstance(host, MLPHost):
        return torch.randn(4, 6, generator=generator)
    return torch.randint(0, 11, (4, 6), generator=generator)


def _model(name: str, init: str = "net2wider", noise: float = 0.01, units: int | None = None):
    build, slot_id = HOSTS[name]
    torch.manual_seed(0)
    host = build()
    blueprint = {"net2wider": "widen", "zero": "widen_zero"}[init]
    options = ({"noise": noise} if init == "net2wider" else {}) | (
        {} if units is None else {"units": units}
    )
    config = TaskConfig(topology=host.topology, blueprint_kwargs={blueprint: options})
    model = MorphogeneticModel(host, task_config=config)
    return model, model.seed_slots[slot_id], _inputs(host)


@pytest.mark.parametrize("name", HOSTS)
def test_training_keeps_the_host_output_and_gradient_bitwise_while_the_new_units_learn(
    name: str,
) -> None:
    model, slot, x = _model(name)
    seed = train_step_leaves_host_bitwise(model, slot, x)
    assert isinstance(seed, WidthSeed)
    assert seed.weight.grad is not None and seed.weight.grad.abs().sum() > 0
    assert seed.out_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stage", [S.TRAINING, S.BLENDING, S.PROBATIONARY])
@pytest.mark.parametrize("name", HOSTS)
def test_alpha_forced_to_zero_is_the_host_bitwise_at_any_stage(name: str, stage) -> None:
    model, slot, x = _model(name, init="net2wider", noise=0.5)
    model.eval()
    expected = model(x)
    _grow(model, slot, stage)
    with slot.force_alpha(0.0):
        assert torch.equal(model(x), expected)


@pytest.mark.parametrize("name", HOSTS)
def test_blending_adds_alpha_times_the_new_units_contribution_to_the_consumer(name: str) -> None:
    model, slot, x = _model(name, init="zero")
    _grow(model, slot, S.BLENDING)
    with torch.no_grad():
        slot.seed.out_weight.normal_()  # a contribution worth seeing
    model.eval()
    outputs = []
    model.host.width_site(slot.slot_id).consumer.register_forward_hook(
        lambda m, a, out: outputs.append(out)
    )
    for alpha in (0.0, 1.0, 0.3):
        with slot.force_alpha(alpha):
            model(x)
    host, full, blended = outputs
    assert not torch.allclose(full, host)
    torch.testing.assert_close(blended, host + 0.3 * (full - host), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["net2wider", "zero"])
@pytest.mark.parametrize("name", HOSTS)
def test_a_fresh_seed_at_full_alpha_keeps_the_function(name: str, init: str) -> None:
    """Zero outgoing weights exactly; Net2Wider copies with no noise, to rounding."""
    model, slot, x = _model(name, init=init, noise=0.0, units=3)
    model.eval()
    expected = model(x)
    _grow(model, slot, S.GERMINATED)
    with slot.force_alpha(1.0):
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", HOSTS)
def test_fossilized_seed_is_merged_into_a_wider_layer_with_the_same_output(name: str) -> None:
    model, slot, x = _model(name, noise=0.3)
    host_params = model.host_param_count()
    site = model.host.width_site(slot.slot_id)
    width, consumer_in = site.units, site.consumer.weight.shape[1]
    _grow(model, slot, S.PROBATIONARY)
    model.train()
    for _ in range(2):  # the new norm's running statistics move away from the copied ones
        model(x)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    added = slot.seed.added_params()
    _grow(model, slot, S.FOSSILIZED)
    assert slot.seed is None and slot.state is None and len(slot.fossils) == 0
    assert not any(isinstance(m, WidthSeed) for m in model.modules())
    assert site.units == 2 * width and site.consumer.weight.shape[1] == consumer_in + width
    assert [(r.units_added, r.width) for r in slot.widenings] == [(width, 2 * width)]
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert model.host_param_count() == host_params
    assert model.seed_param_count() == added > 0
    assert not site.consumer._forward_hooks and not site.layer._forward_pre_hooks
    model.train()
    model(x).sum().backward()  # the wider model trains
    assert site.layer.weight.grad.shape == site.layer.weight.shape


@pytest.mark.parametrize("name", HOSTS)
def test_culled_seed_leaves_the_host_as_it_was(name: str) -> None:
    model, slot, x = _model(name)
    before = copy.deepcopy(model.state_dict())
    model.eval()
    expected = model(x)
    _grow(model, slot, S.BLENDING)
    slot.cull("test")
    assert slot.seed is None
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), expected)
    site = model.host.width_site(slot.slot_id)
    assert not site.consumer._forward_hooks and not site.layer._forward_pre_hooks


@pytest.mark.parametrize("name", ["cnn-middle", "mlp-last", "transformer"])
def test_checkpoint_of_a_merged_model_restores_its_width_and_outputs(name: str) -> None:
    model, slot, x = _model(name)
    _grow(model, slot, S.FOSSILIZED)
    _grow(model, slot, S.BLENDING)  # a second width seed, live, on top of the merged one
    model.eval()
    expected = model(x)
    saved = {key: s.lifecycle_state() for key, s in model.seed_slots.items()}
    weights = model.state_dict()
    fresh, _, _ = _model(name)
    for key, s in fresh.seed_slots.items():
        s.load_lifecycle_state(saved[key], host_module=fresh.host)
    fresh.load_state_dict(weights)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    assert fresh.seed_slots[slot.slot_id].channels == slot.channels
    assert fresh.seed_param_count() == model.seed_param_count()


def test_merge_carries_the_optimiser_state_over() -> None:
    model, slot, x = _model("mlp-middle")
    _grow(model, slot, S.PROBATIONARY)
    host_opt = torch.optim.SGD(model.host_parameters(), lr=0.1, momentum=0.9)
    seed_opt = torch.optim.SGD(slot.seed.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(2):
        model(x).square().mean().backward()
        host_opt.step()
        seed_opt.step()
    site = model.host.width_site(slot.slot_id)
    old = site.layer.weight
    old_momentum = host_opt.state[old]["momentum_buffer"].clone()
    seed_momentum = seed_opt.state[slot.seed.weight]["momentum_buffer"].clone()
    _grow(model, slot, S.FOSSILIZED)
    (merge,) = slot.drain_merges()
    carry_optimizer_state((host_opt, seed_opt), merge)
    new = site.layer.weight
    assert any(p is new for p in host_opt.param_groups[0]["params"])
    assert not any(p is old for p in host_opt.param_groups[0]["params"])
    carried = host_opt.state[new]["momentum_buffer"]
    assert torch.equal(carried, torch.cat([old_momentum, seed_momentum]))
    model(x).square().mean().backward()
    host_opt.step()  # the optimiser steps the wider parameters


def test_width_seed_where_it_cannot_widen_is_one_clear_error() -> None:
    model, slot, _ = _model("cnn-middle")
    with pytest.raises(ValueError, match="through the model"):
        slot.germinate("widen")  # no host to widen
    grow(slot, S.FOSSILIZED, "norm", host_module=model.host)
    with pytest.raises(ValueError, match="block2.*fossilized"):
        model.germinate("block2", "widen")
    with pytest.raises(ValueError, match="init"):
        WidthSeed(init="gradmax")
    grafted = esper.graft(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), ["0"], torch.randn(2, 4)
    )
    with pytest.raises(ValueError, match="slot '0'.*no layers Esper can widen"):
        grafted.germinate("0", "widen")
    assert not grafted.host[0]._forward_pre_hooks


def test_counterfactual_fast_path_measures_a_width_seed_as_the_naive_one() -> None:
    from esper.tolaria.trainer import validate_with_counterfactuals

    model, slot, x = _model("cnn-middle", init="zero")
    _grow(model, slot, S.BLENDING)
    slot.set_alpha(0.7)
    with torch.no_grad():
        slot.seed.out_weight.normal_()
    batches = [(x, torch.arange(4) % 5), (x.flip(0), torch.arange(4) % 3)]
    fast = validate_with_counterfactuals(model, batches)
    naive = validate_with_counterfactuals(model, batches, naive=True)
    assert fast.contributions == naive.contributions


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("cnn-first", ("block1", "block2")),
        ("cnn-first", ("block2", "block1")),
        ("cnn-middle", ("block2", "block3")),
        ("cnn-middle", ("block3", "block2")),
        ("mlp-middle", ("layer1", "layer2")),
        ("mlp-middle", ("layer2", "layer1")),
    ],
)
def test_neighbouring_width_seeds_merge_one_after_the_other(
    name: str, order: tuple[str, str]
) -> None:
    """A live seed whose layer or consumer a merge widened follows it (zero weights for the new
    units), in its optimiser too, and merges in its turn."""
    model, _, x = _model(name, noise=0.3)
    slots = [model.seed_slots[slot_id] for slot_id in order]
    for slot in slots:
        _grow(model, slot, S.PROBATIONARY)
    optimizer = torch.optim.SGD(
        [p for slot in slots for p in slot.seed.parameters()], lr=0.1, momentum=0.9
    )
    model.train()
    model(x).square().mean().backward()
    optimizer.step()
    for slot in slots:
        model.eval()
        with torch.no_grad():
            expected = model(x)
        _grow(model, slot, S.FOSSILIZED)
        for merge in slot.drain_merges():
            carry_optimizer_state((optimizer,), merge)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        live = [p for s in slots if s.seed is not None for p in s.seed.parameters()]
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert {id(p) for p in live} <= in_optimizer
        model.train()
        optimizer.zero_grad()
        model(
            x
        ).square().mean().backward()  # the survivor still trains, in step with the wider host
        optimizer.step()
    assert not any(isinstance(m, WidthSeed) for m in model.modules())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_merge_carries_every_per_parameter_state(optimizer: str) -> None:
    model, slot, x = _model("cnn-last")
    _grow(model, slot, S.PROBATIONARY)
    make = (
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        if optimizer == "sgd"
        else (lambda p: torch.optim.AdamW(p, lr=0.01))
    )
    host_opt, seed_opt = make(model.host_parameters()), make(list(slot.seed.parameters()))
    model.train()
    model(x).square().mean().backward()
    host_opt.step()
    seed_opt.step()
    site = model.host.width_site(slot.slot_id)
    old, seed_out = site.consumer.weight, slot.seed.out_weight
    old_state, seed_state = dict(host_opt.state[old]), dict(seed_opt.state[seed_out])
    _grow(model, slot, S.FOSSILIZED)
    (merge,) = slot.drain_merges()
    carry_optimizer_state((host_opt, seed_opt), merge)
    state = host_opt.state[site.consumer.weight]
    for key, value in old_state.items():
        if value.shape == old.shape:
            assert torch.equal(state[key], torch.cat([value, seed_state[key]], dim=1))
        else:
            assert torch.equal(state[key], value)  # AdamW's step


@pytest.mark.parametrize("name", ["cnn-middle", "mlp-last", "transformer"])
def test_export_is_the_merged_wider_network_without_the_live_seed(name: str) -> None:
    model, slot, x = _model(name)
    _grow(model, slot, S.FOSSILIZED)
    _grow(model, slot, S.BLENDING)  # live: left out of the export, as at alpha 0
    model.eval()
    with slot.force_alpha(0.0):
        expected = model(x)
    plain = model.export()
    plain.eval()
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, WidthSeed) for m in plain.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    assert (
        sum(p.numel() for p in plain.parameters())
        == model.host_param_count() + model.merged_param_count()
    )


def test_stacking_and_widening_a_transformer_layer_in_either_order_restores() -> None:
    """A stacked copy of a block is as wide as the block was when it was copied; a checkpoint
    rebuilds each slot's kept seeds in the order they were kept."""
    model, first, x = _model("transformer")
    second = model.seed_slots["layer2"]
    grow(first, S.FOSSILIZED, "stack", host_module=model.host)  # copies layer1 as it is
    _grow(model, first, S.FOSSILIZED)  # then widens layer1's MLP (the host's, not the copy's)
    _grow(model, second, S.FOSSILIZED)  # widens layer2's MLP
    grow(second, S.FOSSILIZED, "stack", host_module=model.host)  # then copies it, wide
    hidden = model.host.width_site("layer1").consumer.in_features
    assert [f.block.mlp[0].out_features for f in (*first.fossils, *second.fossils)] == [
        hidden // 2,
        hidden,
    ]
    model.eval()
    expected = model(x)
    saved = {key: s.lifecycle_state() for key, s in model.seed_slots.items()}
    fresh, _, _ = _model("transformer")
    for key, s in fresh.seed_slots.items():
        s.load_lifecycle_state(saved[key], host_module=fresh.host)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("name", list(HOSTS))
def test_the_static_arms_build_a_merged_width_freshly_initialised(name: str) -> None:
    """compare's static-final arms train the grown run's final network: merged widths included."""
    from esper.runtime.static_host import StaticSeedsHostFactory

    model, slot, x = _model(name)
    _grow(model, slot, S.FOSSILIZED)
    grown = model.export()
    width = slot.widenings[-1].width
    build, slot_id = HOSTS[name]
    torch.manual_seed(0)
    static = StaticSeedsHostFactory(lambda data: build(), (), {}, ((slot_id, width),))(None)
    assert sorted(p.shape for p in static.parameters()) == sorted(p.shape for p in grown.parameters())
    assert static(x).shape == grown(x).shape
    # Fresh: the widened layer is initialised as a new layer of that width, not from the grown one.
    site = static.width_site(slot_id)
    assert not torch.equal(site.layer.weight, grown.width_site(slot_id).layer.weight)
    assert site.layer.weight[: width // 2].std() > 0 and site.layer.weight[width // 2 :].std() > 0


@pytest.mark.parametrize("name", ["cnn-middle", "mlp-last", "transformer"])
def test_widen_half_adds_half_the_layers_units_and_keeps_the_function_when_merged(name: str) -> None:
    build, slot_id = HOSTS[name]
    torch.manual_seed(0)
    host = build()
    config = TaskConfig(topology=host.topology, blueprint_kwargs={"widen_half": {"noise": 0.0}})
    model = MorphogeneticModel(host, task_config=config)
    slot, x = model.seed_slots[slot_id], _inputs(host)
    width = host.width_site(slot_id).units
    model.eval()
    before = model(x)
    grow(slot, S.FOSSILIZED, "widen_half", host_module=model.host)
    assert host.width_site(slot_id).units == width + width // 2
    assert slot.widenings[-1].units_added == width // 2
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
