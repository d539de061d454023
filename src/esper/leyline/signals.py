"""What a controller sees at the end of each epoch, and what it must implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from esper.leyline.actions import Action
from esper.leyline.reports import SeedReport


@dataclass(slots=True)
class EpochSignals:
    epoch: int
    total_epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_params: int
    seed_params: int
    # One entry per slot; None for an empty (DORMANT) slot.
    slots: dict[str, SeedReport | None] = field(default_factory=dict)
    rolled_back: bool = False


class Controller(Protocol):
    """Decides, once per epoch, what to grow, keep or remove."""

    def decide(self, signals: EpochSignals) -> list[Action]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
