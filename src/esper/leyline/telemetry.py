"""Telemetry event types and the event record every subsystem emits."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class TelemetryEventType(str, Enum):
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    EPOCH_COMPLETED = "epoch_completed"
    SEED_GERMINATED = "seed_germinated"
    SEED_STAGE_CHANGED = "seed_stage_changed"
    SEED_FOSSILIZED = "seed_fossilized"
    SEED_CULLED = "seed_culled"
    SEED_RESET = "seed_reset"
    ISOLATION_VIOLATION = "isolation_violation"
    GOVERNOR_ROLLBACK = "governor_rollback"
    CONTROLLER_DECISION = "controller_decision"
    CHECKPOINT_SAVED = "checkpoint_saved"
    PPO_UPDATE = "ppo_update"


LIFECYCLE_EVENTS = frozenset(
    {
        TelemetryEventType.SEED_GERMINATED,
        TelemetryEventType.SEED_STAGE_CHANGED,
        TelemetryEventType.SEED_FOSSILIZED,
        TelemetryEventType.SEED_CULLED,
        TelemetryEventType.SEED_RESET,
    }
)


@dataclass(slots=True)
class TelemetryEvent:
    event_type: TelemetryEventType
    epoch: int | None = None
    slot_id: str | None = None
    seed_id: str | None = None
    blueprint_id: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TelemetryEvent:
        """Inverse of `to_dict` (for replaying events.jsonl)."""
        return cls(**{**record, "event_type": TelemetryEventType(record["event_type"])})

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["event_type"] = self.event_type.value
        return record
