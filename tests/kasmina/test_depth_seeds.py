"""Depth seeds that start from the host: `stack` copies the trained block below, `deepen`
inserts an identity layer. Identity at alpha 0, the full new layer at alpha 1."""

from __future__ import annotations

import json

import pytest
import torch
from seed_lifecycle import grow

from esper.kasmina.blueprints.depth import StackedBlockSeed
from esper.kasmina.host import CNNHost, MLPHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage, TaskConfig

S = SeedStage


def _lm(dropout: float = 0.0) -> MorphogeneticModel:
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=32, n_embd=32, n_head=4, n_layer=2, block_size=16, dropout=dropout)
    return MorphogeneticModel(host, ["layer1"], task_config=TaskConfig(topology="transformer", blending_epochs=2))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))


def test_a_stacked_block_is_a_copy_of_the_trained_block_below() -> None:
    model = _lm()
    layer1 = model.host.layers[0]
    with torch.no_grad():  # "trained": weights the init would never give
        for p in layer1.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.germinate("layer1", "stack")
    seed = model.seed_slots["layer1"].seed
    assert isinstance(seed, StackedBlockSeed)
    # The host's head count (4), not the blueprint's default at 32 wide (2): it is not in the weights.
    assert seed.block.attn.n_head == layer1.attn.n_head == 4
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(seed(x), layer1(x), rtol=0, atol=0)
    # A copy, not the same tensors: training the copy leaves the host's layer alone.
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(seed.parameters(), layer1.parameters(), strict=True))


def test_a_stacked_block_leaves_the_output_unchanged_until_blended_then_ramps_to_the_copy() -> None:
    model = _lm()
    tokens = _tokens()
    model.eval()
    with torch.no_grad():
        before = model(tokens)
    slot = model.seed_slots["layer1"]
    grow(slot, S.TRAINING, "stack", host_module=model.host)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)
    grow(slot, S.SHADOWING, host_module=model.host)  # alpha 1: the copied layer runs in full
    with torch.no_grad():
        full = model(tokens)
        with slot.force_alpha(0.0):
            torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)
    # At alpha 1 the network is the host with layer1 applied twice.
    with torch.no_grad():
        host = model.host
        x = host.stem(tokens)
        x = host.layers[0](x)  # the hook applies the slot: layer1, then its copy
        x = host.layers[1](x)
        torch.testing.assert_close(host.head(x), full)
    assert not torch.equal(full, before)


def test_a_second_stacked_block_copies_the_first_fossil() -> None:
    model = _lm()
    slot = model.seed_slots["layer1"]
    grow(slot, S.FOSSILIZED, "stack", host_module=model.host)
    with torch.no_grad():
        for p in slot.fossils[0].parameters():
            p.add_(0.1)
    model.germinate("layer1", "stack")
    assert torch.equal(slot.seed.block.mlp[0].weight, slot.fossils[0].block.mlp[0].weight)


def test_a_checkpointed_stack_restores_to_the_same_outputs() -> None:
    model = _lm(dropout=0.1)
    slot = model.seed_slots["layer1"]
    grow(slot, S.FOSSILIZED, "stack", host_module=model.host)
    grow(slot, S.BLENDING, "stack", host_module=model.host)
    record = json.loads(json.dumps(slot.lifecycle_state()))
    weights = model.state_dict()

    restored = _lm(dropout=0.1)
    restored.seed_slots["layer1"].load_lifecycle_state(record, host_module=restored.host)
    restored.load_state_dict(weights)
    model.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(_tokens()), model(_tokens()), rtol=0, atol=0)
    # Dropout was copied from the host's layer, not left at the blueprint's 0.
    assert restored.seed_slots["layer1"].fossils[0].block.mlp[3].p == 0.1


def test_stack_refuses_a_slot_with_no_transformer_block_below() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(MLPHost(in_features=8, hidden=32), ["layer1"], task_config=TaskConfig(topology="transformer"))
    with pytest.raises(ValueError, match="copies the transformer block below slot 'layer1', but that is a Sequential"):
        model.germinate("layer1", "stack")
    assert model.seed_slots["layer1"].state is None


def test_stack_needs_the_host_to_copy_from() -> None:
    model = _lm()
    with pytest.raises(ValueError, match="plant it through the model"):
        model.seed_slots["layer1"].germinate("stack")


@pytest.mark.parametrize(
    ("host", "slot_id", "x"),
    [
        (lambda: CNNHost(n_blocks=3, base_channels=4, in_channels=1), "block2", torch.randn(4, 1, 16, 16)),
        (lambda: MLPHost(in_features=12, hidden=16), "layer1", torch.randn(8, 12)),
    ],
    ids=["cnn", "mlp"],
)
def test_deepen_is_the_identity_on_the_hosts_features_and_trains(host, slot_id: str, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(host(), [slot_id])
    model.eval()
    with torch.no_grad():
        before = model(x)
    slot = model.seed_slots[slot_id]
    grow(slot, S.SHADOWING, "deepen", host_module=model.host)  # alpha 1: the new layer in full
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    # It is a real layer: the task's gradient reaches it.
    model.train()
    model(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed.parameters())


def test_seeds_that_start_from_the_host_are_planted_only_when_named() -> None:
    from esper.runtime.session import blueprints_for

    assert "stack" not in blueprints_for("transformer", None)
    assert "deepen" not in blueprints_for("cnn", None)
    assert blueprints_for("transformer", ["stack"]) == ["stack"]
