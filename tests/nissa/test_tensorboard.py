"""TensorBoardOutput: what it writes is read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from esper.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper.nissa import TelemetryHub
from esper.nissa.tensorboard import TensorBoardOutput


def _epoch(epoch: int, alpha: float) -> TelemetryEvent:
    seed = {"stage": "BLENDING", "alpha": alpha, "blueprint_id": "norm", "seed_id": "s1"}
    data = {
        "epoch": epoch,
        "train_loss": 1.0 / (epoch + 1),
        "val_loss": 1.5 / (epoch + 1),
        "train_accuracy": 0.5 + 0.1 * epoch,
        "val_accuracy": 0.4 + 0.1 * epoch,
        "host_params": 496,
        "seed_params": 16,
        "contributions": {"block2": 0.01 * epoch},
        "slots": {"block2": seed, "block3": None},
        "fossils": {"block2": [], "block3": [{"seed_id": "s0", "blueprint_id": "norm"}] * epoch},
        "flops": {"training": 100.0, "cumulative_training": 100.0 * (epoch + 1), "inference_per_sample": 5.0},
    }
    return TelemetryEvent(TelemetryEventType.EPOCH_COMPLETED, epoch=epoch, data=data)


def _read(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _values(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value)) for e in accumulator.Scalars(tag)]


def test_epochs_slots_lifecycle_and_ppo_are_logged(tmp_path: Path) -> None:
    with TelemetryHub() as hub:
        hub.add_output(TensorBoardOutput(tmp_path))
        hub.emit(
            TelemetryEvent(
                TelemetryEventType.SEED_GERMINATED,
                epoch=0,
                slot_id="block2",
                seed_id="s1",
                blueprint_id="norm",
            )
        )
        for epoch, alpha in enumerate((0.0, 0.5, 1.0)):
            hub.emit(_epoch(epoch, alpha))
        ppo = {
            "round": 7,
            "return": {"mean": 0.9, "std": 0.1},
            "entropy": 1.3,
            "rewards": {"rent": -0.1},
            "note": "x",
        }
        hub.emit(TelemetryEvent(TelemetryEventType.PPO_UPDATE, data=ppo))
    accumulator = _read(tmp_path)

    assert _values(accumulator, "accuracy/val") == [(0, 0.4), (1, 0.5), (2, 0.6)]
    assert _values(accumulator, "loss/train")[0] == (0, 1.0)
    assert _values(accumulator, "params/seeds")[-1] == (2, 16)
    assert _values(accumulator, "slot/block2/alpha") == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert _values(accumulator, "slot/block2/stage")[0] == (0, SeedStage.BLENDING.value)
    assert _values(accumulator, "slot/block3/stage")[0] == (0, SeedStage.DORMANT.value)
    assert _values(accumulator, "slot/block2/counterfactual")[-1] == (2, 0.02)
    assert _values(accumulator, "slot/block3/stack_depth") == [(0, 0), (1, 1), (2, 2)]
    assert _values(accumulator, "flops/cumulative_training") == [(0, 100.0), (1, 200.0), (2, 300.0)]
    assert _values(accumulator, "ppo/entropy") == [(7, 1.3)]
    assert _values(accumulator, "ppo/return/mean") == [(7, 0.9)]
    assert _values(accumulator, "ppo/rewards/rent") == [(7, -0.1)]
    # Strings are not curves, and the round is the step.
    assert not {"ppo/note", "ppo/round"} & set(accumulator.Tags()["scalars"])
    (text,) = accumulator.Tensors("lifecycle/text_summary")
    assert text.step == 0 and b"GERMINATED" in text.tensor_proto.string_val[0]
