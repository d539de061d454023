"""Seeds are built in the dtype (and on the device) of the features at their slot."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper.kasmina.host import CNNHost, MLPHost, MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.leyline import SeedStage, TaskConfig

BF16 = torch.bfloat16


def _seed_dtypes(slot: SeedSlot) -> set[torch.dtype]:
    return {p.dtype for p in slot.seed.parameters()}


def test_slot_given_a_dtype_builds_seeds_in_it() -> None:
    slot = SeedSlot("s", channels=8, dtype=BF16)
    assert slot.dtype == BF16
    slot.germinate("conv_light")
    assert _seed_dtypes(slot) == {BF16}
    slot.step_epoch()  # GERMINATED -> TRAINING through the lifecycle
    assert slot.stage == SeedStage.TRAINING
    x = torch.randn(2, 8, 4, 4, dtype=BF16)
    out = slot(x)
    assert out.dtype == BF16 and torch.equal(out, x)  # the incubator leaves the value alone


def test_slot_follows_the_model_to_another_dtype() -> None:
    slot = SeedSlot("s", channels=16, task_config=TaskConfig(topology="mlp"))
    assert slot.dtype == torch.float32
    first = slot._get_shape_probe("mlp")
    assert first.shape == (2, 16) and first.dtype == torch.float32
    slot.to(BF16)
    assert slot.dtype == BF16
    probe = slot._get_shape_probe("mlp")
    assert probe.dtype == BF16  # the cached float32 probe was dropped
    assert slot._get_shape_probe("mlp") is probe
    slot.germinate("lowrank")
    assert _seed_dtypes(slot) == {BF16}


def test_bf16_host_germinates_and_trains() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(num_classes=4, n_blocks=3, base_channels=4).to(BF16))
    for key in model.seed_slots:
        model.germinate(key, "conv_light")
        model.seed_slots[key].step_epoch()
    assert all(slot.stage == SeedStage.TRAINING for slot in model.seed_slots.values())
    assert {p.dtype for p in model.parameters()} == {BF16}
    x = torch.randn(4, 3, 16, 16, dtype=BF16)
    y = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.seed_parameters()]
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.seed_parameters(), strict=True))


def test_lifecycle_restore_rebuilds_the_seed_in_the_slot_dtype() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(MLPHost(in_features=6, num_classes=3, hidden=8).to(BF16))
    model.germinate("layer1", "mlp")
    saved_state, saved_slot = model.state_dict(), model.seed_slots["layer1"].lifecycle_state()

    restored = MorphogeneticModel(MLPHost(in_features=6, num_classes=3, hidden=8).to(BF16))
    slot = restored.seed_slots["layer1"]
    slot.load_lifecycle_state(saved_slot, host_module=restored.host)
    restored.load_state_dict(saved_state)
    assert _seed_dtypes(slot) == {BF16}
    x = torch.randn(5, 6, dtype=BF16)
    assert torch.equal(restored(x), model(x))
