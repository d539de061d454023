"""The reward: what a controller is paid, epoch by epoch, for what it grows.

One step is one host epoch; the reward for the decision taken after epoch t is
computed from the signals of epoch t+1. It has seven components, each returned
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
training_flops  -`flop_price_training` x the epoch's training FLOPs beyond the
              starting host's (the episode's first epoch, before anything was
              germinated), as a fraction of what the starting host spends over
              the episode's decision steps: summed over an episode it is the
              price times the extra training compute growth cost, relative to
              the host trained alone ("1.0" = as much again as the host alone).
inference_flops -`flop_price_inference` x the change in the network's inference
              FLOPs per sample over the starting host's, relative to the starting
              host's. Paid as a change (like the contribution), it sums to the
              price times what the final network costs at inference beyond the
              host, and a seed that is culled gives its cost back.

Units: contribution_weight and terminal_weight turn accuracy into reward. With
the defaults 1 point of val accuracy credited through a fossilized seed is 0.25
reward, while 1 point of final accuracy is 0.01: the counterfactual is the
honest, low-noise measure of what a seed adds (the final accuracy moves by a
point or two between runs whatever is grown), so it carries the weight. A policy that never grows earns only the terminal term; one that
culls everything or never decides earns no credit and pays rent; so each earns
less than a controller that fossilizes seeds which help (tests/simic/test_rewards.py).

The FLOP prices are the compare's currency (`esper compare` sets every arm's training
and inference FLOPs against the host alone's), and both default to 0: the reward is
then what it was before they existed. They are relative, not per GFLOP, because the
embedded tasks' hosts differ by orders of magnitude in FLOPs: one price then means
the same trade-off on every task. Against the default contribution weight, a
training price of 0.25 says "doubling the training compute must buy at least one
point of val accuracy credited through fossilized seeds", and an inference price of
0.25 says the same of doubling the network's inference cost. The FLOPs are the
trainer's own count (`EpochSignals.flops`, from its `FlopAccount`); a price on a run
that cannot count its FLOPs is refused when the episode starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from esper.leyline import MEASURED_STAGES, EpochSignals, SeedStage

# The two priced FLOP components came later: recordings made before them hold the others only.
FLOP_COMPONENTS = ("training_flops", "inference_flops")
COMPONENTS = ("contribution", "rent", "shaping", "terminal", "rollback", *FLOP_COMPONENTS)

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
    # Reward per extra host-episode of training FLOPs, and per starting host's inference FLOPs added.
    flop_price_training: float = 0.0
    flop_price_inference: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flop_price_training", "flop_price_inference"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"reward.{name} must be a finite number >= 0, got {value}")

    @property
    def prices_flops(self) -> bool:
        return self.flop_price_training > 0 or self.flop_price_inference > 0


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
        # The starting host's FLOPs (training per epoch, inference per sample; 0: not counted)
        # and the network's inference FLOPs added over it, relative to it, as last paid for.
        self.start_training_flops = 0.0
        self.start_inference_flops = 0.0
        self.inference_added = 0.0

    def reset(self, first: EpochSignals) -> None:
        """Start an episode from the signals of its first epoch."""
        self.start_val_accuracy = first.val_accuracy
        self.fossil_credit = {}
        self.credit = self._credit(first, terminal=False)
        self.potential = stage_potential(first)
        flops = first.flops
        if self.config.prices_flops and (flops is None or not flops.training > 0 or not flops.inference_per_sample > 0):
            raise ValueError(
                "the reward prices FLOPs (flop_price_training / flop_price_inference), but this run "
                "does not count them (its model's forward does not run on meta tensors): set both prices to 0"
            )
        self.start_training_flops = 0.0 if flops is None else flops.training
        self.start_inference_flops = 0.0 if flops is None else flops.inference_per_sample
        self.inference_added = 0.0

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
            **self._flop_costs(signals),
        }
        components["total"] = sum(components.values())
        self.credit, self.potential = credit, potential
        return components

    def _flop_costs(self, signals: EpochSignals) -> dict[str, float]:
        """The two priced FLOP components (see the module docstring); 0 when unpriced."""
        config, flops = self.config, signals.flops
        if not config.prices_flops or flops is None:  # an episode with prices starts only with FLOPs counted
            return dict.fromkeys(FLOP_COMPONENTS, 0.0)
        steps = max(signals.total_epochs - 1, 1)
        extra_training = (flops.training - self.start_training_flops) / (self.start_training_flops * steps)
        added = (flops.inference_per_sample - self.start_inference_flops) / self.start_inference_flops
        paid, self.inference_added = added - self.inference_added, added
        return {
            "training_flops": -config.flop_price_training * extra_training,
            "inference_flops": -config.flop_price_inference * paid,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain data, for a checkpoint loaded with weights_only=True."""
        return {
            "start_val_accuracy": self.start_val_accuracy,
            "credit": self.credit,
            "potential": self.potential,
            "fossil_credit": dict(self.fossil_credit),
            "start_training_flops": self.start_training_flops,
            "start_inference_flops": self.start_inference_flops,
            "inference_added": self.inference_added,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`; a state saved before FLOP prices has no FLOPs (then unpriced)."""
        self.start_val_accuracy = state["start_val_accuracy"]
        self.credit = state["credit"]
        self.potential = state["potential"]
        self.fossil_credit = dict(state["fossil_credit"])
        self.start_training_flops = state.get("start_training_flops", 0.0)
        self.start_inference_flops = state.get("start_inference_flops", 0.0)
        self.inference_added = state.get("inference_added", 0.0)

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
