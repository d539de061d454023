"""Blueprint choosers for the heuristic. Any object with this interface works (e.g. simic's curriculum)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol


class BlueprintChooser(Protocol):
    def select_blueprint(self, allowed: Collection[str] | None = None) -> str:
        """The blueprint to plant next, among `allowed` when given (never empty)."""
        ...

    def record_outcome(self, blueprint: str, success: bool, reward: float) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BlueprintRotation:
    """Round-robin over blueprints; a culled blueprint sits out its next `cull_penalty` turns."""

    def __init__(self, blueprints: list[str], cull_penalty: int = 2) -> None:
        if not blueprints:
            raise ValueError("BlueprintRotation needs at least one blueprint")
        self.blueprints = list(blueprints)
        self.cull_penalty = cull_penalty
        self.next_index = 0
        self.penalty = {name: 0 for name in self.blueprints}

    def select_blueprint(self, allowed: Collection[str] | None = None) -> str:
        order = self.blueprints[self.next_index :] + self.blueprints[: self.next_index]
        order = [name for name in order if allowed is None or name in allowed]
        if not order:
            raise ValueError(f"none of the allowed blueprints {sorted(allowed or ())} is in this rotation")
        # First unpenalised blueprint in rotation order; if all are penalised, the least penalised.
        choice = min(order, key=lambda name: (self.penalty[name] > 0, self.penalty[name], order.index(name)))
        for name in self.blueprints:
            self.penalty[name] = max(self.penalty[name] - 1, 0)
        self.next_index = (self.blueprints.index(choice) + 1) % len(self.blueprints)
        return choice

    def record_outcome(self, blueprint: str, success: bool, reward: float) -> None:
        if blueprint not in self.penalty:
            raise ValueError(f"Unknown blueprint '{blueprint}'. Known: {', '.join(self.blueprints)}")
        if not success:
            self.penalty[blueprint] = self.cull_penalty

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": self.next_index, "penalty": dict(self.penalty)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_index = state["next_index"]
        self.penalty = dict(state["penalty"])
