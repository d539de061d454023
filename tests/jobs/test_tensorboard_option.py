"""`esper train heuristic --tensorboard` logs the run into RUN_DIR/tensorboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from esper.nissa import read_jsonl


def test_heuristic_run_writes_tensorboard_when_asked(heuristic_run: Path) -> None:
    accumulator = EventAccumulator(str(heuristic_run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    metrics = read_jsonl(heuristic_run / "metrics.jsonl")
    logged = accumulator.Scalars("accuracy/val")
    assert [e.step for e in logged] == [m["epoch"] for m in metrics]
    assert [e.value for e in logged] == pytest.approx(
        [m["val_accuracy"] for m in metrics], rel=1e-6
    )
    slots = {f"slot/{slot}/{name}" for slot in metrics[0]["slots"] for name in ("alpha", "stage")}
    assert slots <= set(accumulator.Tags()["scalars"])
