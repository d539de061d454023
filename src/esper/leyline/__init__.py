"""Shared contracts: stages, gates, actions, telemetry, reports. Imports nothing from esper."""

from esper.leyline.actions import WAIT, Action, ActionKind, Operator
from esper.leyline.config import GrowthBudget, TaskConfig
from esper.leyline.gates import GateLevel, GateResult
from esper.leyline.outcomes import (
    FATES,
    OUTCOME_EVENTS,
    OUTCOME_NAMES,
    OUTCOME_OF_STAGE,
    PlantedSeed,
    SeedLedger,
)
from esper.leyline.reports import FlopsReport, FossilReport, SeedReport, StageTransition
from esper.leyline.signals import Controller, EpochSignals
from esper.leyline.stages import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    FAILURE_STAGES,
    GROWING_STAGES,
    MEASURED_STAGES,
    NEXT_STAGE,
    OUTCOME_STAGES,
    SEED_RUNS_STAGES,
    VALID_TRANSITIONS,
    SeedStage,
    is_valid_transition,
)
from esper.leyline.telemetry import LIFECYCLE_EVENTS, TelemetryEvent, TelemetryEventType

__all__ = [
    "ACTIVE_STAGES",
    "BLENDED_STAGES",
    "FAILURE_STAGES",
    "FATES",
    "GROWING_STAGES",
    "LIFECYCLE_EVENTS",
    "MEASURED_STAGES",
    "NEXT_STAGE",
    "OUTCOME_EVENTS",
    "OUTCOME_NAMES",
    "OUTCOME_OF_STAGE",
    "OUTCOME_STAGES",
    "SEED_RUNS_STAGES",
    "VALID_TRANSITIONS",
    "WAIT",
    "Action",
    "ActionKind",
    "Controller",
    "EpochSignals",
    "FlopsReport",
    "FossilReport",
    "GateLevel",
    "GateResult",
    "GrowthBudget",
    "Operator",
    "PlantedSeed",
    "SeedLedger",
    "SeedReport",
    "SeedStage",
    "StageTransition",
    "TaskConfig",
    "TelemetryEvent",
    "TelemetryEventType",
    "is_valid_transition",
]
