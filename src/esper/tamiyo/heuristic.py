"""The hand-written controller: grow where the network is short of capacity, keep what helps,
cull what hurts, and stop when growth stops paying or the budget is spent."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from esper.leyline import (
    ACTIVE_STAGES,
    GROWING_STAGES,
    MEASURED_STAGES,
    Action,
    ActionKind,
    EpochSignals,
    Operator,
    PlantedSeed,
    SeedLedger,
    SeedReport,
    SeedStage,
)
from esper.leyline.ranges import AtLeastOne, NonNegativeFloat, NonNegativeInt, check_fields
from esper.tamiyo.blueprints import BlueprintChooser
from esper.tamiyo.tracker import SignalTracker, TrackerConfig

_URGENCY = {ActionKind.CULL: 0, ActionKind.FOSSILIZE: 1}  # lower acts first


@dataclass(frozen=True, slots=True)
class HeuristicConfig:
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    fossilize_above: float = 0.002  # counterfactual contribution needed to keep a seed
    cull_below: float = -0.01  # a blended seed whose contribution falls below this is culled
    germination_cooldown: NonNegativeInt = 2  # epochs between germinations
    max_growing: AtLeastOne = 1  # seeds allowed in GERMINATED/TRAINING/BLENDING at once
    # No germination when fewer epochs remain: a seed needs time to reach its verdict and pay.
    # (The jobs set it from the task's lifecycle timings, `runtime.tasks.lifecycle_epochs`.)
    min_epochs_left: NonNegativeInt = 8
    # Growth pays while seeds are kept for a contribution of at least `min_payoff`; after
    # `max_unpaid_seeds` decided seeds in a row that were not (culled, or kept for less),
    # the controller stops growing.
    min_payoff: float = 0.005
    max_unpaid_seeds: AtLeastOne = 2
    # Outcome reward, in accuracy points: 100 * (contribution - rent_weight * log(1 + params/host)).
    rent_weight: NonNegativeFloat = 0.05

    def __post_init__(self) -> None:
        check_fields(self)


class HeuristicController:
    """Implements the `Controller` protocol with fixed rules.

    The blueprint chooser is injected (the jobs pass simic's UCB1 curriculum by
    default, or `BlueprintRotation`), so tamiyo never imports upward; so is what each
    blueprint grows (`operators`, from the registry: `runtime.session.operators_for`),
    which decides what it may plant when (`_offer`). Without it every blueprint is a branch.
    """

    def __init__(
        self,
        chooser: BlueprintChooser,
        config: HeuristicConfig | None = None,
        operators: Mapping[str, Operator] | None = None,
    ) -> None:
        self.chooser = chooser
        self.config = config or HeuristicConfig()
        self.operators = dict(operators or {})
        self.tracker = SignalTracker(self.config.tracker)
        self.last_germination_epoch: int | None = None
        # The seeds planted and decided: a decided seed's outcome goes to the chooser once.
        self.ledger = SeedLedger()
        # The latest report of each live seed: once it is decided, its size and contribution.
        self.last_report: dict[str, SeedReport] = {}
        # Decided seeds in a row that did not pay (see `HeuristicConfig.min_payoff`).
        self.unpaid_streak = 0

    def decide(self, signals: EpochSignals) -> list[Action]:
        """At most one action per epoch, the most urgent first: cull > fossilize > germinate.

        One action per epoch is the RL formulation too (`simic.actions`), so the
        heuristic's runs can be recorded step for step and learned from offline;
        whatever waits is taken at the next epoch.
        """
        self.tracker.update(signals)
        self._record_outcomes(signals)
        judged = [a for slot_id, report in signals.slots.items() if (a := self._judge(slot_id, report))]
        if judged:
            return [min(judged, key=lambda a: _URGENCY[a.kind])]
        germinate = self._maybe_germinate(signals)
        return [] if germinate is None else [germinate]

    def _judge(self, slot_id: str, report: SeedReport | None) -> Action | None:
        if report is None or report.counterfactual_contribution is None:
            return None
        contribution = report.counterfactual_contribution
        config = self.config
        # A width or depth seed starts as the host's own function (alpha 0 and 1 compute the
        # same), so its counterfactual shows only what training has moved since, not the
        # capacity it adds for the rest of the run: it is kept unless it hurts, as a fixed
        # plan keeps its steps; a branch must show `fossilize_above`.
        own_layers = self.operators.get(report.blueprint_id, Operator()).kind != "branch"
        keep_above = config.cull_below if own_layers else config.fossilize_above
        if report.stage == SeedStage.PROBATIONARY and contribution > keep_above:
            return Action(ActionKind.FOSSILIZE, slot_id, reason=f"contribution {contribution:+.4f}")
        if report.stage in MEASURED_STAGES and contribution < config.cull_below:
            return Action(ActionKind.CULL, slot_id, reason=f"hurts: contribution {contribution:+.4f}")
        return None

    @property
    def growth_pays(self) -> bool:
        return self.unpaid_streak < self.config.max_unpaid_seeds

    def _maybe_germinate(self, signals: EpochSignals) -> Action | None:
        """Plant a seed when the network is short of capacity (its training loss has all but
        stopped falling while it does not fit its data yet) or on a validation plateau, in a
        slot without a live seed (on top of its stack) that can still take one within the
        budget, with time left for the seed's whole lifecycle, and while growth pays.

        Where: the free slot whose host layers the loss pushes hardest (`signals.pressure`),
        else the first. What and how much: `_offer`."""
        config = self.config
        reports = signals.slots.values()
        affordable = signals.affordable
        free = [
            slot_id
            for slot_id, report in signals.slots.items()
            if report is None and (affordable is None or affordable.get(slot_id))
        ]
        growing = sum(1 for r in reports if r is not None and r.stage in GROWING_STAGES)
        cooling = (
            self.last_germination_epoch is not None
            and signals.epoch - self.last_germination_epoch < config.germination_cooldown
        )
        reason = self._why_grow()
        if (
            reason is None
            or not free
            or growing >= config.max_growing
            or cooling
            or signals.total_epochs - signals.epoch - 1 < config.min_epochs_left
            or not self.growth_pays
        ):
            return None
        pressure = signals.pressure or {}
        slot_id = max(free, key=lambda s: pressure.get(s, 0.0))  # the first of equals: no signal, the first
        if pressure:
            reason += f"; {slot_id} pushed hardest (gradient {pressure.get(slot_id, 0.0):.3g})"
        allowed = None if affordable is None else affordable[slot_id]
        blueprint = self.chooser.select_blueprint(self._offer(allowed, self.tracker.short_of_capacity))
        self.last_germination_epoch = signals.epoch
        return Action(ActionKind.GERMINATE, slot_id, blueprint, reason=reason)

    def _offer(self, allowed: list[str] | None, short_of_capacity: bool) -> list[str] | None:
        """The blueprints the chooser may pick from, among `allowed` (None: any).

        What: a network short of capacity grows its own layers (width and depth operators,
        when there are any to plant): it cannot fit its data, and more of what it has is the
        capacity it lacks, where a branch at the same width adds a detour; on a validation
        plateau every blueprint is offered, and the chooser's record decides. How much: of the
        width steps the slot can take within the budget (`allowed` holds only those), the
        largest (widen x2 before widen_half's x1.5): the literature's steps double, and a
        smaller one needs more lifecycles to get as far; the smaller is planted when the
        budget left does not afford the larger.
        """
        names = list(self.operators) if allowed is None else list(allowed)
        if not names or not self.operators:
            return allowed
        kind = {b: self.operators.get(b, Operator()).kind for b in names}
        widths = [self.operators[b].scale for b in names if kind[b] == "width"]
        names = [b for b in names if kind[b] != "width" or self.operators[b].scale == max(widths)]
        own_layers = [b for b in names if kind[b] != "branch"]
        return own_layers if short_of_capacity and own_layers else names

    def _why_grow(self) -> str | None:
        tracker = self.tracker
        if tracker.short_of_capacity:
            return f"short of capacity: train loss {-100 * (tracker.loss_progress or 0.0):+.1f}%/epoch"
        if tracker.on_plateau and tracker.stabilized:
            return "plateau"
        return None

    def _record_outcomes(self, signals: EpochSignals) -> None:
        """Tell the chooser how each finished seed fared: fossilized = success, culled = failure.

        Read from the lifecycle moves since the last epoch, so each seed is judged
        once, whoever ended it. The governor culls only a seed it found guilty (a
        host or data fault culls nobody), so a cull is always the seed's own failure.
        """
        for seed in self.ledger.record_moves(signals.transitions):
            self._resolve(seed, signals.host_params)
        for report in signals.slots.values():
            if report is not None and report.stage in ACTIVE_STAGES:
                self.last_report[report.seed_id] = report

    def _resolve(self, seed: PlantedSeed, host_params: int) -> None:
        success = seed.fate == "fossilized"
        # Either way the seed has left its slot's report (a fossil for its slot's stack, a culled
        # one for good): its size and contribution are in its last live report.
        report = self.last_report.pop(seed.seed_id, None)
        params = 0 if report is None else report.params
        rent = self.config.rent_weight * math.log1p(params / max(host_params, 1))
        contribution = 0.0 if report is None else report.counterfactual_contribution or 0.0
        reward = 100 * (contribution - rent if success else -rent)
        self.chooser.record_outcome(seed.blueprint_id, success, reward)
        paid = success and contribution >= self.config.min_payoff
        self.unpaid_streak = 0 if paid else self.unpaid_streak + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "chooser": self.chooser.state_dict(),
            "last_germination_epoch": self.last_germination_epoch,
            "ledger": self.ledger.state_dict(),
            "last_report": {k: v.to_dict() for k, v in self.last_report.items()},
            "unpaid_streak": self.unpaid_streak,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.chooser.load_state_dict(state["chooser"])
        self.last_germination_epoch = state["last_germination_epoch"]
        self.ledger.load_state_dict(state["ledger"])
        self.last_report = {
            k: SeedReport(**{**v, "stage": SeedStage[v["stage"]]}) for k, v in state["last_report"].items()
        }
        self.unpaid_streak = state["unpaid_streak"]
