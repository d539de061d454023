"""`esper.graft(..., widen=[...])`: width seeds on the layers of a user's model, and what grows with them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from seed_lifecycle import S, grow
from torch import Tensor, nn

import esper
from esper.kasmina.width import WidthSeed, carry_optimizer_state
from esper.leyline import Action, ActionKind, TaskConfig

pytest.importorskip("torch_pruning")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2, self.out = nn.Linear(6, 8), nn.Dropout(0.0), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.fc2(self.drop(torch.relu(self.fc1(x))))))


class Block(nn.Module):
    """A residual basic block: conv1 -> bn1 -> relu -> conv2 -> bn2, plus its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """A stem conv + BN + max-pool, one residual block (`layer1.0`), mean pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(Block(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(self.layer1(x).mean(dim=(2, 3)))


class CNN(nn.Module):
    """conv -> BN -> ReLU -> max-pool -> conv -> ReLU -> flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(F.relu(self.conv2(x)).flatten(1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x))
        return self.a(h) + self.b(h)


IMAGES = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
CASES = {  # model, the layer to widen, its norm, its consumer, the input
    "mlp": (MLP, "fc1", None, "fc2", torch.randn(4, 6, generator=torch.Generator().manual_seed(1))),
    "cnn": (CNN, "conv1", "bn1", "conv2", IMAGES),
    "residual-block": (ResNet, "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", IMAGES),
    # The stem's output channels are added to the block's: conv1 and layer1.0.conv2 grow together.
    "residual-group": (ResNet, "conv1", "bn1", "layer1.0.conv1", IMAGES),
    "two-consumers": (TwoHeads, "fc1", None, "a", torch.randn(4, 6, generator=torch.Generator().manual_seed(1))),
}


def _grafted(case: str, noise: float = 0.01, init: str = "net2wider", seed: int = 0):
    build, layer, _, _, x = CASES[case]
    torch.manual_seed(seed)
    model = build()
    blueprint = {"net2wider": "widen", "zero": "widen_zero"}[init]
    options = {"noise": noise} if init == "net2wider" else {}
    config = TaskConfig(blueprint_kwargs={blueprint: options})
    grafted = esper.graft(model, [], x, widen=[layer], task_config=config)
    return grafted, grafted.seed_slots[layer], x, blueprint


