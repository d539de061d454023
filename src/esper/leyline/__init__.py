"""Shared contracts: stages, gates, actions, telemetry, reports. Imports nothing from esper."""

from esper.leyline.actions import WAIT, Action, ActionKind
from esper.leyline.config import TaskConfig
from esper.leyline.gates import GATE_FOR_STAGE, GateLevel, GateResult
from esper.leyline.reports import SeedReport
from esper.leyline.signals import Controller, EpochSignals
from esper.leyline.stages import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    FAILURE_STAGES,
    VALID_TRANSITIONS,
    SeedStage,
    can_germinate,
    is_active,
    is_failure,
    is_terminal,
    is_valid_transition,
)
from esper.leyline.telemetry import LIFECYCLE_EVENTS, TelemetryEvent, TelemetryEventType

__all__ = [
    "ACTIVE_STAGES",
    "BLENDED_STAGES",
    "FAILURE_STAGES",
    "GATE_FOR_STAGE",
    "LIFECYCLE_EVENTS",
    "VALID_TRANSITIONS",
    "WAIT",
    "Action",
    "ActionKind",
    "Controller",
    "EpochSignals",
    "GateLevel",
    "GateResult",
    "SeedReport",
    "SeedStage",
    "TaskConfig",
    "TelemetryEvent",
    "TelemetryEventType",
    "can_germinate",
    "is_active",
    "is_failure",
    "is_terminal",
    "is_valid_transition",
]
