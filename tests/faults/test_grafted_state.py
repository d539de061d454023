"""A grafted model's state round-trips: `state_dict()` loads into a fresh graft of the same model,
fossils and live seeds included, with outputs equal; and a model is grafted once."""

from __future__ import annotations

import io

import pytest
import torch
from seed_lifecycle import grow
from torch import nn

import esper
from esper.leyline import SeedStage

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
TARGETS = ["0", "2"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 4))  # fmt: skip


def _grown() -> esper.GraftedModel:
    """A fossil and a blending seed in one slot, a training seed in the other, none at identity."""
    grown = esper.graft(_model(), TARGETS, X)
    first, second = grown.seed_slots["0"], grown.seed_slots["2"]
    grow(first, SeedStage.FOSSILIZED, "norm", host_module=grown.host)
    grow(first, SeedStage.BLENDING, "conv_light", host_module=grown.host)
    grow(second, SeedStage.TRAINING, "attention", host_module=grown.host)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in grown.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return grown.eval()


def test_a_grafted_models_state_dict_loads_into_a_fresh_graft_with_equal_outputs() -> None:
    grown = _grown()
    saved = io.BytesIO()
    torch.save(grown.state_dict(), saved)  # through a file, as a user keeps it
    fresh = esper.graft(_model(), TARGETS, X).eval()
    result = fresh.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh(X), grown(X))
    slot = fresh.seed_slots["0"]
    assert slot.stack_depth == 1 and slot.stage == SeedStage.BLENDING and slot.alpha == grown.seed_slots["0"].alpha
    assert fresh.seed_slots["2"].stage == SeedStage.TRAINING
    assert fresh.seed_param_count() == grown.seed_param_count()


def test_a_state_from_a_graft_on_other_targets_is_refused_by_name() -> None:
    state = _grown().state_dict()
    other = esper.graft(_model(), ["0"], X)
    with pytest.raises(ValueError, match=r"saved from a graft with slots on \['0', '2'\], not on \['0'\]"):
        other.load_state_dict(state)


def test_a_model_grafted_on_one_target_cannot_be_grafted_again_on_another() -> None:
    model = _model()
    esper.graft(model, ["0"], X)
    with pytest.raises(ValueError, match=r"The model was grafted before \(slots on 0\)"):
        esper.graft(model, ["2"], X)