def _move_statistics(model: nn.Module, x: Tensor) -> None:
    """A few train-mode passes, so the BatchNorm statistics (the new units' too) are not the defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    model.eval()


@pytest.mark.parametrize("case", CASES)
def test_the_group_of_a_layer_is_found(case: str) -> None:
    _, layer, norm, consumer, x = CASES[case]
    grafted, slot, _, _ = _grafted(case)
    site, model = slot.width_site, grafted.host
    assert site.layer is model.get_submodule(layer) and site.consumer is model.get_submodule(consumer)
    assert site.norm is (None if norm is None else model.get_submodule(norm))
    assert slot.channels == site.units and slot.task_config.topology == ("cnn" if x.dim() == 4 else "mlp")
    block = model.layer1[0] if case == "residual-group" else None
    tied = ((block.conv2, block.bn2),) if block else ()
    more = {"residual-group": ("fc",), "two-consumers": ("b",)}.get(case, ())
    assert site.tied == tied and site.more_consumers == tuple(model.get_submodule(name) for name in more)


@pytest.mark.parametrize("case", CASES)
def test_alpha_zero_is_the_model_exactly_and_training_keeps_its_output(case: str) -> None:
    grafted, slot, x, blueprint = _grafted(case, noise=0.3)
    _move_statistics(grafted, x)
    with torch.no_grad():
        expected = grafted(x)
    grow(slot, S.TRAINING, blueprint, host_module=grafted.host)
    with torch.no_grad():
        assert torch.equal(grafted(x), expected)
    grow(slot, S.BLENDING, blueprint, host_module=grafted.host)
    slot.set_alpha(0.6)
    with slot.force_alpha(0.0), torch.no_grad():
        assert torch.equal(grafted(x), expected)
    with torch.no_grad():
        assert not torch.equal(grafted(x), expected)  # at alpha 0.6 the new units count


def test_training_stage_gives_the_new_units_gradient_and_the_host_its_own() -> None:
    grafted, slot, x, blueprint = _grafted("mlp", noise=0.3)
    reference = copy.deepcopy(grafted.host)
    grow(slot, S.TRAINING, blueprint, host_module=grafted.host)
    grafted.train()
    grafted(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), q in zip(grafted.host.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert slot.seed.weight.grad.abs().sum() > 0 and slot.seed.out_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_net2wider_without_noise_keeps_the_function_at_full_alpha_and_merged(case: str) -> None:
    grafted, slot, x, blueprint = _grafted(case, noise=0.0)
    _move_statistics(grafted, x)
    with torch.no_grad():
        expected = grafted(x)
    site = slot.width_site
    width = site.units
    grow(slot, S.PROBATIONARY, blueprint, host_module=grafted.host)
    grafted.eval()
    with torch.no_grad():
        torch.testing.assert_close(grafted(x), expected, atol=1e-5, rtol=1e-5)
    grow(slot, S.FOSSILIZED, blueprint, host_module=grafted.host)
    assert slot.seed is None and not any(isinstance(m, WidthSeed) for m in grafted.modules())
    assert site.units == 2 * width and site.consumer.weight.shape[1] == 2 * width
    assert site.norm is None or site.norm.running_mean.shape == (2 * width,)
    with torch.no_grad():
        torch.testing.assert_close(grafted(x), expected, atol=1e-5, rtol=1e-5)
    assert not site.consumer._forward_hooks and not site.consumer._forward_pre_hooks
    assert len(site.layer._forward_hooks) == 1 and not site.layer._forward_pre_hooks  # the slot's own
    grafted.train()
    grafted(x).sum().backward()  # the wider model trains
    plain = grafted.export()
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), grafted.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_culled_seed_leaves_the_model_as_it_was_bitwise(case: str) -> None:
    grafted, slot, x, blueprint = _grafted(case, noise=0.3)
    before = copy.deepcopy(grafted.state_dict())
    grafted.eval()
    with torch.no_grad():
        expected = grafted(x)
    grow(slot, S.BLENDING, blueprint, host_module=grafted.host)
    with torch.no_grad():
        grafted(x)
    grow(slot, S.CULLED, blueprint, host_module=grafted.host)
    after = grafted.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("_extra_state"))
    grafted.eval()
    with torch.no_grad():
        assert torch.equal(grafted(x), expected)
    assert not slot.width_site.consumer._forward_hooks and not slot.width_site.layer._forward_pre_hooks


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip_rebuilds_merged_width_and_the_live_seed(case: str) -> None:
    grafted, slot, x, blueprint = _grafted(case, noise=0.3)
    grow(slot, S.FOSSILIZED, blueprint, host_module=grafted.host)
    grow(slot, S.BLENDING, blueprint, host_module=grafted.host)  # a second seed, live, on the wider layer
    _move_statistics(grafted, x)
    with torch.no_grad():
        expected = grafted(x)
    fresh, fresh_slot, _, _ = _grafted(case, seed=5)  # the same model, other weights
    fresh.load_state_dict(grafted.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    assert fresh_slot.width_site.units == slot.width_site.units and fresh_slot.stage == S.BLENDING
    assert fresh.seed_param_count() == grafted.seed_param_count()


def test_merge_carries_the_optimiser_state_of_layer_norm_and_consumer() -> None:
    grafted, slot, x, blueprint = _grafted("cnn", noise=0.3)
    grow(slot, S.PROBATIONARY, blueprint, host_module=grafted.host)
    host_opt = torch.optim.AdamW(grafted.host_parameters(), lr=0.01)
    seed_opt = torch.optim.AdamW(slot.seed.parameters(), lr=0.01)
    grafted.train()
    for _ in range(2):
        grafted(x).square().mean().backward()
        host_opt.step()
        seed_opt.step()
    site = slot.width_site
    olds = {"layer": site.layer.weight, "norm": site.norm.weight, "consumer": site.consumer.weight}
    seed_parts = {"layer": slot.seed.weight, "norm": slot.seed.norm.weight, "consumer": slot.seed.out_weight}
    axes = {"layer": 0, "norm": 0, "consumer": 1}
    expected = {
        key: torch.cat([host_opt.state[olds[key]]["exp_avg"], seed_opt.state[seed_parts[key]]["exp_avg"]], dim=axes[key])
        for key in olds
    }
    grow(slot, S.FOSSILIZED, blueprint, host_module=grafted.host)
    (merge,) = slot.drain_merges()
    carry_optimizer_state((host_opt, seed_opt), merge)
    news = {"layer": site.layer.weight, "norm": site.norm.weight, "consumer": site.consumer.weight}
    for key, new in news.items():
        assert torch.equal(host_opt.state[new]["exp_avg"], expected[key]), key
    grafted(x).square().mean().backward()
    host_opt.step()


def test_two_neighbouring_layers_widen_and_merge_in_turn() -> None:
    torch.manual_seed(0)
    x = CASES["mlp"][4]
    config = TaskConfig(blueprint_kwargs={"widen": {"noise": 0.0}})
    grafted = esper.graft(MLP(), [], x, widen=["fc1", "fc2"], task_config=config)
    grafted.eval()
    with torch.no_grad():
        expected = grafted(x)
    slots = list(grafted.seed_slots.values())
    for slot in slots:
        grow(slot, S.PROBATIONARY, "widen", host_module=grafted.host)
    for slot in slots:
        grow(slot, S.FOSSILIZED, "widen", host_module=grafted.host)
        grafted.eval()
        with torch.no_grad():
            torch.testing.assert_close(grafted(x), expected, atol=1e-5, rtol=1e-5)
    assert grafted.host.fc1.out_features == 16 and grafted.host.fc2.weight.shape == (16, 16)
    assert grafted.host.out.in_features == 16


# --------------------------------------------------------------------------- refusals
class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).softmax(-1))


class SelfFed(nn.Module):
    """h + fc2(h): fc2 reads the units it writes to."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(x))
        return self.out(h + self.fc2(h))


