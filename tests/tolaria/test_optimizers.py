"""The one optimiser manager: the trainer's two optimisers and a user's one keep seeds the same way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.tolaria.trainer import Optimizers


def _seed() -> list[nn.Parameter]:
    return list(nn.Linear(2, 2).parameters())


def _managers() -> dict[str, Optimizers]:
    host = nn.Linear(2, 2)
    two = Optimizers(torch.optim.SGD(host.parameters(), lr=0.1), torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=0.5), seed_lr=0.5)
    two.seeds.param_groups.clear()
    one = Optimizers(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), seed_lr=0.5)
    return {"two optimisers": two, "a user's one": one}


@pytest.mark.parametrize("kind", ["two optimisers", "a user's one"])
def test_a_seed_joins_leaves_and_fossilizes_the_same_way(kind: str) -> None:
    optimizers = _managers()[kind]
    kept, culled = _seed(), _seed()
    optimizers.add_seed(("a", "a-seed1"), kept)
    optimizers.add_seed(("b", "b-seed1"), culled)
    assert optimizers.seed_order() == [("a", "a-seed1"), ("b", "b-seed1")]
    with pytest.raises(RuntimeError, match="already has a param group"):
        optimizers.add_seed(("a", "a-seed1"), _seed())
    with pytest.raises(ValueError, match="already holds parameters of the seed in slot 'c'"):
        optimizers.add_seed(("c", "c-seed1"), kept)
    optimizers.remove_seed(("b", "b-seed1"))
    optimizers.move_seed_to_host(("a", "a-seed1"))
    assert optimizers.seed_order() == [] and optimizers.fossil_order() == [("a", "a-seed1")]
    (fossil,) = [g for g in optimizers.host.param_groups if g.get("seed_id") == "a-seed1"]
    assert fossil["lr"] == 0.1 and fossil["params"] == kept  # at the host's pace, in the host's optimiser
    held = {id(p) for o in optimizers.torch_optimizers() for g in o.param_groups for p in g["params"]}
    assert not held & {id(p) for p in culled}


@pytest.mark.parametrize("kind", ["two optimisers", "a user's one"])
def test_state_round_trips_onto_a_fresh_manager(kind: str) -> None:
    from types import SimpleNamespace

    optimizers = _managers()[kind]
    live, fossil = _seed(), _seed()
    optimizers.add_seed(("a", "a-seed2"), live)
    optimizers.add_seed(("b", "b-seed1"), fossil)
    optimizers.move_seed_to_host(("b", "b-seed1"))
    saved = optimizers.state_dict()
    fresh = _managers()[kind]
    slot = SimpleNamespace(state=SimpleNamespace(seed_id="a-seed2"), seed=SimpleNamespace(parameters=lambda: live),
                           fossil_reports=[], fossils=[])  # fmt: skip
    stack = SimpleNamespace(state=None, seed=None, fossil_reports=[SimpleNamespace(seed_id="b-seed1")],
                            fossils=[SimpleNamespace(parameters=lambda: fossil)])  # fmt: skip
    fresh.load_state_dict(saved, {"a": slot, "b": stack})
    assert fresh.seed_order() == [("a", "a-seed2")] and fresh.fossil_order() == [("b", "b-seed1")]
    assert fresh.state_dict()["seed_groups"] == saved["seed_groups"]
