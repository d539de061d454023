"""UCB1 curriculum over seed blueprints, biased toward simple blueprints.

Growing a seed is expensive, so which blueprint to try next is a bandit problem:
each blueprint is an arm, each germination outcome a reward. UCB1 balances
exploiting blueprints that have paid off with exploring ones that were tried
rarely. A complexity penalty breaks the symmetry in favour of cheap blueprints,
so among unexplored (or equally good) arms the simplest is tried first.

The state is plain data (`state_dict` / JSON `save` / `load`) so a curriculum can
carry what it learned from one training run into the next.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from esper.kasmina.blueprints import BlueprintRegistry
from esper.nissa import strict_json
from esper.tamiyo import BlueprintChooser, BlueprintRotation

# Bonus for never-tried arms: dominates any realistic explored score, so every arm
# is tried once before UCB1 starts comparing means.
UNEXPLORED_BONUS = 1e6


class BlueprintCurriculum:
    """UCB1 bandit over blueprint names with a min-max normalised complexity penalty.

    score(arm) = mean_reward + exploration_weight * sqrt(ln(total_trials) / trials)
                 - complexity_penalty * normalised_complexity
    and an unexplored arm scores UNEXPLORED_BONUS - complexity_penalty * normalised_complexity.
    """

    def __init__(
        self,
        blueprints: Sequence[str],
        complexity: Sequence[float],
        exploration_weight: float = 2.0,
        complexity_penalty: float = 0.1,
    ) -> None:
        blueprints = list(blueprints)
        complexity = [float(c) for c in complexity]
        if not blueprints:
            raise ValueError("blueprints must be a non-empty list of names")
        if len(set(blueprints)) != len(blueprints):
            dupes = sorted({b for b in blueprints if blueprints.count(b) > 1})
            raise ValueError(f"blueprint names must be unique; duplicated: {dupes}")
        if len(complexity) != len(blueprints):
            raise ValueError(
                f"complexity has {len(complexity)} entries "
                f"but there are {len(blueprints)} blueprints"
            )
        if not all(math.isfinite(c) for c in complexity):
            raise ValueError(f"complexity values must be finite numbers, got {complexity}")
        if not (math.isfinite(exploration_weight) and exploration_weight >= 0):
            raise ValueError(
                f"exploration_weight must be finite and >= 0, got {exploration_weight}"
            )
        if not (math.isfinite(complexity_penalty) and complexity_penalty >= 0):
            raise ValueError(
                f"complexity_penalty must be finite and >= 0, got {complexity_penalty}"
            )

        self.blueprints = blueprints
        self.complexity = complexity
        self.exploration_weight = float(exploration_weight)
        self.complexity_penalty = float(complexity_penalty)

        lo, hi = min(complexity), max(complexity)
        span = hi - lo
        self._normalised = [(c - lo) / span if span > 0 else 0.0 for c in complexity]
        self._index = {name: i for i, name in enumerate(blueprints)}
        self._trials = [0] * len(blueprints)
        self._successes = [0] * len(blueprints)
        self._total_reward = [0.0] * len(blueprints)

    def _arm(self, blueprint: str) -> int:
        if blueprint not in self._index:
            raise ValueError(f"unknown blueprint {blueprint!r}; known: {self.blueprints}")
        return self._index[blueprint]

    def record_outcome(self, blueprint: str, success: bool, reward: float) -> None:
        """Count one trial of `blueprint` with its outcome and reward."""
        i = self._arm(blueprint)
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward} for blueprint {blueprint!r}")
        self._trials[i] += 1
        self._successes[i] += int(bool(success))
        self._total_reward[i] += reward

    def get_ucb_scores(self) -> dict[str, float]:
        """UCB1 score per blueprint, in list order."""
        total_trials = sum(self._trials)
        scores = {}
        for i, name in enumerate(self.blueprints):
            penalty = self.complexity_penalty * self._normalised[i]
            n = self._trials[i]
            if n == 0:
                scores[name] = UNEXPLORED_BONUS - penalty
                continue
            mean = self._total_reward[i] / n
            bonus = self.exploration_weight * math.sqrt(math.log(total_trials) / n)
            scores[name] = mean + bonus - penalty
        return scores

    def select_blueprint(self, allowed: Collection[str] | None = None) -> str:
        """Blueprint with the highest score (among `allowed`, when given: e.g. those a growth
        budget still affords); ties go to the earliest in the list."""
        scores = self.get_ucb_scores()
        candidates = [name for name in self.blueprints if allowed is None or name in allowed]
        if not candidates:
            raise ValueError(f"none of the allowed blueprints {sorted(allowed or ())} is in this curriculum")
        return max(candidates, key=lambda name: scores[name])  # max keeps the first maximum

    def get_stats(self, blueprint: str) -> dict[str, float]:
        """Trials, successes and mean reward (0.0 before the first trial) of one blueprint."""
        i = self._arm(blueprint)
        n = self._trials[i]
        return {
            "trials": n,
            "successes": self._successes[i],
            "mean_reward": self._total_reward[i] / n if n else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this curriculum, as JSON-serialisable plain data."""
        return {
            "blueprints": list(self.blueprints),
            "complexity": list(self.complexity),
            "exploration_weight": self.exploration_weight,
            "complexity_penalty": self.complexity_penalty,
            "trials": list(self._trials),
            "successes": list(self._successes),
            "total_reward": list(self._total_reward),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> BlueprintCurriculum:
        """Rebuild a curriculum from `state_dict()` output."""
        required = ("blueprints", "complexity", "exploration_weight", "complexity_penalty",
                    "trials", "successes", "total_reward")
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"curriculum state is missing keys: {missing}")
        curriculum = cls(
            state["blueprints"],
            state["complexity"],
            exploration_weight=state["exploration_weight"],
            complexity_penalty=state["complexity_penalty"],
        )
        n_arms = len(curriculum.blueprints)
        for key in ("trials", "successes", "total_reward"):
            if len(state[key]) != n_arms:
                raise ValueError(
                    f"curriculum state {key!r} has {len(state[key])} entries, expected {n_arms}"
                )
        trials = [int(t) for t in state["trials"]]
        successes = [int(s) for s in state["successes"]]
        if any(s < 0 or s > t for s, t in zip(successes, trials)):
            raise ValueError("curriculum state needs 0 <= successes <= trials for every blueprint")
        curriculum._trials = trials
        curriculum._successes = successes
        curriculum._total_reward = [float(r) for r in state["total_reward"]]
        return curriculum

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take over a saved state in place (the controller protocol); blueprints must match."""
        saved = type(self).from_state_dict(state)
        if saved.blueprints != self.blueprints:
            raise ValueError(
                f"curriculum state covers blueprints {saved.blueprints}, this curriculum {self.blueprints}"
            )
        self.complexity, self._normalised = saved.complexity, saved._normalised
        self.exploration_weight = saved.exploration_weight
        self.complexity_penalty = saved.complexity_penalty
        self._trials, self._successes = saved._trials, saved._successes
        self._total_reward = saved._total_reward

    def save(self, path: str | Path) -> None:
        """Write the state as JSON so a later run can resume the curriculum."""
        Path(path).write_text(strict_json.dumps(self.state_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> BlueprintCurriculum:
        """Read a curriculum written by `save`; a missing or malformed file is one clear error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"curriculum file {path} does not exist (a run's curriculum.json)")
        try:
            state = strict_json.loads(path.read_text(encoding="utf-8"))
            if isinstance(state, dict):
                return cls.from_state_dict(state)
            problem = f"it holds a {type(state).__name__}, not a curriculum's keys"
        except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            problem = " ".join(str(err).split())
        raise ValueError(f"curriculum file {path} cannot be used: {problem}")


def make_chooser(topology: str, blueprints: list[str], chooser: str = "curriculum", saved: str | None = None) -> BlueprintChooser:
    """The heuristic's blueprint chooser: this UCB1 curriculum (default; from the `saved` curriculum.json
    of an earlier run when given) or plain rotation ("rotation")."""
    if chooser == "rotation":
        return BlueprintRotation(blueprints)
    if saved is None:
        return BlueprintCurriculum(blueprints, [BlueprintRegistry.get(topology, name).param_estimate for name in blueprints])
    curriculum = BlueprintCurriculum.load(saved)
    if sorted(curriculum.blueprints) != sorted(blueprints):
        raise ValueError(
            f"curriculum {saved} covers {curriculum.blueprints}, this run uses {blueprints}; "
            "pass the same --blueprints (and task topology) as the run that wrote it"
        )
    return curriculum
