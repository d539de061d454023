"""Recorded decision transitions: what every run's controller saw, did and was paid.

Any run (the heuristic job, a PPO run's rollouts, `esper evaluate`) can write its
decisions in the one format offline training reads (`esper train offline`):

- `transitions_meta.json`: the layout (task, slot ids, blueprints, feature and
  action names) and the reward config the rewards were computed with, with the
  discount of its potential-based shaping term spelled out as `shaping_gamma`
  (a learner must use it, or drop the shaping term, for the shaping to cancel)
  and the names of the `reward_components`, stamped with the run-file format
  (`nissa.files.RUN_FORMAT`). Two runs can be learned from together only if these match.
- `transitions.jsonl`: one line per decision step, appended and flushed as it
  happens (a crash loses at most one line), strict JSON (a non-finite value is
  null): the raw Observer features `obs` (unnormalised, so offline training fits
  its own `RunningNorm`), the action `mask`, the `action` index, the `reward`
  (`RewardTracker`'s total) and its `reward_components` (`rewards.COMPONENTS`,
  which sum to it) with their raw `reward_quantities` (each component is its
  weight in `RewardConfig.weights()` times its quantity, so offline learning can
  weigh and price them anew), `next_obs`, `next_mask`, `done`, and the rare `outcomes` the
  step led to (a seed "fossilized" or "culled", a "rollback"). `episode` names the episode, `t` is the host epoch the
  decision was taken after, and `epoch` is the run's resume unit (the host epoch
  the line was completed in for a heuristic run, the round for PPO) so
  `RunFolder.truncate_logs` drops lines past a checkpoint like any other log.

`EpisodeRecorder` turns a stream of (signals, actions) into these lines with its
own `Observer` and `RewardTracker`, so it needs nothing from the controller: the
heuristic, a policy and the random controller are recorded the same way. The flat
action space has one action per step, so a step with several actions is refused
rather than recorded as something that did not happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from esper.leyline import OUTCOME_OF_STAGE, OUTCOME_STAGES, Action, Controller, EpochSignals
from esper.nissa import JsonlWriter, strict_json
from esper.nissa.files import check_format, with_format
from esper.simic.actions import ActionSpace, action_name
from esper.simic.features import FeatureLayout, Observer
from esper.simic.rewards import COMPONENTS, RewardConfig, RewardTracker

TRANSITIONS_FILE = "transitions.jsonl"
META_FILE = "transitions_meta.json"


def transitions_meta(task: str, layout: FeatureLayout, space: ActionSpace, reward: RewardConfig, **info: Any) -> dict[str, Any]:
    """The layout that gives a transitions file its meaning; `info` adds plain data (mode, episode length)."""
    return with_format({
        "task": task,
        "slot_ids": list(layout.slot_ids),
        "blueprints": list(layout.blueprints),
        "feature_names": layout.names(),
        "action_names": space.names(),
        "reward": asdict(reward),
        "shaping_gamma": reward.gamma,
        "reward_components": list(COMPONENTS),
        **info,
    })


class TransitionLog:
    """The two files in a run folder; `epoch` is attached to every line for resume truncation."""

    def __init__(self, folder: str | Path, meta: dict[str, Any]) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / META_FILE
        if meta_path.exists():
            old = strict_json.loads(meta_path.read_text())
            check_format(old, meta_path)
            # The same format from another Esper release records the same: only the layout and reward matter.
            differ = sorted(key for key in old.keys() | meta.keys() if old.get(key) != meta.get(key) and key != "esper_version")
            if differ:
                raise FileExistsError(
                    f"{folder} already holds transitions recorded with another layout or reward "
                    f"(differing: {', '.join(differ)}); record into another folder"
                )
        meta_path.write_text(strict_json.dumps(meta, indent=2) + "\n")
        self.writer = JsonlWriter(folder / TRANSITIONS_FILE)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.write(row)

    def close(self) -> None:
        self.writer.close()


def step_outcomes(after: EpochSignals) -> list[str]:
    """The rare events of the step that led to `after`: a seed fossilized or culled (by anyone,
    read from the lifecycle moves since the decision), and a rollback."""
    outcomes = [OUTCOME_OF_STAGE[t.to_stage] for t in after.transitions if t.to_stage in OUTCOME_STAGES]
    if after.rolled_back:
        outcomes.append("rollback")
    return outcomes


class EpisodeRecorder:
    """One episode stream: call `record(signals, actions)` once per epoch, in order.

    The decision taken on epoch t's signals becomes a line when epoch t+1's signals
    arrive (its reward is read from them, as in `MorphogeneticEnv`); the decision
    on the last epoch of an episode has no consequence and is not recorded.
    """

    def __init__(self, log: TransitionLog, layout: FeatureLayout, space: ActionSpace, reward: RewardConfig) -> None:
        self.log = log
        self.space = space
        self.index = {name: i for i, name in enumerate(space.names())}
        self.observer = Observer(layout)
        self.rewards = RewardTracker(reward)
        self.pending: dict[str, Any] | None = None
        self.episode: int | str = 0
        self.epoch: int | None = None

    def start(self, episode: int | str, epoch: int | None = None) -> None:
        """A new episode; `epoch` is its lines' resume unit (the PPO round), None for the host epoch."""
        self.episode = episode
        self.epoch = epoch
        self.pending = None
        self.observer.reset()

    def record(self, signals: EpochSignals, actions: Sequence[Action]) -> None:
        """Log the previous step (if any) and hold the decision taken on this epoch's signals."""
        obs = self.observer.observe(signals).tolist()
        mask = self.space.mask(signals).tolist()
        done = signals.epoch >= signals.total_epochs - 1
        if self.pending is None:
            self.rewards.reset(signals)
        else:
            pending = self.pending
            reward = self.rewards.step(signals, terminal=done)
            self.log.write({
                "epoch": signals.epoch if self.epoch is None else self.epoch,
                "episode": self.episode,
                "t": pending["t"],
                "obs": pending["obs"],
                "mask": pending["mask"],
                "action": pending["action"],
                "reward": reward["total"],
                "reward_components": {name: reward[name] for name in COMPONENTS},
                "reward_quantities": dict(self.rewards.quantities),
                "next_obs": obs,
                "next_mask": mask,
                "done": done,
                "outcomes": step_outcomes(signals),
            })  # fmt: skip
        if done:
            self.pending = None
            return
        if len(actions) > 1:
            raise ValueError(f"one action per step can be recorded, got {[action_name(a) for a in actions]}")
        name = action_name(actions[0]) if actions else "WAIT"
        if name not in self.index:
            raise ValueError(f"action {name!r} is not in the recorded action space {list(self.index)}")
        self.pending = {"t": signals.epoch, "obs": obs, "mask": mask, "action": self.index[name]}

    def state_dict(self) -> dict[str, Any]:
        """Plain data, for a checkpoint loaded with weights_only=True."""
        return {
            "observer": self.observer.state_dict(),
            "rewards": self.rewards.state_dict(),
            "pending": self.pending,
            "episode": self.episode,
            "epoch": self.epoch,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observer.load_state_dict(state["observer"])
        self.rewards.load_state_dict(state["rewards"])
        self.pending = state["pending"]
        self.episode = state["episode"]
        self.epoch = state["epoch"]


def episode_recorder(
    folder: str | Path, task: str, slot_ids: Sequence[str], blueprints: Sequence[str], reward: RewardConfig, **info: Any
) -> EpisodeRecorder:
    """A recorder writing to `folder` with the layout of these slots and blueprints."""
    layout = FeatureLayout(tuple(slot_ids), tuple(blueprints))
    space = ActionSpace(layout.slot_ids, layout.blueprints)
    return EpisodeRecorder(TransitionLog(folder, transitions_meta(task, layout, space, reward, **info)), layout, space, reward)


class RecordedController:
    """Any `Controller`, with each decision passed to a recorder: how the jobs record without changing controllers."""

    def __init__(self, controller: Controller, recorder: EpisodeRecorder) -> None:
        self.controller = controller
        self.recorder = recorder

    def decide(self, signals: EpochSignals) -> list[Action]:
        actions = self.controller.decide(signals)
        self.recorder.record(signals, actions)
        return actions

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)
