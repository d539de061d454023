"""Telemetry: fan events out to files, the console and analytics. Imports only esper.leyline."""

from esper.nissa.analytics import BlueprintAnalytics
from esper.nissa.hub import TelemetryHub, TelemetryOutput, ThreadedOutput
from esper.nissa.outputs import (
    JsonlEventOutput,
    JsonlWriter,
    RichConsoleOutput,
    format_event_line,
    numbered_jsonl,
    read_jsonl,
)

__all__ = [
    "BlueprintAnalytics",
    "JsonlEventOutput",
    "JsonlWriter",
    "RichConsoleOutput",
    "TelemetryHub",
    "TelemetryOutput",
    "ThreadedOutput",
    "format_event_line",
    "numbered_jsonl",
    "read_jsonl",
]
