import enum
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from esper.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper.nissa import JsonlEventOutput, JsonlWriter, RichConsoleOutput, read_jsonl

E = TelemetryEventType


class Colour(enum.Enum):
    RED = (255, 0, 0)


# ----------------------------------------------------------------------------- JSONL


def test_writer_flushes_each_line_before_close(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # parent created on demand
    writer = JsonlWriter(path)
    writer.write({"epoch": 1, "loss": 0.5})
    assert read_jsonl(path) == [{"epoch": 1, "loss": 0.5}]
    writer.write({"epoch": 2, "loss": 0.4})
    assert len(path.read_text().splitlines()) == 2
    writer.close()


def test_writer_appends_across_instances(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"a": 1})
    with JsonlWriter(path) as writer:
        writer.write({"a": 2})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_writer_encodes_enums_numpy_torch_and_paths(tmp_path):
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as writer:
        writer.write(
            {
                "stage": SeedStage.FOSSILIZED,
                "kind": E.SEED_CULLED,
                "colour": Colour.RED,
                "np_float": np.float32(0.5),
                "np_int": np.int64(7),
                "torch_scalar": torch.tensor(0.25),
                "vector": np.arange(3),
                "path": Path("/tmp/x"),
            }
        )
    (record,) = read_jsonl(path)
    assert record == {
        "stage": 7,
        "kind": "seed_culled",
        "colour": "RED",
        "np_float": 0.5,
        "np_int": 7,
        "torch_scalar": 0.25,
        "vector": [0, 1, 2],
        "path": "/tmp/x",
    }


def test_writer_rejects_unknown_types(tmp_path):
    with JsonlWriter(tmp_path / "m.jsonl") as writer, pytest.raises(TypeError):
        writer.write({"x": object()})


def test_read_skips_truncated_final_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_raises_on_corrupt_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": oops}\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_read_accepts_final_line_without_newline(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_resume_after_crash_drops_partial_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "trunc')
    with JsonlWriter(path) as writer:
        writer.write({"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]


def test_event_output_writes_event_dicts(tmp_path):
    path = tmp_path / "events.jsonl"
    output = JsonlEventOutput(path)
    output.handle(TelemetryEvent(E.SEED_GERMINATED, epoch=3, slot_id="block2", data={"params": 10}))
    output.close()
    (record,) = read_jsonl(path)
    assert record["event_type"] == "seed_germinated"
    assert record["epoch"] == 3
    assert record["slot_id"] == "block2"
    assert record["data"] == {"params": 10}
    json.dumps(record)


# ----------------------------------------------------------------------------- console


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=120), buffer


def _epoch(epoch: int, **extra: float) -> TelemetryEvent:
    data = {
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5,
        "val_loss": 1.1 / epoch,
        "val_accuracy": 0.4 + epoch / 100,
        **extra,
    }
    return TelemetryEvent(E.EPOCH_COMPLETED, epoch=epoch, data=data)


def _run(output: RichConsoleOutput) -> None:
    output.handle(
        TelemetryEvent(
            E.RUN_STARTED, data={"total_epochs": 5, "task": "cifar10", "mode": "heuristic"}
        )
    )
    output.handle(
        TelemetryEvent(
            E.SEED_GERMINATED,
            epoch=2,
            slot_id="block2",
            seed_id="seed-3",
            blueprint_id="conv_light",
        )
    )
    for epoch in range(1, 6):
        output.handle(_epoch(epoch, active_seeds=1, params_added=1234))
    output.handle(
        TelemetryEvent(
            E.SEED_FOSSILIZED,
            epoch=5,
            slot_id="block2",
            seed_id="seed-3",
            blueprint_id="conv_light",
            data={"counterfactual_contribution": 0.0312, "stack_depth": 2},
        )
    )
    output.handle(
        TelemetryEvent(
            E.SEED_CULLED,
            epoch=5,
            slot_id="block1",
            seed_id="seed-4",
            blueprint_id="[odd]",
            message="stalled",
        )
    )
    output.handle(TelemetryEvent(E.GOVERNOR_ROLLBACK, epoch=5, message="loss spike"))
    output.handle(TelemetryEvent(E.RUN_FINISHED))


def test_console_shows_lifecycle_lines_and_final_bar():
    console, buffer = _console()
    _run(RichConsoleOutput(console))
    text = buffer.getvalue()
    assert "epoch   2  block2  seed-3  conv_light  GERMINATED" in text
    assert "epoch   5  block2  seed-3  conv_light  FOSSILIZED (contribution +0.031, stack of 2)" in text
    assert "epoch   5  block1  seed-4  [odd]  CULLED  stalled" in text
    assert "epoch   5  ROLLBACK  loss spike" in text
    assert "cifar10 heuristic" in text
    assert "5/5" in text
    assert "acc 50.00%/45.00%" in text
    assert "seeds 1" in text and "+params 1,234" in text


def test_console_colours_lifecycle_kinds():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="standard", width=120)
    output = RichConsoleOutput(console)
    output.handle(TelemetryEvent(E.SEED_GERMINATED, epoch=1, blueprint_id="bp"))
    output.handle(TelemetryEvent(E.SEED_CULLED, epoch=1, blueprint_id="bp"))
    text = buffer.getvalue()
    assert "\x1b[36mepoch   1  bp  GERMINATED" in text  # cyan
    assert "\x1b[31mepoch   1  bp  CULLED" in text  # red


def test_console_quiet_prints_nothing():
    console, buffer = _console()
    _run(RichConsoleOutput(console, quiet=True))
    assert buffer.getvalue() == ""


def test_console_epoch_without_run_started_and_idempotent_close():
    console, buffer = _console()
    output = RichConsoleOutput(console)
    output.handle(_epoch(1))
    output.close()
    output.close()
    assert "loss 1.0000/1.1000" in buffer.getvalue()
