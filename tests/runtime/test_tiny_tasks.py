"""Tiny-host tasks leave growth room, and static networks with seeds built in are plain hosts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.cli import main
from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import MorphogeneticModel
from esper.runtime import get_task
from esper.runtime.static_host import StaticSeedsHostFactory, every_slot, plant_static
from esper.tolaria.flops import FlopMeter

TINY = ("mnist5k-tiny", "pydoc-chars-tiny")


@pytest.fixture(scope="module", params=TINY)
def task(request):
    spec = get_task(request.param)
    data = spec.load_data()
    train, _ = data.loaders(spec.batch_size, 0, spec.max_train_batches, spec.max_val_batches)
    return spec, data, next(iter(train))


def _size(host: nn.Module, batch) -> tuple[int, float]:
    params = sum(p.numel() for p in host.parameters())
    return params, FlopMeter(host, batch).profile().inference


def test_tiny_host_has_at_most_a_quarter_of_the_reference(task) -> None:
    spec, data, batch = task
    assert spec.reference_host is not None
    tiny_params, tiny_flops = _size(spec.build_host(data), batch)
    ref_params, ref_flops = _size(spec.reference_host(data), batch)
    assert tiny_params <= ref_params / 4
    assert 0 < tiny_flops <= ref_flops / 4


def test_tiny_task_offers_every_slot_and_a_lifecycle_that_fits_early(task) -> None:
    spec, data, (inputs, _) = task
    host = spec.build_host(data)
    # All the room the host has: the task's slots, and those its plan grows (mnist5k-tiny's block1).
    planned = {slot for _, slot, _ in spec.schedule}
    assert [key for key in host.injection_points if key in spec.slots or key in planned] == list(host.injection_points)
    model = MorphogeneticModel(host, spec.slots, task_config=spec.task_config)
    assert model(inputs).shape[0] == inputs.shape[0]
    config = spec.task_config
    # Planted at epoch 1: germination, the minimum training, the ramp, shadowing, probation.
    shortest_lifecycle = 1 + 1 + 2 + config.blending_epochs + 1 + 1
    assert shortest_lifecycle <= spec.epochs // 2


def test_tasks_command_names_the_reference_host(capsys) -> None:
    assert main(["tasks"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    for name in TINY:
        assert f"{name}:" in out
    assert "(reference CNNHost(3 blocks, 16 base channels))" in out


def test_static_seeds_host_is_the_tiny_host_plus_trainable_seeds(task) -> None:
    spec, data, (inputs, _) = task
    blueprint = "inverted_bottleneck" if spec.topology == "cnn" else "block"
    factory = StaticSeedsHostFactory(spec.build_host, every_slot(spec.slots, blueprint))
    torch.manual_seed(0)
    plain = spec.build_host(data)
    torch.manual_seed(0)
    static = factory(data)
    plain.eval()
    static.eval()
    with torch.no_grad():
        assert torch.equal(plain(inputs), static(inputs))  # seeds are the identity at birth
    seed_params = sum(p.numel() for p in static.parameters()) - sum(
        p.numel() for p in plain.parameters()
    )
    widths = plain.injection_points
    assert seed_params == sum(
        BlueprintRegistry.get(spec.topology, blueprint).actual_param_count(widths[s])
        for s in spec.slots
    )
    # The seeds are host layers: the host optimiser trains them, and the slots stay free.
    model = MorphogeneticModel(static, spec.slots)
    assert model.host_param_count() == sum(p.numel() for p in static.parameters())
    assert all(slot.state is None for slot in model.seed_slots.values())
    assert str(factory).endswith(", ".join(f"{blueprint}@{slot}" for slot in spec.slots))


def test_plant_static_stacks_in_order_and_rejects_bad_targets() -> None:
    spec = get_task("mnist5k-tiny")
    data = spec.load_data()
    host = spec.build_host(data)
    first = plant_static(host, "block2", "residual_block")
    second = plant_static(host, "block2", "inverted_bottleneck", expansion=2)
    stage = host.trunk[host.stage_index("block2")]
    assert stage[0][1] is first and stage[1] is second
    with pytest.raises(
        ValueError, match="Unknown injection point 'block9'. Available: block1, block2, block3"
    ):
        plant_static(host, "block9", "norm")
    with pytest.raises(TypeError, match="Sequential is not a StagedHost"):
        plant_static(nn.Sequential(nn.Linear(2, 2)), "block2", "norm")
