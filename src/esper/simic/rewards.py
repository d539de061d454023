"""The reward: what a controller is paid, epoch by epoch, for what it grows.

One step is one host epoch; the reward for the decision taken after epoch t is
computed from the signals of epoch t+1. It has seven components, each returned
and logged on its own:

contribution  `contribution_weight` x (gamma x C(s') - C(s)), a potential on the
              episode's *credit* C, which is 0 after the last epoch. A seed's credit
              is its counterfactual contribution (val accuracy with the seed minus
              without it): locked in when it is fossilized (read from its FOSSILIZED
              move: the seed leaves its slot's report for the slot's stack at once),
              `blended_credit` x its current contribution while it is blended but
              undecided (BLENDING..PROBATIONARY), and 0 otherwise. It pays a seed's
              value the epoch it is shown (credit assignment: the episode's own
              result comes only at its end) and takes all of it back at the end,
              so, like the shaping, it cannot change which policy is best. It once
              was a real reward (credit kept for good), and PPO learned to farm it:
              a seed stacked on a tiny host is leaned on by the host as training goes
              on, so removing it costs tens of points whether or not the network is
              any better than the host alone (return 0 -> 20 from this term while
              the grown networks' accuracy stayed below the host alone's).
rent          -`rent_weight` x log(1 + seed params / host params), every epoch,
              for every live or fossilized seed (0 by default: the FLOP prices
              are the cost of growth in the compare's currency).
shaping       `shaping_weight` x (gamma x Phi(s') - Phi(s)) with Phi = the sum of
              `STAGE_POTENTIAL` over the live seeds and the fossils of every
              slot's stack, and Phi = 0 after the last epoch. Potential-based
              (Ng et al. 1999), so it cannot change which policy is best; it
              only gives a gradient toward moving seeds along the lifecycle.
terminal      `terminal_weight` x (final val accuracy - `terminal_reference`), on
              the last step: what the controller is for. The reference is the host
              alone's final val accuracy (`esper train ppo` measures it before its
              first round, from host-only episodes), so the term reads "points over
              the host alone". Without one it is the episode's first-epoch val
              accuracy: unbiased between policies, but that accuracy varies by tens
              of points between seeds (27-59% on mnist5k-tiny) where growth moves
              the final one by about one.
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

Units: the terminal weight (100) makes one point of final val accuracy one unit
of reward. A policy's return is then, up to the potentials (which sum to about 0),
the points its network ends above the host alone, less what the FLOPs it added
cost: the compare's own criterion. Each component is also recorded as its raw
*quantity* (`RewardTracker.quantities`; the component is `RewardConfig.weights()`
times it), so `esper train offline` can learn from recordings under other weights
and prices than they were recorded with.

The FLOP prices are the compare's currency (`esper compare` sets every arm's training
and inference FLOPs against the host alone's), and both default to 0: growth is then
judged by the final accuracy alone. They are relative, not per GFLOP, because the
embedded tasks' hosts differ by orders of magnitude in FLOPs: one price then means
the same trade-off on every task. Against the terminal weight, a training price of
0.25 says "doubling the training compute must buy at least a quarter of a point of
final val accuracy", and an inference price of 0.25 says the same of doubling the
network's inference cost. The FLOPs are the trainer's own count (`EpochSignals.flops`, from its `FlopAccount`); a price on a run
that cannot count its FLOPs is refused when the episode starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from esper.leyline import MEASURED_STAGES, EpochSignals, SeedStage
from esper.leyline.ranges import Fraction, Interval, NonNegativeFloat, check_fields

# The two priced FLOP components (0 while the reward prices no FLOPs).
FLOP_COMPONENTS = ("training_flops", "inference_flops")
COMPONENTS = ("contribution", "rent", "shaping", "terminal", "rollback", *FLOP_COMPONENTS)
# The potential-based components: they steer credit assignment, not which policy is best.
POTENTIALS = ("contribution", "shaping")

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
    contribution_weight: NonNegativeFloat = 10.0  # potential per unit of credited accuracy
    blended_credit: Fraction = 0.25  # fraction of a blended, undecided seed's contribution in the credit
    rent_weight: NonNegativeFloat = 0.0  # per epoch, times log(1 + seed params / host params)
    shaping_weight: NonNegativeFloat = 1.0  # scale of the stage potentials
    terminal_weight: NonNegativeFloat = 100.0  # reward per unit of final val accuracy over the reference
    # The host alone's final val accuracy; None: the episode's first-epoch val accuracy.
    terminal_reference: Fraction | None = None
    rollback_penalty: NonNegativeFloat = 1.0
    gamma: Annotated[float, Interval(gt=0, le=1)] = 0.99  # discount for the shaping term; use PPO's gamma so shaping stays policy-invariant
    # Reward per extra host-episode of training FLOPs, and per starting host's inference FLOPs added.
    flop_price_training: NonNegativeFloat = 0.0
    flop_price_inference: NonNegativeFloat = 0.0

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def prices_flops(self) -> bool:
        return self.flop_price_training > 0 or self.flop_price_inference > 0

    def weights(self) -> dict[str, float]:
        """What each component is per unit of its quantity (costs negative)."""
        return {
            "contribution": self.contribution_weight,
            "rent": -self.rent_weight,
            "shaping": self.shaping_weight,
            "terminal": self.terminal_weight,
            "rollback": -self.rollback_penalty,
            "training_flops": -self.flop_price_training,
            "inference_flops": -self.flop_price_inference,
        }


# The RewardConfig fields offline learning may change (`weights()` reads them); the others
# (gamma, blended_credit, terminal_reference) shape the recorded quantities themselves.
REWEIGHABLE = ("contribution_weight", "rent_weight", "shaping_weight", "terminal_weight", "rollback_penalty",
               "flop_price_training", "flop_price_inference")  # fmt: skip


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
        # What the terminal term is measured against: the reference, else the first epoch's val
        # accuracy (the name predates the reference; checkpoints hold it under this key).
        self.start_val_accuracy = 0.0
        self.quantities: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)  # the last step's
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
        reference = self.config.terminal_reference
        self.start_val_accuracy = first.val_accuracy if reference is None else reference
        self.fossil_credit = {}
        self.credit = self._credit(first)
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
        """Reward components for the step that led to `signals`; "total" is their sum.
        Their raw quantities are left in `self.quantities`."""
        config = self.config
        credit = 0.0 if terminal else self._credit(signals)
        potential = 0.0 if terminal else stage_potential(signals)
        self.quantities = {
            "contribution": config.gamma * credit - self.credit,
            "rent": math.log1p(signals.seed_params / max(signals.host_params, 1)),
            "shaping": config.gamma * potential - self.potential,
            "terminal": signals.val_accuracy - self.start_val_accuracy if terminal else 0.0,
            "rollback": 1.0 if signals.rolled_back else 0.0,
            **self._flop_quantities(signals),
        }
        weights = config.weights()
        components = {name: weights[name] * value for name, value in self.quantities.items()}
        components["total"] = sum(components.values())
        self.credit, self.potential = credit, potential
        return components

    def _flop_quantities(self, signals: EpochSignals) -> dict[str, float]:
        """The FLOPs the two priced components are prices of (see the module docstring); 0 when
        the run does not count FLOPs. Measured whether priced or not, for re-pricing offline."""
        flops = signals.flops
        if flops is None or not self.start_training_flops > 0 or not self.start_inference_flops > 0:
            return dict.fromkeys(FLOP_COMPONENTS, 0.0)
        steps = max(signals.total_epochs - 1, 1)
        extra_training = (flops.training - self.start_training_flops) / (self.start_training_flops * steps)
        added = (flops.inference_per_sample - self.start_inference_flops) / self.start_inference_flops
        paid, self.inference_added = added - self.inference_added, added
        return {"training_flops": extra_training, "inference_flops": paid}

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
        """Inverse of `state_dict`."""
        self.start_val_accuracy = state["start_val_accuracy"]
        self.credit = state["credit"]
        self.potential = state["potential"]
        self.fossil_credit = dict(state["fossil_credit"])
        self.start_training_flops = state["start_training_flops"]
        self.start_inference_flops = state["start_inference_flops"]
        self.inference_added = state["inference_added"]

    def _credit(self, signals: EpochSignals) -> float:
        kept = {report.seed_id: report for stack in signals.fossils.values() for report in stack}
        for move in signals.transitions:
            if move.to_stage == SeedStage.FOSSILIZED:
                # Locked when the seed is fossilized: what it was kept for (its slot's stack
                # records the contribution it last measured).
                self.fossil_credit.setdefault(move.seed_id, kept[move.seed_id].counterfactual_contribution or 0.0)
        credit = sum(self.fossil_credit.values())
        for report in signals.slots.values():
            if report is not None and report.stage in MEASURED_STAGES:
                credit += self.config.blended_credit * (report.counterfactual_contribution or 0.0)
        return credit
