"""The FLOPs meter: what each pass costs per sample, per architecture, without touching the model."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina.blueprints import BlueprintRegistry
from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.kasmina.slot import QualityGates
from esper.leyline import SeedStage, TaskConfig
from esper.tolaria.flops import EpochFlops, FlopMeter, FlopProfile, flop_counter
from esper.tolaria.trainer import loss_and_correct, validate_with_counterfactuals

BATCH = 4
# Eager FlexAttention on CPU warns that it is unfused; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
# Lenient gates so a test can walk a seed through the whole lifecycle in a few epochs.
GATES = QualityGates(min_training_epochs=1, min_seed_gradient_ratio=0.0, min_contribution=-1.0)


def _count(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _cnn_model() -> tuple[MorphogeneticModel, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=3, base_channels=8, in_channels=1)
    model = MorphogeneticModel(
        host, gates=GATES, task_config=TaskConfig(topology="cnn", blending_epochs=2)
    )
    batch = (torch.randn(BATCH, 1, 16, 16), torch.randint(0, 10, (BATCH,)))
    return model, batch


def _cnn_plain() -> CNNHost:
    """The same host with no slots at all: the plain module the meter must agree with."""
    return CNNHost(num_classes=10, n_blocks=3, base_channels=8, in_channels=1)


def _plain_inference(module: nn.Module, inputs: Tensor) -> float:
    module.eval()
    with torch.no_grad():
        return _count(lambda: module(inputs)) / inputs.shape[0]


def _plain_training(module: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    module.train()
    return _count(lambda: loss_and_correct(module(inputs), targets)[0].backward()) / inputs.shape[0]


def _seed_alone(blueprint: str, features: Tensor, train: bool, input_grad: bool) -> float:
    """FLOPs per sample of a seed on its own, on features of the slot's shape."""
    seed = BlueprintRegistry.create("cnn", blueprint, features.shape[1])
    x = features.clone().requires_grad_(input_grad)
    if not train:
        seed.eval()
        with torch.no_grad():
            return _count(lambda: seed(x)) / x.shape[0]
    return _count(lambda: seed(x).sum().backward()) / x.shape[0]


