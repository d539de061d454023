"""The fixed-plan controller: grow toward a target architecture at set points of the run.

This is the literature's baseline for growing networks (progressive stacking, MSG, LEMON's
schedules, the one-layer studies): a person decides in advance when, where and what to
grow, typically toward a known big architecture (e.g. 1 -> 2 -> 3 layers). Esper runs each
planted seed through the same lifecycle as any other (train behind the host, blend with
alpha, measure the counterfactual); the plan keeps every seed it planted once it has been
measured on probation, and the gates still guard: G5 refuses a seed that hurts, and a seed
that stalls is culled by the lifecycle clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from esper.leyline import Action, ActionKind, EpochSignals, SeedStage


@dataclass(frozen=True, slots=True)
class PlannedGrowth:
    """Germinate `blueprint` in `slot` once `at` (a fraction of the run's epochs) has passed."""

    at: float
    slot: str
    blueprint: str

    def epoch(self, total_epochs: int) -> int:
        """The first epoch at which this step is due."""
        return math.floor(self.at * total_epochs)


def check_plan(
    plan: Sequence[PlannedGrowth],
    slots: Sequence[str],
    blueprints: Sequence[str],
    total_epochs: int,
    lifecycle_epochs: int,
) -> None:
    """A `ValueError` naming the first step the run cannot carry out: an unknown slot or
    blueprint, a fraction outside [0, 1), steps out of order, or a step so late that its seed
    cannot reach its verdict (`lifecycle_epochs`, `TaskSpec.lifecycle_epochs`) before the end."""
    if not plan:
        raise ValueError("schedule: the plan is empty; give at least one {at, slot, blueprint} step")
    for i, step in enumerate(plan):
        where = f"schedule step {i + 1} ({step.blueprint} in {step.slot} at {step.at:g})"
        if not 0.0 <= step.at < 1.0:
            raise ValueError(f"{where}: 'at' is a fraction of the run, in [0, 1)")
        if i and step.at < plan[i - 1].at:
            raise ValueError(f"{where}: steps must be in order of 'at'")
        if step.slot not in slots:
            raise ValueError(f"{where}: unknown slot '{step.slot}'; the run's slots: {', '.join(slots)}")
        if step.blueprint not in blueprints:
            raise ValueError(
                f"{where}: unknown blueprint '{step.blueprint}'; available: {', '.join(blueprints)}"
            )
        left = total_epochs - step.epoch(total_epochs)
        if left < lifecycle_epochs:
            raise ValueError(
                f"{where}: it is due at epoch {step.epoch(total_epochs)} of {total_epochs}, and a seed "
                f"needs {lifecycle_epochs} epochs to be kept: plant it earlier or run longer"
            )


class ScheduleController:
    """Implements the `Controller` protocol with a fixed plan of `PlannedGrowth` steps.

    One action per epoch, as every controller (so its runs record step for step): a seed
    measured on probation is fossilized first; otherwise the next step is planted once it is
    due and its slot holds no live seed (a busy slot delays it, and the steps after it).
    """

    def __init__(self, plan: Sequence[PlannedGrowth]) -> None:
        self.plan = tuple(plan)
        self.next_step = 0

    def decide(self, signals: EpochSignals) -> list[Action]:
        for slot_id, report in signals.slots.items():
            if (
                report is not None
                and report.stage == SeedStage.PROBATIONARY
                and report.counterfactual_contribution is not None
            ):
                reason = f"planned; contribution {report.counterfactual_contribution:+.4f}"
                return [Action(ActionKind.FOSSILIZE, slot_id, reason=reason)]
        if self.next_step == len(self.plan):
            return []
        step = self.plan[self.next_step]
        if signals.epoch < step.epoch(signals.total_epochs) or signals.slots.get(step.slot) is not None:
            return []
        self.next_step += 1
        reason = f"planned at {step.at:.0%} of the run (step {self.next_step} of {len(self.plan)})"
        return [Action(ActionKind.GERMINATE, step.slot, step.blueprint, reason=reason)]

    def state_dict(self) -> dict[str, Any]:
        return {"plan": [asdict(step) for step in self.plan], "next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = tuple(PlannedGrowth(**step) for step in state["plan"])
        if saved != self.plan:
            raise ValueError("this checkpoint was written under another schedule: resume it with its own plan")
        self.next_step = state["next_step"]
