"""esper.Grower misused: refused, or named, never passed over in silence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper.nissa.run_folder import read_json
from esper.tolaria import TrainingFailed

torch.manual_seed(0)
X, Y = torch.randn(96, 8), torch.randint(0, 3, (96,))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _score(model: nn.Module, x: torch.Tensor = X) -> float:
    return (model(x).argmax(1) == Y).float().mean().item()


def _train(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    loss = F.cross_entropy(model(X), Y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_an_optimizer_holding_none_of_the_model_is_refused() -> None:
    grown = esper.graft(_model(), ["0"], X[:2])
    elsewhere = torch.optim.SGD(_model().parameters(), lr=0.1)  # over another copy of the model
    with pytest.raises(ValueError, match="optimizer holds none of the grafted model's parameters"):
        esper.Grower(grown, elsewhere, _score)


def test_a_nan_from_evaluate_names_evaluate() -> None:
    grown = esper.graft(_model(), ["0"], X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.1)
    grower = esper.Grower(grown, optimizer, lambda model: _score(model) * math.nan, epochs=3)
    with pytest.raises(ValueError, match=r"evaluate\(model\) returned nan"):
        grower.end_epoch(train_loss=_train(grown, optimizer))


def test_a_run_whose_last_epoch_has_no_score_is_not_complete(tmp_path: Path) -> None:
    """The validation data go non-finite for the last epoch: rolled back once (fewer than the
    limit), the run ends without a final metric, so it has failed, and says so."""
    poisoned = {"now": False}

    def evaluate(model: nn.Module) -> float:
        return _score(model, X * math.nan if poisoned["now"] else X)

    grown = esper.graft(_model(), ["0"], X[:2])
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.1)
    grower = esper.Grower(grown, optimizer, evaluate, epochs=3, run_dir=tmp_path / "run")
    grower.end_epoch(train_loss=_train(grown, optimizer))
    grower.end_epoch(train_loss=_train(grown, optimizer))
    poisoned["now"] = True
    with pytest.raises(TrainingFailed, match="no final metric"):
        grower.end_epoch(train_loss=_train(grown, optimizer))
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "failed" and "no final metric" in summary["reason"]
    assert summary["final_val_accuracy"] is None
    assert not (tmp_path / "run" / "checkpoints" / "final.pt").exists()