@pytest.mark.parametrize(
    ("build", "widen", "x", "message"),
    [
        (MLP, ["out"], CASES["mlp"][4], r"Cannot widen 'out' \(Linear\): its output is the model's output"),
        (SelfFed, ["fc1"], CASES["mlp"][4], r"Cannot widen 'fc1' \(Linear\): 'fc2' both read and write its units"),
        (CNN, ["conv2"], IMAGES, r"Cannot widen 'conv2'.*reaches a reshape or flatten"),
        (CNN, ["bn1"], IMAGES, r"Cannot widen 'bn1' \(BatchNorm2d\): Esper widens an nn.Linear or an nn.Conv2d"),
        (MLP, ["fc"], CASES["mlp"][4], r"Unknown layer to widen 'fc'.*closest module names: fc[12], fc[12]"),
        (Softmaxed, ["fc1"], CASES["mlp"][4], r"Cannot widen 'fc1': the model's code between it and its consumer"),
    ],
)
def test_a_layer_that_cannot_be_widened_is_refused_in_one_line(build, widen, x, message) -> None:
    torch.manual_seed(0)
    model = build()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message) as error:
        esper.graft(model, [], x, widen=widen)
    assert "\n" not in str(error.value)
    after = model.state_dict()  # nothing changed: no hook left, no statistic moved
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_name_in_both_targets_and_widen_is_refused() -> None:
    with pytest.raises(ValueError, match="'fc1' is in both targets and widen"):
        esper.graft(MLP(), ["fc1"], CASES["mlp"][4], widen=["fc1"])
    with pytest.raises(ValueError, match="at least one target"):
        esper.graft(MLP(), [], CASES["mlp"][4])


def test_targets_and_widened_layers_live_side_by_side() -> None:
    x = CASES["mlp"][4]
    grafted = esper.graft(MLP(), ["fc2"], x, widen=["fc1"])
    assert list(grafted.seed_slots) == ["fc1", "fc2"]
    with pytest.raises(ValueError, match="slot 'fc2'.*no layers Esper can widen"):
        grafted.germinate("fc2", "widen")
    grow(grafted.seed_slots["fc2"], S.BLENDING, "norm", host_module=grafted.host)
    grow(grafted.seed_slots["fc1"], S.FOSSILIZED, "widen", host_module=grafted.host)
    grafted(x).sum().backward()


# --------------------------------------------------------------------------- Grower, end to end
def test_grower_widens_a_grafted_mlp_in_the_users_loop() -> None:
    from test_grower import SCHEDULE_GATES, TRAIN_X, Script, accuracy, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    grown = esper.graft(model, [], TRAIN_X[:2], widen=["0"], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    script = Script({0: [Action(ActionKind.GERMINATE, "0", "widen")]})
    grower = esper.Grower(grown, optimizer, accuracy, controller=script, epochs=12)
    for epoch in range(12):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    moves = [move.to_stage for move in grower.transitions]
    assert S.FOSSILIZED in moves, moves
    assert model[0].out_features == 32 and model[2].in_features == 32
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(model[0].weight), id(model[0].bias), id(model[2].weight)} <= held
    assert all(len(optimizer.state[p]) for p in (model[0].weight, model[2].weight))  # momentum carried on
    assert accuracy(grown) > 0.5


def _widening_run(run_dir, epochs: int, stop_after: int | None = None, resume: bool = False):
    from test_grower import SCHEDULE_GATES, TRAIN_X, Script, accuracy, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    grown = esper.graft(model, [], TRAIN_X[:2], widen=["0"], gates=SCHEDULE_GATES)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.05, momentum=0.9)
    script = Script({0: [Action(ActionKind.GERMINATE, "0", "widen")]})
    grower = esper.Grower(grown, optimizer, accuracy, controller=script, epochs=epochs,
                          run_dir=run_dir, resume=resume, checkpoint_every=2)  # fmt: skip
    for epoch in range(grower.epoch, stop_after or epochs):
        grower.end_epoch(train_loss=train_one_epoch(grown, optimizer, epoch))
    return grower, model


@pytest.mark.slow
def test_a_grower_run_resumes_after_a_merge_exactly(tmp_path) -> None:
    from esper.nissa import read_jsonl

    _, whole = _widening_run(tmp_path / "whole", epochs=12)
    assert whole[0].out_features == 32
    grower, _ = _widening_run(tmp_path / "cut", epochs=12, stop_after=11)
    grower.hub.close()
    resumed, model = _widening_run(tmp_path / "cut", epochs=12, resume=True)
    assert resumed.history[0].epoch == 10 and model[0].out_features == 32
    (merged,) = resumed.model.seed_slots["0"].widenings
    assert merged.epoch < 10  # the checkpoint it resumed from held the merged width

    def lines(name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(tmp_path / name / "metrics.jsonl")]

    assert lines("cut") == lines("whole")
