"""TensorBoard output: watch a growing network live in the tool people already use.

Scalars come from ``EPOCH_COMPLETED`` (losses, accuracies, parameters, per-slot
alpha / stage / counterfactual when the event carries ``slots``) and from
``PPO_UPDATE`` (every number in its data, under ``ppo/``); lifecycle events and
rollbacks become text so their order can be read next to the curves. A job without
telemetry events (`esper train offline`'s loss history) writes its numbers with
`add_numbers`, the same way a PPO update's are written.

A resumed run passes `purge_step` (the first step it writes again): TensorBoard then
hides what the interrupted session wrote from that step on, so the curves continue
from the checkpoint instead of showing the replayed steps twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from esper.leyline import LIFECYCLE_EVENTS, SeedStage, TelemetryEvent, TelemetryEventType
from esper.nissa.outputs import format_event_line

_EPOCH_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "host_params": "params/host",
    "seed_params": "params/seeds",
}

# Keys of a PPO_UPDATE that are its step, not a curve.
_STEP_KEYS = frozenset({"round", "epoch"})


def _numbers(prefix: str, data: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number in ``data``, nested dicts joined with ``/``.

    Booleans and non-numbers (strings, lists, None) are skipped: they are not curves.
    """
    for key, value in data.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            yield from _numbers(tag, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, float(value)


class TensorBoardOutput:
    """Telemetry output writing a TensorBoard event file into ``log_dir``.

    The step of a PPO update is its ``round`` (data key) or else the event's epoch.
    """

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: int = 10, purge_step: int | None = None) -> None:
        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir, flush_secs=flush_secs, purge_step=purge_step)

    def __repr__(self) -> str:
        return f"TensorBoardOutput({self.log_dir!r})"

    def handle(self, event: TelemetryEvent) -> None:
        kind = event.event_type
        if kind == TelemetryEventType.EPOCH_COMPLETED:
            self._epoch(event.epoch, event.data)
        elif kind == TelemetryEventType.PPO_UPDATE:
            step = event.data.get("round", event.epoch)
            self.add_numbers("ppo", {k: v for k, v in event.data.items() if k not in _STEP_KEYS}, step)
        elif kind in LIFECYCLE_EVENTS or kind == TelemetryEventType.GOVERNOR_ROLLBACK:
            self._writer.add_text("lifecycle", format_event_line(event).plain, event.epoch)
        elif kind == TelemetryEventType.RUN_FINISHED:
            self._writer.flush()

    def add_numbers(self, prefix: str, data: Mapping[str, Any], step: int | None) -> None:
        """Every number in `data` as a scalar under `prefix/` (nested dicts joined with ``/``)."""
        for tag, value in _numbers(prefix, data):
            self._writer.add_scalar(tag, value, step)

    def _epoch(self, step: int | None, data: Mapping[str, Any]) -> None:
        add = self._writer.add_scalar
        for key, tag in _EPOCH_SCALARS.items():
            if key in data:
                add(tag, data[key], step)
        for slot_id, contribution in data.get("contributions", {}).items():
            add(f"slot/{slot_id}/counterfactual", contribution, step)
        for slot_id, report in data.get("slots", {}).items():
            # An empty slot is dormant with nothing blended in.
            report = report or {"stage": SeedStage.DORMANT.name, "alpha": 0.0}
            add(f"slot/{slot_id}/stage", SeedStage[report["stage"]].value, step)
            add(f"slot/{slot_id}/alpha", report["alpha"], step)
        for slot_id, stack in data.get("fossils", {}).items():
            add(f"slot/{slot_id}/stack_depth", len(stack), step)
        for tag, value in _numbers("flops", data.get("flops") or {}):  # None: not counted
            add(tag, value, step)

    def close(self) -> None:
        self._writer.close()
