"""The growth budget: whether planting a seed keeps the grown network within the run's limits.

A candidate's cost is known before it is planted: the FLOPs meter's `seed_cost`
(its blueprint's module built on the meta device and counted alone on one sample
of the features entering its slot's live seed: nothing computed, no random number
drawn, so checking never changes a run). The grown network's inference FLOPs per
sample are what growth has kept (the host with its fossils) plus each live seed's
own cost at full strength, and the candidate's: a seed keeps its input's shape and
leaves the host's own operations as they are, so the costs add up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from esper.kasmina.host import SeededModel
from esper.leyline import ACTIVE_STAGES, GrowthBudget
from esper.tolaria.flop_account import FlopAccount
from esper.tolaria.flops import FlopMeter

__all__ = ["BudgetGuard", "SeedCost"]


@dataclass(frozen=True, slots=True)
class SeedCost:
    """Parameters and inference FLOPs per sample: of one seed, or of all that growth added."""

    params: int
    inference_flops: float


class BudgetGuard:
    """Checks germinations of `blueprints` against a `GrowthBudget` (see the module docstring)."""

    def __init__(self, model: SeededModel, flops: FlopAccount, budget: GrowthBudget, blueprints: Sequence[str]) -> None:
        self.model = model
        self.flops = flops
        self.budget = budget
        self.blueprints = tuple(blueprints)

    def _meter(self) -> FlopMeter:
        """The run's FLOPs meter; a budget cannot be kept without one (a `ValueError` says why)."""
        try:
            return self.flops.measured()
        except RuntimeError as err:
            raise ValueError(
                f"the growth budget ({self.budget.describe()}) needs what seeds cost, measured on meta "
                f"tensors, and {err}. Leave the budget out, or make the forward run on meta tensors"
            ) from None

    def seed_cost(self, slot_id: str, blueprint: str) -> SeedCost:
        """What a seed of `blueprint` in `slot_id` adds: its parameters and inference FLOPs."""
        cost = self._meter().seed_cost(slot_id, blueprint)
        return SeedCost(cost.params, cost.inference)

    def grown(self) -> SeedCost:
        """Growth so far: parameters added (fossils and live seeds) and the inference FLOPs per
        sample of the whole network with every live seed at full strength."""
        flops = self._meter().committed_inference()
        for slot_id, slot in self.model.seed_slots.items():
            if slot.stage in ACTIVE_STAGES and slot.seed is not None:
                flops += self.seed_cost(slot_id, slot.state.blueprint_id).inference_flops
        return SeedCost(self.model.seed_param_count(), flops)

    def refusal(self, slot_id: str, blueprint: str, grown: SeedCost | None = None) -> str | None:
        """Why planting `blueprint` in `slot_id` now would break the budget; None if it fits."""
        budget = self.budget
        grown = self.grown() if grown is None else grown
        cost = self.seed_cost(slot_id, blueprint)
        params = grown.params + cost.params
        if budget.max_params_added is not None and params > budget.max_params_added:
            return (
                f"{blueprint} in slot '{slot_id}' adds {cost.params:,} params: {params:,} added in all, "
                f"over budget.max_params_added {budget.max_params_added:,}"
            )
        flops = grown.inference_flops + cost.inference_flops
        if budget.max_inference_flops is not None and flops > budget.max_inference_flops:
            return (
                f"{blueprint} in slot '{slot_id}' costs {cost.inference_flops:.4g} FLOPs per sample: the "
                f"network would cost {flops:.4g}, over budget.max_inference_flops {budget.max_inference_flops:.4g}"
            )
        return None

    def affordable(self) -> dict[str, list[str]]:
        """Per slot, the blueprints whose germination there now stays within the budget."""
        grown = self.grown()
        return {
            slot_id: [b for b in self.blueprints if self.refusal(slot_id, b, grown) is None]
            for slot_id in self.model.seed_slots
        }

    def left(self) -> dict[str, float]:
        """Per limit the budget sets, the fraction of it growth has not used yet (in [0, 1]; the
        inference limit is the whole network's, so the host's own cost is never left)."""
        grown, budget = self.grown(), self.budget
        left = {}
        if budget.max_params_added is not None:
            left["max_params_added"] = 1.0 - grown.params / budget.max_params_added
        if budget.max_inference_flops is not None:
            left["max_inference_flops"] = 1.0 - grown.inference_flops / budget.max_inference_flops
        return {limit: min(max(fraction, 0.0), 1.0) for limit, fraction in left.items()}

    def check_startup(self) -> None:
        """A budget the run cannot grow within at all is a mistake: say so before anything runs."""
        grown = self.grown()
        limit = self.budget.max_inference_flops
        if limit is not None and grown.inference_flops > limit:
            raise ValueError(
                f"the host alone costs {grown.inference_flops:.4g} inference FLOPs per sample, over "
                f"budget.max_inference_flops {limit:.4g}: no seed could ever be planted. Raise the "
                "budget or leave it out."
            )
        if any(self.affordable().values()):
            return
        slot_id, blueprint = min(
            ((s, b) for s in self.model.seed_slots for b in self.blueprints),
            key=lambda pair: (self.seed_cost(*pair).params, self.seed_cost(*pair).inference_flops),
        )
        raise ValueError(
            f"the growth budget ({self.budget.describe()}) is smaller than any blueprint: the "
            f"cheapest, {self.refusal(slot_id, blueprint, grown)}. Raise the budget, allow cheaper "
            "blueprints, or leave the budget out."
        )
