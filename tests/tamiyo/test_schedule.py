"""The schedule controller: grows on a fixed plan, through the real lifecycle."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import epoch_signals, seed_report

from esper.leyline import ActionKind, SeedStage
from esper.runtime.data import load_digits
from esper.runtime.session import build_trainer
from esper.runtime.tasks import get_task
from esper.tamiyo import PlannedGrowth, ScheduleController, check_plan
from esper.tolaria.engine import EpochLoop, run_epochs


def _run(plan: list[PlannedGrowth], epochs: int) -> tuple[list, ScheduleController]:
    spec = get_task("digits")
    trainer = build_trainer(spec, load_digits(), seed=0, fast_mode=True, blueprints=["norm", "deepen"])
    moves = []
    loop = EpochLoop(trainer, epochs, on_epoch=lambda result, outcomes, transitions: moves.extend(transitions))
    controller = ScheduleController(plan)
    run_epochs(loop, controller)
    return moves, controller


def test_the_plan_is_planted_when_due_and_kept_once_measured() -> None:
    plan = [PlannedGrowth(0.0, "block2", "deepen"), PlannedGrowth(0.25, "block2", "norm")]
    moves, controller = _run(plan, epochs=24)
    germinated = [(m.epoch, m.blueprint_id) for m in moves if m.to_stage == SeedStage.GERMINATED]
    # Both steps planted, in order; the second waits for its slot (the first seed's lifecycle),
    # so it is planted no earlier than it is due (epoch 6 of 24).
    assert [b for _, b in germinated] == ["deepen", "norm"]
    assert germinated[0][0] == 0 and germinated[1][0] >= 6
    assert controller.next_step == 2
    # A seed the plan planted is kept at the first decision after its probation is measured:
    # the plan does not wait for a judgement (a gate may still refuse it: then nothing moves).
    on_probation = {m.seed_id: m.epoch for m in moves if m.to_stage == SeedStage.PROBATIONARY}
    kept = {m.seed_id: m.epoch for m in moves if m.to_stage == SeedStage.FOSSILIZED}
    assert all(epoch == on_probation[seed_id] + 1 for seed_id, epoch in kept.items())


def test_a_measured_seed_on_probation_is_kept_before_the_next_step_is_planted() -> None:
    report = seed_report(SeedStage.PROBATIONARY, seed_id="block2-seed1", slot_id="block2", epochs_total=6, params=8,
                         contribution=-0.001)  # fmt: skip
    signals = epoch_signals(10, total_epochs=20, train_loss=0.1, train_accuracy=0.9, val_loss=0.1, val_accuracy=0.9,
                            host_params=100, seed_params=8, slots={"block2": report, "block3": None})  # fmt: skip
    controller = ScheduleController([PlannedGrowth(0.0, "block3", "norm")])
    [action] = controller.decide(signals)
    assert (action.kind, action.slot_id) == (ActionKind.FOSSILIZE, "block2")
    assert controller.next_step == 0
    [action] = controller.decide(dataclasses.replace(signals, slots={"block2": None, "block3": None}))
    assert (action.kind, action.slot_id, action.blueprint_id) == (ActionKind.GERMINATE, "block3", "norm")


def test_the_schedule_resumes_where_it_was() -> None:
    plan = [PlannedGrowth(0.0, "block2", "norm"), PlannedGrowth(0.5, "block2", "norm")]
    controller = ScheduleController(plan)
    controller.next_step = 1
    restored = ScheduleController(plan)
    restored.load_state_dict(controller.state_dict())
    assert restored.next_step == 1
    with pytest.raises(ValueError, match="another schedule"):
        ScheduleController(plan[:1]).load_state_dict(controller.state_dict())


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([], "the plan is empty"),
        ([PlannedGrowth(0.0, "block9", "norm")], r"unknown slot 'block9'; the run's slots: block2"),
        ([PlannedGrowth(0.0, "block2", "nope")], r"unknown blueprint 'nope'; available: norm, deepen"),
        ([PlannedGrowth(1.0, "block2", "norm")], r"'at' is a fraction of the run, in \[0, 1\)"),
        ([PlannedGrowth(0.5, "block2", "norm"), PlannedGrowth(0.1, "block2", "norm")], "in order of 'at'"),
        ([PlannedGrowth(0.9, "block2", "norm")], "due at epoch 18 of 20, and a seed needs 9 epochs to be kept"),
    ],
)
def test_a_plan_the_run_cannot_carry_out_is_refused_by_step(plan, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_plan(plan, ["block2"], ["norm", "deepen"], total_epochs=20, lifecycle_epochs=9)
