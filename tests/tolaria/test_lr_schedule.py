"""A cosine learning-rate schedule: every group, seeds' included, annealed over the planned run
(or over a training-FLOPs cap, when the cap ends the run first); constant leaves them alone."""

from __future__ import annotations

import dataclasses
import math

import pytest

from esper.leyline import Action, ActionKind
from esper.runtime import get_task
from esper.runtime.session import build_trainer
from esper.tolaria import EpochLoop
from esper.tolaria.flops_cap import TrainingFlopsCap
from esper.tolaria.trainer import OptimConfig, lr_scale

EPOCHS = 4


def _trainer(schedule: str):
    spec = dataclasses.replace(get_task("digits"), lr_schedule=schedule, max_train_batches=2, max_val_batches=1)
    return spec, build_trainer(spec, spec.load_data(), seed=0)


def _learning_rates(loop: EpochLoop) -> list[tuple[float, list[float]]]:
    """(host lr, seed group lrs) of each epoch as it trained; a seed is planted after epoch 0."""
    seen = []
    result = loop.start()
    while result is not None:
        optimizers = loop.trainer.optimizers
        seen.append((optimizers.host.param_groups[0]["lr"], [g["lr"] for g in optimizers.seeds.param_groups]))
        plant = [Action(ActionKind.GERMINATE, "block2", "conv_light")] if loop.trainer.epoch == 0 else []
        result = loop.step(plant)
    return seen


def test_cosine_anneals_host_and_seed_learning_rates_over_the_planned_epochs() -> None:
    spec, trainer = _trainer("cosine")
    seen = _learning_rates(EpochLoop(trainer, EPOCHS))
    assert len(seen) == EPOCHS
    for epoch, (host_lr, seed_lrs) in enumerate(seen):
        scale = 0.5 * (1 + math.cos(math.pi * epoch / EPOCHS))
        assert host_lr == pytest.approx(spec.host_lr * scale)
        assert seed_lrs == ([] if epoch == 0 else [pytest.approx(spec.seed_lr * scale)])


def test_constant_leaves_the_learning_rates_alone() -> None:
    spec, trainer = _trainer("constant")
    for host_lr, seed_lrs in _learning_rates(EpochLoop(trainer, EPOCHS)):
        assert host_lr == spec.host_lr and all(lr == spec.seed_lr for lr in seed_lrs)


def test_a_capped_run_anneals_over_its_cap() -> None:
    spec, trainer = _trainer("cosine")
    per_epoch = trainer.flops.profile().training * 2 * 128  # two batches of 128
    cap = TrainingFlopsCap(2 * per_epoch, spent=lambda: trainer.flops.total.training, per_sample=lambda: 0.0)
    seen = _learning_rates(EpochLoop(trainer, EPOCHS, cap=cap))
    assert len(seen) == 2  # the cap ends the run after two epochs' compute
    assert seen[1][0] == pytest.approx(spec.host_lr * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        OptimConfig(lr_schedule="linear")


@pytest.mark.parametrize(
    ("schedule", "progress", "expected"),
    [
        ("cosine", 0.75, 0.5 * (1 + math.cos(math.pi * 0.75))),  # restarts do not move a plain cosine
        ("cosine-restarts", 0.4, 0.5 * (1 + math.cos(math.pi * 0.4))),  # before: the run's cosine
        ("cosine-restarts", 0.5, 1.0),  # back at the peak at a growth step
        ("cosine-restarts", 0.75, 0.5),  # then annealed to 0 by the end
        ("cosine-restarts", 1.0, 0.0),
    ],
)
def test_cosine_restarts_at_the_plans_growth_steps(schedule: str, progress: float, expected: float) -> None:
    assert lr_scale(schedule, progress, restarts=(0.5,)) == pytest.approx(expected, abs=1e-12)


def test_a_restart_outside_the_run_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lr_restarts are fractions of the run in \[0, 1\), got \[1.0\]"):
        OptimConfig(lr_schedule="cosine-restarts", lr_restarts=(1.0,))


def _step_rates(trainer, epochs: int) -> list[float]:
    """The host's learning rate at every optimiser step of an `epochs`-epoch run (nothing planted)."""
    seen: list[float] = []
    trainer.optimizers.host.register_step_pre_hook(lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"]))
    loop = EpochLoop(trainer, epochs)
    result = loop.start()
    while result is not None:
        result = loop.step([])
    return seen


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_warmup_ramps_every_step_linearly_then_follows_the_schedule(schedule: str) -> None:
    # 4 epochs of 2 steps, a warmup over half the run: steps 1-4 ramp by quarters (the rate at
    # each step's end, so the first is above 0); then the schedule's rate at each epoch's start.
    spec = dataclasses.replace(get_task("digits"), lr_schedule=schedule, lr_warmup=0.5, max_train_batches=2, max_val_batches=1)
    rates = _step_rates(build_trainer(spec, spec.load_data(), seed=0), EPOCHS)
    assert len(rates) == 2 * EPOCHS
    for step, rate in enumerate(rates):
        at = (step + 1) / 8 if step < 4 else step // 2 / EPOCHS
        factor = 1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * at))
        assert rate == pytest.approx(spec.host_lr * factor * min(1.0, at / 0.5))


def test_a_warmup_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_warmup must be <= 1"):
        OptimConfig(lr_warmup=1.5)