def _block2_features(inputs: Tensor) -> Tensor:
    """Shape of the features entering slot block2 of the 3-block, 8-channel host."""
    return torch.zeros(inputs.shape[0], 16, inputs.shape[2] // 4, inputs.shape[3] // 4)


def _step_until(model: MorphogeneticModel, slot_id: str, stage: SeedStage, batch: tuple) -> None:
    """Run the lifecycle clock (validating, as the engine does) until the slot reaches `stage`."""
    slot = model.seed_slots[slot_id]
    for _ in range(20):
        if slot.stage == stage:
            return
        validate_with_counterfactuals(model, [batch])
        slot.step_epoch()
    raise AssertionError(f"slot {slot_id} never reached {stage.name} (at {slot.stage.name})")


def test_dormant_slots_add_nothing_and_numbers_match_flop_counter_mode() -> None:
    model, (inputs, targets) = _cnn_model()
    profile = FlopMeter(model, (inputs, targets)).profile()
    plain = _cnn_plain()
    assert profile.inference == _plain_inference(plain, inputs) > 0
    assert profile.training == _plain_training(plain, inputs, targets) > profile.inference
    assert profile.validation == profile.inference
    assert profile.counterfactual == 0 and profile.counterfactual_fast == {}


def test_incubating_seed_costs_training_only_and_blended_seed_costs_both() -> None:
    model, (inputs, targets) = _cnn_model()
    meter = FlopMeter(model, (inputs, targets))
    host_only = meter.profile()
    features = _block2_features(inputs)

    model.germinate("block2", "conv_heavy")
    assert meter.profile().training == host_only.training  # GERMINATED: planted, not run

    _step_until(model, "block2", SeedStage.TRAINING, (inputs, targets))
    incubating = meter.profile()
    assert incubating.inference == host_only.inference
    # Isolated: the seed reads detached features, so no gradient flows back through its input.
    seed_train = _seed_alone("conv_heavy", features, train=True, input_grad=False)
    assert incubating.training == host_only.training + seed_train

    _step_until(model, "block2", SeedStage.BLENDING, (inputs, targets))
    blending = meter.profile()
    seed_eval = _seed_alone("conv_heavy", features, train=False, input_grad=False)
    assert blending.inference == host_only.inference + seed_eval
    seed_train = _seed_alone("conv_heavy", features, train=True, input_grad=True)
    assert blending.training == host_only.training + seed_train


def test_counterfactual_costs_match_the_passes_the_trainer_runs() -> None:
    model, (inputs, targets) = _cnn_model()
    model.germinate("block2", "conv_light")
    _step_until(model, "block2", SeedStage.BLENDING, (inputs, targets))
    profile = FlopMeter(model, (inputs, targets)).profile()
    host = model.host
    features = _block2_features(inputs)
    model.eval()
    with torch.no_grad():
        tail = _count(lambda: host.run(features, host.stage_index("block2") + 1)) / BATCH
        with model.seed_slots["block2"].force_alpha(0.0):
            naive = _count(lambda: model(inputs)) / BATCH
    assert profile.counterfactual_fast == {"block2": tail}
    assert profile.counterfactual_naive == {"block2": naive}
    assert profile.counterfactual == tail < naive == _plain_inference(_cnn_plain(), inputs)

    epoch = profile.epoch(train_samples=100, val_samples=20)
    assert epoch == EpochFlops(100 * profile.training, 20 * profile.inference, 20 * tail)
    assert profile.epoch(100, 20, validations=2).validation == 2 * epoch.validation
    assert (epoch + epoch).total == 2 * epoch.total


def test_profile_is_measured_once_per_architecture() -> None:
    model, batch = _cnn_model()
    meter = FlopMeter(model, batch)
    first = meter.profile()
    assert meter.profile() is first and meter.measurements == 1

    model.germinate("block3", "depthwise")
    assert meter.profile() == first and meter.measurements == 2  # a new key: measured again
    _step_until(model, "block3", SeedStage.TRAINING, batch)
    incubating = meter.profile()
    assert meter.measurements == 3  # GERMINATED, then TRAINING
    model.seed_slots["block3"].step_epoch()  # a training epoch that changes nothing structural
    _step_until(model, "block3", SeedStage.BLENDING, batch)
    blending = meter.profile()
    assert blending is not incubating and meter.measurements == 4
    _step_until(model, "block3", SeedStage.SHADOWING, batch)
    assert meter.profile() is blending and meter.measurements == 4  # same passes, same cost

    assert model.seed_slots["block3"].cull("test")
    assert meter.profile() is first  # the slot is empty again: the host's profile, from cache
    assert meter.measurements == 4


def test_fossilized_seeds_count_everywhere_and_are_not_measured() -> None:
    model, batch = _cnn_model()
    meter = FlopMeter(model, batch)
    slot = model.seed_slots["block2"]
    features = _block2_features(batch[0])
    seed_eval = _seed_alone("conv_light", features, train=False, input_grad=False)
    host = _plain_inference(_cnn_plain(), batch[0])
    for depth in (1, 2):  # a stack: each fossil adds its own cost
        model.germinate("block2", "conv_light")
        _step_until(model, "block2", SeedStage.PROBATIONARY, batch)
        assert slot.advance_stage(SeedStage.FOSSILIZED).passed
        profile = meter.profile()
        assert profile.inference == host + depth * seed_eval
        assert profile.counterfactual == 0  # fossils are host: never measured
    # A live seed on top of the stack: its counterfactual resumes after the fossils.
    model.germinate("block2", "norm")
    _step_until(model, "block2", SeedStage.BLENDING, batch)
    profile = meter.profile()
    tail = model.host
    model.eval()
    with torch.no_grad():
        expected = _count(lambda: tail.run(features, tail.stage_index("block2") + 1)) / BATCH
    assert profile.counterfactual_fast == {"block2": expected}


def _state(model: nn.Module) -> dict[str, object]:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
        "alphas": [slot._alpha.clone() for slot in model.seed_slots.values()],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), key
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None and other is None) or torch.equal(grad, other), name
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])
    for a, b in zip(before["alphas"], after["alphas"], strict=True):
        assert torch.equal(a, b)


