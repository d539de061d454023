"""Strict JSON: what Esper writes parses anywhere, and what older versions wrote still reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from esper.nissa import JsonlWriter, numbered_jsonl, read_jsonl, strict_json
from esper.nissa.run_folder import read_json, write_json

NAN, INF = float("nan"), float("inf")


def parse_strictly(text: str):
    """A parser as strict as RFC 8259 (jq, browsers): bare NaN / Infinity are errors."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_writer_writes_every_non_finite_float_as_null(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"loss": NAN, "up": INF, "down": -INF, "ok": 0.5})
        writer.write({
            "np": np.float32("nan"), "np64": np.float64("inf"), "tensor": torch.tensor([1.0, NAN]),
            "nested": {"values": [1.0, (NAN, 2.0)], "array": np.array([INF, 3.0])},
        })  # fmt: skip
    lines = [parse_strictly(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"loss": None, "up": None, "down": None, "ok": 0.5}
    assert lines[1] == {
        "np": None, "np64": None, "tensor": [1.0, None],
        "nested": {"values": [1.0, [None, 2.0]], "array": [None, 3.0]},
    }  # fmt: skip
    assert read_jsonl(path) == lines


def test_finite_records_are_written_as_plain_json(tmp_path: Path) -> None:
    record = {"epoch": 3, "loss": 0.25, "done": True, "name": "b[1]", "none": None}
    assert strict_json.dumps(record) == json.dumps(record)
    assert strict_json.dumps(record, indent=2) == json.dumps(record, indent=2)


def test_bare_tokens_of_older_files_read_as_none(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text('{"a": NaN}\n\n{"b": [Infinity, -Infinity, 1.5]}\n')
    assert read_jsonl(path) == [{"a": None}, {"b": [None, None, 1.5]}]
    assert list(numbered_jsonl(path)) == [(1, {"a": None}), (3, {"b": [None, None, 1.5]})]


def test_corrupt_line_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": nope}\n{"a": 3}\n')
    with pytest.raises(ValueError, match="corrupt JSON on line 2"):
        read_jsonl(path)


def test_run_folder_json_files_are_strict_and_read_back_as_none(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"final_val_loss": NAN, "best": [INF, 0.5], "where": tmp_path})
    assert parse_strictly(path.read_text()) == {"final_val_loss": None, "best": [None, 0.5], "where": str(tmp_path)}
    path.write_text('{"old": NaN}')  # as an older Esper wrote it
    assert read_json(path) == {"old": None}


def test_unknown_objects_are_still_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        strict_json.dumps({"x": object()})
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        strict_json.dumps({"x": object(), "y": NAN})
