"""esper.graft on torchvision's resnet18 (runs where the optional `vision` extra imports).

    pip install -e ".[vision]"   # torchvision built for the installed torch
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import esper
from esper.leyline import SeedStage

torchvision = pytest.importorskip("torchvision")


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


def test_resnet18_layers_get_cnn_slots_and_keep_their_checkpoint_format() -> None:
    model = _resnet18()
    grafted = esper.graft(model, ["layer2", "layer3"], _images())
    slots = grafted.seed_slots
    assert list(slots) == ["layer2", "layer3"]
    assert {k: (s.task_config.topology, s.channels) for k, s in slots.items()} == {
        "layer2": ("cnn", 128),
        "layer3": ("cnn", 256),
    }
    model.load_state_dict(_resnet18().state_dict())  # a plain resnet18 checkpoint still loads
    blocks = esper.graft(_resnet18(), ["layer3.*"], _images())
    assert list(blocks.seed_slots) == ["layer3.0", "layer3.1"]


def test_resnet18_is_bitwise_unchanged_until_blending_and_trains() -> None:
    model = _resnet18().train()
    reference = copy.deepcopy(model)
    grafted = esper.graft(model, ["layer2", "layer3"], _images())
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    assert torch.equal(grafted(x), reference(x))  # DORMANT (train mode: BatchNorm updates alike)
    grafted.germinate("layer2", "conv_light")
    grafted.germinate("layer3", "norm")
    for slot in grafted.seed_slots.values():
        slot.step_epoch()  # GERMINATED -> TRAINING
        assert slot.stage == SeedStage.TRAINING
    logits = grafted(x)
    assert torch.equal(logits, reference(x))  # the incubator: the host's output exactly
    F.cross_entropy(logits, y).backward()
    for key, slot in grafted.seed_slots.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed.parameters()), key
    assert grafted.host_param_count() == sum(p.numel() for p in reference.parameters())


def test_resnet18_widens_a_block_s_conv_and_the_residual_group_of_its_stem_keeping_the_function() -> None:
    pytest.importorskip("torch_pruning")
    from seed_lifecycle import grow

    from esper.leyline import TaskConfig

    model, x = _resnet18().eval(), _images()
    with torch.no_grad():
        expected = model(x)
    config = TaskConfig(blueprint_kwargs={"widen": {"noise": 0.0}})
    grown = esper.graft(model, [], x, widen=["conv1", "layer2.0.conv1"], task_config=config)
    block = grown.seed_slots["layer2.0.conv1"].width_site
    assert (block.norm, block.consumer, block.tied) == (model.layer2[0].bn1, model.layer2[0].conv2, ())
    stem = grown.seed_slots["conv1"].width_site  # added to every layer1 block's output
    assert [layer for layer, _ in stem.tied] == [model.layer1[0].conv2, model.layer1[1].conv2]
    assert stem.more_consumers == (model.layer1[1].conv1, model.layer2[0].conv1, model.layer2[0].downsample[0])
    for slot in grown.seed_slots.values():
        grow(slot, SeedStage.FOSSILIZED, "widen", host_module=model)
    assert model.conv1.out_channels == 128 and model.layer1[1].conv2.out_channels == 128
    assert model.layer2[0].conv1.out_channels == 256 and model.layer2[0].downsample[0].in_channels == 128
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Cannot widen 'fc'.*the model's output"):
        esper.graft(_resnet18(), [], x, widen=["fc"])
