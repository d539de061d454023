"""A width seed through the trainer: its merge swaps the layers' parameters in the optimiser
with their momentum carried, the wider host trains on, is priced wider, and a checkpoint resumes."""

from __future__ import annotations

import io

import torch
from seed_lifecycle import grow

from esper.leyline import Action, ActionKind, SeedStage
from esper.runtime import get_task
from esper.runtime.session import build_trainer


def _trainer():
    spec = get_task("digits")
    return build_trainer(spec, spec.load_data(), seed=0)


def _merge_width(trainer, slot_id: str = "block2") -> None:
    trainer.apply([Action(ActionKind.GERMINATE, slot_id, "widen")])
    grow(trainer.slots[slot_id], SeedStage.PROBATIONARY, host_module=trainer.model.host)
    trainer.run_epoch()  # the seed and the host step: both have momentum
    (outcome,) = trainer.apply([Action(ActionKind.FOSSILIZE, slot_id)])
    assert outcome[1], outcome


def test_a_merged_width_seed_trains_as_host_with_its_momentum_carried() -> None:
    trainer = _trainer()
    host_params = trainer.model.host_param_count()
    site = trainer.model.host.width_site("block2")
    width = site.units
    old = site.layer.weight
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "widen")])
    seed_weight = trainer.slots["block2"].seed.weight
    grow(trainer.slots["block2"], SeedStage.PROBATIONARY, host_module=trainer.model.host)
    trainer.run_epoch()
    old_momentum = trainer.optimizers.host.state[old]["momentum_buffer"].clone()
    seed_momentum = trainer.optimizers.seeds.state[seed_weight]["momentum_buffer"].clone()
    (outcome,) = trainer.apply([Action(ActionKind.FOSSILIZE, "block2")])
    assert outcome[1], outcome
    optimizers = trainer.optimizers
    assert optimizers.seed_order() == [] and optimizers.fossil_order() == []
    host_group = {id(p) for group in optimizers.host.param_groups for p in group["params"]}
    assert id(site.layer.weight) in host_group and id(old) not in host_group
    assert site.units == 2 * width
    carried = optimizers.host.state[site.layer.weight]["momentum_buffer"]
    assert torch.equal(carried, torch.cat([old_momentum, seed_momentum]))
    assert trainer.model.host_param_count() == host_params
    assert trainer.model.seed_param_count() == trainer.slots["block2"].widenings[0].params > 0
    before = site.layer.weight.detach().clone()
    record = trainer.run_epoch()
    assert not torch.equal(site.layer.weight, before)  # the new units train with the host
    assert record.flops is not None


def test_the_wider_host_is_priced_wider() -> None:
    trainer = _trainer()
    bare = trainer.run_epoch().flops
    trainer.end_epoch()
    _merge_width(trainer)
    trainer.end_epoch()
    wider = trainer.run_epoch().flops
    assert wider.inference_per_sample > bare.inference_per_sample


def test_a_checkpoint_with_a_merged_width_seed_resumes_exactly() -> None:
    trainer = _trainer()
    _merge_width(trainer)
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "widen")])  # and a live one on top
    trainer.end_epoch()
    trainer.run_epoch()
    trainer.end_epoch()
    saved = io.BytesIO()
    torch.save(trainer.state_dict(), saved)
    resumed = _trainer()
    resumed.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    for _ in range(2):
        expected, got = trainer.run_epoch(), resumed.run_epoch()
        assert (got.train_loss, got.val_loss, got.seed_params) == (
            expected.train_loss,
            expected.val_loss,
            expected.seed_params,
        )
        trainer.end_epoch()
        resumed.end_epoch()


def test_a_live_width_seed_is_priced_by_its_stage() -> None:
    trainer = _trainer()
    trainer.run_epoch()
    meter = trainer.flops.measured()
    bare = meter.profile()
    trainer.apply([Action(ActionKind.GERMINATE, "block2", "widen")])
    slot = trainer.slots["block2"]
    assert meter.seed_cost("block2", "widen").params == slot.seed_param_count()
    grow(slot, SeedStage.TRAINING, host_module=trainer.model.host)
    incubating = meter.profile()
    assert incubating.training > bare.training and incubating.inference == bare.inference
    grow(slot, SeedStage.BLENDING, host_module=trainer.model.host)
    assert meter.profile().inference > bare.inference
