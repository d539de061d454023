"""Controller actions (validation) and telemetry records (JSON-serialisable)."""

from __future__ import annotations

import json

import pytest

from esper.leyline import (
    WAIT,
    Action,
    ActionKind,
    SeedReport,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
)


def test_wait_needs_nothing() -> None:
    action = Action(ActionKind.WAIT)
    assert action.slot_id is None and action.blueprint_id is None
    assert WAIT.kind == ActionKind.WAIT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": ActionKind.GERMINATE, "slot_id": "block2", "blueprint_id": "norm"},
        {"kind": ActionKind.FOSSILIZE, "slot_id": "block2"},
        {"kind": ActionKind.CULL, "slot_id": "block2", "reason": "stalled"},
        {"kind": ActionKind.WAIT, "slot_id": "block2"},
    ],
)
def test_valid_actions(kwargs: dict) -> None:
    action = Action(**kwargs)
    assert action.kind == kwargs["kind"]
    assert action.slot_id == kwargs["slot_id"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": ActionKind.GERMINATE, "blueprint_id": "norm"}, "slot_id"),
        ({"kind": ActionKind.GERMINATE, "slot_id": "block2"}, "blueprint_id"),
        ({"kind": ActionKind.FOSSILIZE}, "slot_id"),
        ({"kind": ActionKind.CULL}, "slot_id"),
    ],
)
def test_invalid_actions_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Action(**kwargs)


@pytest.mark.parametrize("event_type", list(TelemetryEventType))
def test_every_event_type_serialises(event_type: TelemetryEventType) -> None:
    event = TelemetryEvent(event_type=event_type)
    record = json.loads(json.dumps(event.to_dict()))
    assert record["event_type"] == event_type.value
    assert isinstance(record["event_type"], str)


def test_telemetry_event_to_dict_round_trips_through_json() -> None:
    event = TelemetryEvent(
        event_type=TelemetryEventType.SEED_STAGE_CHANGED,
        epoch=7,
        slot_id="block2",
        seed_id="seed-1",
        blueprint_id="conv_light",
        message="TRAINING -> BLENDING",
        data={"stage": "BLENDING", "alpha": 0.25, "nested": {"values": [1, 2.5, None]}},
    )
    record = event.to_dict()
    text = json.dumps(record, allow_nan=False)
    back = json.loads(text)
    assert back == {
        "event_type": "seed_stage_changed",
        "epoch": 7,
        "slot_id": "block2",
        "seed_id": "seed-1",
        "blueprint_id": "conv_light",
        "message": "TRAINING -> BLENDING",
        "data": {"stage": "BLENDING", "alpha": 0.25, "nested": {"values": [1, 2.5, None]}},
        "timestamp": event.timestamp,
    }
    assert isinstance(back["timestamp"], float)
    # to_dict copies: mutating the record does not touch the event.
    record["data"]["stage"] = "CHANGED"
    assert event.data["stage"] == "BLENDING"


def test_events_do_not_share_data_dicts() -> None:
    a = TelemetryEvent(event_type=TelemetryEventType.RUN_STARTED)
    b = TelemetryEvent(event_type=TelemetryEventType.RUN_STARTED)
    a.data["x"] = 1
    assert b.data == {}


def test_seed_report_to_dict_is_json() -> None:
    report = SeedReport(
        seed_id="seed-1",
        blueprint_id="norm",
        slot_id="block2",
        stage=SeedStage.BLENDING,
        epochs_total=4,
        params=128,
        alpha=0.5,
        counterfactual_contribution=None,
        seed_gradient_norm_ratio=0.2,
        is_healthy=True,
        best_val_accuracy=0.6,
        accuracy_at_blending_start=0.5,
        gradient_norm_avg=0.1,
    )
    back = json.loads(json.dumps(report.to_dict()))
    assert back["stage"] == "BLENDING"
    assert back["counterfactual_contribution"] is None
    assert back["params"] == 128