def test_measuring_leaves_the_model_exactly_as_it_was() -> None:
    model, (inputs, targets) = _cnn_model()
    model.germinate("block2", "conv_heavy")
    _step_until(model, "block2", SeedStage.BLENDING, (inputs, targets))
    model.germinate("block3", "attention")
    _step_until(model, "block3", SeedStage.TRAINING, (inputs, targets))
    # Real gradients, BatchNorm statistics and a mixed train/eval state to preserve.
    model.train()
    loss_and_correct(model(inputs), targets)[0].backward()
    model.host.blocks[0].eval()
    before = _state(model)
    FlopMeter(model, (inputs, targets)).profile()
    _assert_same_state(before, _state(model))


def test_transformer_counts_attention_and_keeps_dropout_rng() -> None:
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=16, n_embd=32, n_head=2, n_layer=2, block_size=8, dropout=0.1)
    plain = copy.deepcopy(host)
    model = MorphogeneticModel(host, gates=GATES, task_config=TaskConfig(topology="transformer"))
    tokens = torch.randint(0, 16, (BATCH, 8))
    batch = (tokens, torch.randint(0, 16, (BATCH, 8)))
    model.train()
    before = _state(model)
    meter = FlopMeter(model, batch)
    profile = meter.profile()
    _assert_same_state(before, _state(model))
    # CPU's fused attention kernel is invisible to FlopCounterMode; on meta tensors SDPA
    # runs as matmuls it counts, so the reference is the plain module run on meta.
    plain_meta = plain.to("meta")
    meta_batch = tuple(t.to("meta") for t in batch)
    assert profile.inference == _plain_inference(plain_meta, meta_batch[0])
    assert profile.training == _plain_training(plain_meta, *meta_batch)
    assert profile.inference > _plain_inference(copy.deepcopy(host), tokens)  # attention included

    grown = {}
    for blueprint in ("attention", "flex_attention"):  # the same math: the same count
        model.germinate("layer1", blueprint)
        _step_until(model, "layer1", SeedStage.BLENDING, batch)
        grown[blueprint] = meter.profile().inference
        model.seed_slots["layer1"].cull("next")
        _step_until(model, "layer1", SeedStage.DORMANT, batch)
    assert grown["attention"] == grown["flex_attention"] > profile.inference


def test_a_forward_that_reads_values_gets_a_clear_error() -> None:
    class ValueDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.linear(x) if x.sum().item() > 0 else -self.linear(x)

    meter = FlopMeter(ValueDependent(), (torch.randn(2, 4), torch.randint(0, 3, (2,))))
    with pytest.raises(RuntimeError, match="cannot count the FLOPs of ValueDependent.*item"):
        meter.profile()


def test_plain_module_and_empty_batch() -> None:
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batch = (torch.randn(3, 6), torch.randint(0, 3, (3,)))
    profile = FlopMeter(mlp, batch).profile()
    assert profile == FlopProfile(
        inference=2 * (6 * 5 + 5 * 3),
        training=_plain_training(mlp, *batch),
        counterfactual_fast=None,
        counterfactual_naive={},
    )
    with pytest.raises(ValueError, match="at least one sample"):
        FlopMeter(mlp, (torch.randn(0, 6), torch.zeros(0, dtype=torch.long)))


