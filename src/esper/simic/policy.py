"""Learned and random controllers behind the plain `Controller` protocol, and policy.pt.

A trained policy is only usable together with what defines its inputs and
outputs, so policy.pt holds, besides the network's state dict: the algorithm
("ppo": an actor-critic, sampled or argmax over its logits; "dqn": a Q-network
from `esper train offline`, greedy over masked Q-values; files without the
field are "ppo"), the network config, the observation layout (slot ids,
blueprints, feature names), the action names, the `RunningNorm` statistics, the
task, episode length and reward config it was trained with. Everything is tensors or plain Python data, so it loads
with `torch.load(weights_only=True)`.

`PolicyController` runs such a policy in any job that takes a `Controller` (the
heuristic job's loop, `esper evaluate`): it keeps its own `Observer`, so it needs
nothing but the `EpochSignals` it is given. `RandomController` picks uniformly
among the physically possible actions: the floor a learned policy must clear.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import InstanceOf
from typing_extensions import TypedDict  # pydantic checks typing's TypedDict only on Python >= 3.12

from esper.leyline import Action, ActionKind, EpochSignals
from esper.nissa.files import TorchFileError, load_torch_file, restore, with_format
from esper.simic.actions import ActionSpace
from esper.simic.dqn import QNetwork, QPolicy
from esper.simic.features import FeatureLayout, Observer, RunningNorm, layout_difference
from esper.simic.networks import ActorCritic, NetworkConfig, State

POLICY_FORMAT = "esper-policy-v1"


class PolicyFile(TypedDict):
    """What policy.pt must hold to be loaded (plain data besides may be there too)."""

    format: Literal["esper-policy-v1"]  # POLICY_FORMAT
    algorithm: Literal["ppo", "dqn"]
    model: dict[str, InstanceOf[torch.Tensor]]
    network: dict[str, Any]
    slot_ids: list[str]
    blueprints: list[str]
    feature_names: list[str]
    action_names: list[str]
    normalizer: dict[str, Any]
    task: str
    episode_length: int
    reward: dict[str, Any]


def policy_payload(
    model: ActorCritic | QNetwork, norm: RunningNorm, layout: FeatureLayout, space: ActionSpace, **info: Any
) -> dict[str, Any]:
    """policy.pt's content, stamped with the run-file format; `info` adds plain data (task,
    episode_length, reward, round...)."""
    return with_format({
        "format": POLICY_FORMAT,
        "algorithm": "dqn" if isinstance(model, QNetwork) else "ppo",
        "model": model.state_dict(),
        "network": asdict(model.config),
        "slot_ids": list(layout.slot_ids),
        "blueprints": list(layout.blueprints),
        "feature_names": layout.names(),
        "action_names": space.names(),
        "normalizer": norm.state_dict(),
        **info,
    })


def _to_actions(space: ActionSpace, index: int, reason: str) -> list[Action]:
    action = space.action(index, reason)
    return [] if action.kind == ActionKind.WAIT else [action]


class PolicyController:
    """A trained actor-critic (or a `QPolicy`) as a `Controller`: greedy by default, sampling if asked."""

    def __init__(
        self,
        model: ActorCritic | QPolicy,
        norm: RunningNorm,
        layout: FeatureLayout,
        deterministic: bool = True,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.norm = norm
        self.layout = layout
        self.space = ActionSpace(layout.slot_ids, layout.blueprints)
        self.deterministic = deterministic
        self.generator = torch.Generator().manual_seed(seed)
        self.observer = Observer(layout)
        self.state: State = None
        self.info: dict[str, Any] = {}  # policy.pt's plain data (task, episode_length, ...) when loaded

    @classmethod
    def load(cls, path: str | Path, deterministic: bool = True, seed: int = 0) -> PolicyController:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"policy file {path} does not exist (train one with `esper train ppo` or `esper train offline`)")
        payload = load_torch_file(path, "an Esper policy file", PolicyFile)
        layout = FeatureLayout(tuple(payload["slot_ids"]), tuple(payload["blueprints"]))
        # The observations changed between versions (e.g. the capacity features): a policy trained
        # on others cannot read this Esper's, whatever its network would accept.
        difference = layout_difference(layout.names(), list(payload["feature_names"]), "in the policy")
        if difference is not None:
            raise TorchFileError(
                path, f"its feature_names does not match the observation features this Esper computes for "
                f"its slots and blueprints ({difference}): it was trained with another version of Esper; "
                "train it again with this version (esper train ppo / offline)"
            )
        n_actions = len(payload["action_names"])

        def build() -> tuple[ActorCritic | QPolicy, RunningNorm]:
            network = NetworkConfig(**payload["network"])
            model: ActorCritic | QPolicy
            if payload["algorithm"] == "ppo":
                model = ActorCritic(layout.size, n_actions, network)
                model.load_state_dict(payload["model"])
            else:
                q = QNetwork(layout.size, n_actions, network.hidden, network.layers)
                q.load_state_dict(payload["model"])
                model = QPolicy(q)
            norm = RunningNorm(layout.size)
            norm.load_state_dict(payload["normalizer"])
            return model, norm

        model, norm = restore(path, "the network it describes", build)
        controller = cls(model, norm, layout, deterministic, seed)
        controller.info = {k: v for k, v in payload.items() if k not in ("model", "normalizer")}
        return controller

    def reset(self) -> None:
        """Forget the previous run (history and recurrent state) before a new one."""
        self.observer.reset()
        self.state = None

    @torch.no_grad()
    def decide(self, signals: EpochSignals) -> list[Action]:
        obs = self.norm(self.observer.observe(signals)).view(1, 1, -1)
        mask = self.space.mask(signals).view(1, 1, -1)
        logits, _, self.state = self.model(obs, mask, self.state)
        logits = logits.view(-1)
        if self.deterministic:
            index = int(logits.argmax())
        else:
            index = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))
        return _to_actions(self.space, index, "policy")

    def state_dict(self) -> dict[str, Any]:
        return {"observer": self.observer.state_dict(), "recurrent": self.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.observer.load_state_dict(state["observer"])
        self.state = state["recurrent"]
        self.generator.set_state(state["generator"])


class RandomController:
    """Uniform over the actions the mask allows (WAIT included) each epoch."""

    def __init__(self, space: ActionSpace, seed: int = 0) -> None:
        self.space = space
        self.generator = torch.Generator().manual_seed(seed)

    def decide(self, signals: EpochSignals) -> list[Action]:
        valid = self.space.mask(signals).nonzero().view(-1)
        choice = valid[torch.randint(len(valid), (1,), generator=self.generator)]
        return _to_actions(self.space, int(choice), "random")

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
