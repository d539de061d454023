"""The reward: what a controller is paid, epoch by epoch, for what it grows.

One step is one host epoch; the reward for the decision taken after epoch t is
computed from the signals of epoch t+1. It has five components, each returned
and logged on its own:

contribution  `contribution_weight` x the change in the episode's *credit*.
              A seed's credit is its counterfactual contribution (val accuracy
              with the seed minus without it): locked in for good when it is
              fossilized (read from its FOSSILIZED move: the seed leaves its
              slot's report for the slot's stack at once), `blended_credit` x its current contribution while it is
              blended but undecided (BLENDING..PROBATIONARY), and 0 otherwise.
              Paying the *change* in credit means value is paid once: a seed
              that is culled, expires on probation, or is still undecided when
              the episode ends gives back everything it was paid, so only
              fossilized seeds keep credit. The small blended term pays early
              (it helps credit assignment) and is taken back if the seed dies.
rent          -`rent_weight` x log(1 + seed params / host params), every epoch,
              for every live or fossilized seed: growth is never free, a seed
              held forever keeps paying, and a germinate-then-cull pays rent
              for nothing.
shaping       `shaping_weight` x (gamma x Phi(s') - Phi(s)) with Phi = the sum of
              `STAGE_POTENTIAL` over the live seeds and the fossils of every
              slot's stack, and Phi = 0 after the last epoch. Potential-based
              (Ng et al. 1999), so it cannot change which policy is best; it
              only gives a gradient toward moving seeds along the lifecycle.
terminal      `terminal_weight` x (final val accuracy - val accuracy of the
              episode's first epoch, before anything could be germinated), on
              the last step. The host's own progress is in it too, but that
              part is the same for every policy on the same seed.
rollback      -`rollback_penalty` when the governor rolled the epoch back.

Units: contribution_weight and terminal_weight turn accuracy into reward. With
the defaults 1 point of val accuracy credited through a fossilized seed is 0.25
reward, while 1 point of final accuracy is 0.01: the counterfactual is the
honest, low-noise measure of what a seed adds (the final accuracy moves by a
point or two between runs whatever is grown), so it carries the weight. A policy that never grows earns only the terminal term; one that
culls everything or never decides earns no credit and pays rent; so each earns
less than a controller that fossilizes seeds which help (tests/simic/test_rewards.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.leyline import MEASURED_STAGES, EpochSignals, SeedStage

COMPONENTS = ("contribution", "rent", "shaping", "terminal", "rollback")

STAGE_POTENTIAL: dict[SeedStage, float] = {
    SeedStage.GERMINATED: 0.02,
    SeedStage.TRAINING: 0.04,
    SeedStage.BLENDING: 0.06,
    SeedStage.SHADOWING: 0.08,
    SeedStage.PROBATIONARY: 0.10,
    SeedStage.FOSSILIZED: 0.15,
}  # every other stage (empty, culled, embargoed, resetting): 0


@dataclass(frozen=True, slots=True)
class RewardConfig:
    contribution_weight: float = 25.0  # reward per unit of credited accuracy
    blended_credit: float = 0.25  # fraction of a blended, undecided seed's contribution paid in advance
    rent_weight: float = 0.02  # per epoch, times log(1 + seed params / host params)
    shaping_weight: float = 1.0  # scale of the stage potentials
    terminal_weight: float = 1.0  # reward per unit of val accuracy gained over the episode
    rollback_penalty: float = 1.0
    gamma: float = 0.99  # discount for the shaping term; use PPO's gamma so shaping stays policy-invariant


def stage_potential(signals: EpochSignals) -> float:
    """Phi: the live seeds' stage potentials plus the FOSSILIZED potential of every fossil kept
    (a fossil leaves its slot's report at once: it is counted from the slot's stack)."""
    live = sum(STAGE_POTENTIAL.get(r.stage, 0.0) for r in signals.slots.values() if r is not None)
    kept = sum(len(stack) for stack in signals.fossils.values())
    return live + kept * STAGE_POTENTIAL[SeedStage.FOSSILIZED]


class RewardTracker:
    """Computes one environment's per-step reward components over an episode."""

    def __init__(self, config: RewardConfig | None = None) -> None:
        self.config = config or RewardConfig()
        self.start_val_accuracy = 0.0
        self.credit = 0.0
        self.potential = 0.0
        self.fossil_credit: dict[str, float] = {}

    def reset(self, first: EpochSignals) -> None:
        """Start an episode from the signals of its first epoch."""
        self.start_val_accuracy = first.val_accuracy
        self.fossil_credit = {}
        self.credit = self._credit(first, terminal=False)
        self.potential = stage_potential(first)

    def step(self, signals: EpochSignals, terminal: bool) -> dict[str, float]:
        """Reward components for the step that led to `signals`; "total" is their sum."""
        config = self.config
        credit = self._credit(signals, terminal)
        potential = 0.0 if terminal else stage_potential(signals)
        components = {
            "contribution": config.contribution_weight * (credit - self.credit),
            "rent": -config.rent_weight * math.log1p(signals.seed_params / max(signals.host_params, 1)),
            "shaping": config.shaping_weight * (config.gamma * potential - self.potential),
            "terminal": config.terminal_weight * (signals.val_accuracy - self.start_val_accuracy) if terminal else 0.0,
            "rollback": -config.rollback_penalty if signals.rolled_back else 0.0,
        }
        components["total"] = sum(components.values())
        self.credit, self.potential = credit, potential
        return components

    def _credit(self, signals: EpochSignals, terminal: bool) -> float:
        kept = {report.seed_id: report for stack in signals.fossils.values() for report in stack}
        for move in signals.transitions:
            if move.to_stage == SeedStage.FOSSILIZED:
                # Locked when the seed is fossilized: what it was kept for (its slot's stack
                # records the contribution it last measured).
                self.fossil_credit.setdefault(move.seed_id, kept[move.seed_id].counterfactual_contribution or 0.0)
        credit = sum(self.fossil_credit.values())
        if terminal:
            return credit
        for report in signals.slots.values():
            if report is not None and report.stage in MEASURED_STAGES:
                credit += self.config.blended_credit * (report.counterfactual_contribution or 0.0)
        return credit
