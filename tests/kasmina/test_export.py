"""`grown.export()`: the grown network as a plain model, outputs equal to the grown model's."""

from __future__ import annotations

import pytest
import torch
from seed_lifecycle import grow
from torch import nn

import esper
from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.kasmina.placement import holds_slot
from esper.leyline import SeedStage, TaskConfig

S = SeedStage


def _no_slots_left(plain: nn.Module) -> None:
    assert not any(holds_slot(m) or m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
    assert not any("slots" in name.split(".") for name, _ in plain.named_parameters())


def _live_seeds_off(model: esper.kasmina.host.SeededModel):
    import contextlib

    stack = contextlib.ExitStack()
    for slot in model.seed_slots.values():
        stack.enter_context(slot.force_alpha(0.0))
    return stack


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_export_builds_the_fossils_in_and_matches_the_grown_model(topology: str) -> None:
    torch.manual_seed(0)
    if topology == "cnn":
        host, slots, blueprints = CNNHost(n_blocks=3, base_channels=4, in_channels=1), ["block2", "block3"], ["conv_light", "deepen"]
        x = torch.randn(4, 1, 16, 16)
    else:
        host = TransformerHost(vocab_size=16, n_embd=32, n_head=4, n_layer=2, block_size=8, dropout=0.0)
        slots, blueprints = ["layer1", "layer2"], ["stack", "block"]
        x = torch.randint(0, 16, (3, 8))
    model = MorphogeneticModel(host, slots, task_config=TaskConfig(topology=topology, blending_epochs=2))
    for slot_id, blueprint in zip(slots, blueprints, strict=True):
        grow(model.seed_slots[slot_id], S.FOSSILIZED, blueprint, host_module=model.host)
        with torch.no_grad():  # a kept seed that learned something
            for p in model.seed_slots[slot_id].fossils[-1].parameters():
                p.add_(0.05 * torch.randn_like(p))
    grow(model.seed_slots[slots[0]], S.BLENDING, blueprints[0], host_module=model.host)  # live: left out
    model.eval()
    plain = model.export()
    _no_slots_left(plain)
    assert type(plain) is type(host)
    with torch.no_grad(), _live_seeds_off(model):
        expected = model(x)
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-5)
    # Independent of the run: training the export leaves the grown model alone.
    before = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Fossils count as the host's own parameters now.
    grown_params = model.host_param_count() + sum(p.numel() for s in model.seed_slots.values() for p in s.fossils.parameters())
    assert sum(p.numel() for p in plain.parameters()) == grown_params


def test_a_grafted_model_exports_as_the_users_model_with_fossils_built_in() -> None:
    torch.manual_seed(0)
    user = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 3))
    x = torch.randn(5, 6)
    grafted = esper.graft(user, ["1", "2", "2.1"], x)
    for target, blueprint in (("1", "deepen"), ("2.1", "lowrank"), ("2", "mlp")):
        grow(grafted.seed_slots[target], S.FOSSILIZED, blueprint, host_module=grafted.host)
        with torch.no_grad():
            for p in grafted.seed_slots[target].fossils[-1].parameters():
                p.add_(0.05 * torch.randn_like(p))
    plain = grafted.export()
    _no_slots_left(plain)
    assert isinstance(plain, nn.Sequential)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), grafted(x), rtol=0, atol=1e-5)


def test_a_model_with_a_live_seed_deep_copies_into_an_independent_lifecycle() -> None:
    import copy

    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(n_blocks=2, base_channels=4, in_channels=1), ["block2"])
    grow(model.seed_slots["block2"], S.BLENDING, "norm", host_module=model.host)
    twin = copy.deepcopy(model)
    slot, twin_slot = model.seed_slots["block2"], twin.seed_slots["block2"]
    assert twin_slot.state.stage == S.BLENDING and twin_slot.alpha == slot.alpha
    twin_slot.cull("only the copy")
    assert twin_slot.state.stage == S.CULLED and twin_slot.seed is None
    assert slot.state.stage == S.BLENDING and slot.seed is not None