def test_grouped_convolution_backward_is_counted_once_not_per_group() -> None:
    """Each convolution's backward costs its forward once per gradient it computes (input,
    weight). PyTorch's formula counts a grouped conv's weight gradient `groups` times."""
    net = nn.Sequential(
        nn.Conv2d(3, 16, 1, bias=False),  # its input is data: only a weight gradient
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),  # depthwise: both gradients
        nn.Conv2d(16, 10, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    inputs = torch.randn(2, 3, 6, 6)
    first = _count(lambda: net[0](inputs))
    forward = _count(lambda: net(inputs))
    profile = FlopMeter(net, (inputs, torch.randint(0, 10, (2,)))).profile()
    assert profile.inference * 2 == forward
    assert profile.training * 2 == forward + forward + (forward - first)
    # The library alone counts the depthwise weight gradient 16 times.
    assert _plain_training(net, inputs, torch.randint(0, 10, (2,))) > profile.training


# --------------------------------------------------------------------------- a run's account
def _samples(loader) -> int:
    return sum(inputs.shape[0] for inputs, _ in loader)


def test_the_trainer_accounts_every_epoch_and_a_fossil_raises_inference() -> None:
    from seed_lifecycle import grow

    from esper.leyline import Action, ActionKind
    from esper.runtime import get_task
    from esper.runtime.session import build_trainer

    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0)
    train_samples, val_samples = _samples(trainer.train_loader), _samples(trainer.val_loader)
    records = []

    def epoch() -> None:
        profile = trainer.flops.profile()
        record = trainer.run_epoch()
        assert record.flops.training == profile.training * train_samples
        assert record.flops.validation == profile.validation * val_samples
        assert record.flops.counterfactual == profile.counterfactual * val_samples
        assert trainer.signals(record, 10).flops == record.flops
        records.append(record)
        trainer.end_epoch()

    epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()  # -> TRAINING
    epoch()  # an incubating seed: costs training, not inference
    grow(trainer.slots["block2"], SeedStage.PROBATIONARY)
    epoch()  # a blended seed: its counterfactual is measured
    assert records[-1].flops.counterfactual > 0
    trainer.apply([Action(ActionKind.FOSSILIZE, "block2")])
    epoch()
    first, incubating, blended, fossil = (r.flops for r in records)
    assert incubating.training > first.training and incubating.inference_per_sample == first.inference_per_sample
    assert fossil.inference_per_sample > first.inference_per_sample and fossil.counterfactual == 0
    # A blended seed at full alpha costs what it costs once fossilized: the same ops.
    assert blended.inference_per_sample == fossil.inference_per_sample
    for name in ("training", "validation", "counterfactual"):
        assert getattr(records[-1].flops, f"cumulative_{name}") == pytest.approx(
            sum(getattr(r.flops, name) for r in records), rel=1e-12
        )
    assert trainer.state_dict()["flops"]["training"] == records[-1].flops.cumulative_training


def test_a_rolled_back_epoch_counts_what_it_recomputed() -> None:
    from esper.leyline import Action, ActionKind
    from esper.runtime import get_task
    from esper.runtime.session import build_trainer

    spec = get_task("digits")
    trainer = build_trainer(spec, spec.load_data(), seed=0)
    for _ in range(2):
        healthy = trainer.run_epoch()
        trainer.end_epoch()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "conv_light")])
    trainer.end_epoch()
    with torch.no_grad():
        next(trainer.slots["block2"].seed.parameters()).fill_(float("nan"))
    rolled = trainer.run_epoch()
    assert rolled.rollback is not None
    # Validated twice: before the rollback and after it. (The seed was non-finite before the
    # epoch, so the governor named it without probing batches.)
    assert rolled.flops.validation == 2 * healthy.flops.validation
    assert rolled.flops.cumulative_validation == (2 + 2) * healthy.flops.validation


def test_a_composed_profile_equals_counting_the_whole_model() -> None:
    """Stacks in two slots, a blended seed on one, an incubating one on the other: the sum the
    meter composes is what FlopCounterMode counts on the whole model, pass by pass."""
    from seed_lifecycle import grow

    model, (inputs, targets) = _cnn_model()
    block2, block3 = model.seed_slots["block2"], model.seed_slots["block3"]
    for slot, blueprints in ((block2, ("conv_light", "depthwise")), (block3, ("attention",))):
        for blueprint in blueprints:
            grow(slot, SeedStage.FOSSILIZED, blueprint)
    grow(block3, SeedStage.BLENDING, "conv_heavy")
    grow(block2, SeedStage.TRAINING, "residual_block")
    profile = FlopMeter(model, (inputs, targets)).profile()
    host = model.host
    model.eval()
    with torch.no_grad():
        assert profile.inference == _count(lambda: model(inputs)) / BATCH
        with block3.force_alpha(0.0):
            assert profile.counterfactual_naive == {"block3": _count(lambda: model(inputs)) / BATCH}
        taps = dict.fromkeys(["block3"])
        host.run(host.stem(inputs), taps=taps)
        tail = _count(lambda: host.run(taps["block3"], host.stage_index("block3") + 1)) / BATCH
        assert profile.counterfactual_fast == {"block3": tail}
    model.train()
    with flop_counter() as counter:  # the library's count, grouped-convolution backward corrected
        loss_and_correct(model(inputs), targets)[0].backward()
    assert profile.training == counter.get_total_flops() / BATCH
