"""The controller that never grows anything: the host trained alone."""

from __future__ import annotations

from typing import Any

from esper.leyline import Action, EpochSignals


class NoGrowthController:
    def decide(self, signals: EpochSignals) -> list[Action]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
