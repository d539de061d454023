"""What a controller can decide each epoch."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ActionKind(IntEnum):
    WAIT = 0
    GERMINATE = 1
    FOSSILIZE = 2
    CULL = 3


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    slot_id: str | None = None
    blueprint_id: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.kind != ActionKind.WAIT and self.slot_id is None:
            raise ValueError(f"{self.kind.name} needs a slot_id")
        if self.kind == ActionKind.GERMINATE and self.blueprint_id is None:
            raise ValueError("GERMINATE needs a blueprint_id")


WAIT = Action(ActionKind.WAIT)


@dataclass(frozen=True, slots=True)
class Operator:
    """How a blueprint grows the network, for a controller that decides what and how much:
    `kind` "branch" (a new module beside the host's features), "width" (units added to the
    slot's layer) or "depth" (a layer inserted, starting from the host's function); `scale`
    the size of the step (for "width", the fraction of the layer's units it adds)."""

    kind: str = "branch"
    scale: float = 1.0
