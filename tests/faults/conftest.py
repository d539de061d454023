"""Fault blueprints for the fault-injection suite: registered while a module of this folder
runs and removed after it (per module, not per session: tests elsewhere list every
blueprint, and must never plant these).

Each is a real, trainable CNN seed (a zero-initialised residual 1x1 conv, so it
starts as the identity and passes G2 like any seed) that goes wrong on cue:

- `fault_nan`: after `NAN_AFTER` training forwards, every output is NaN (train and eval);
- `fault_explode`: after `EXPLODE_AFTER` training forwards, its output is scaled by
  `EXPLOSION` (finite, but a loss explosion once the seed is blended in);
- `fault_eval_explode`: behaves in train mode; in eval mode its output is scaled by
  `EXPLOSION` (a validation collapse that training never sees).

Digits trains 12 batches per epoch, so `NAN_AFTER` = 14 trips in the seed's second epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from esper.kasmina.blueprints import BlueprintRegistry

NAN_AFTER = 14
EXPLODE_AFTER = 36
EXPLOSION = 1e4

# Plants at the first plateau (a min_delta of 0.1 makes every epoch after warm-up one), one
# seed at a time, and keeps any measured seed: a seed is blended within a few epochs.
EAGER_HEURISTIC = {
    "min_epochs_left": 0,
    "germination_cooldown": 1,
    "fossilize_above": -1.0,
    "tracker": {"plateau_patience": 1, "warmup_epochs": 1, "min_delta": 0.1, "stable_loss_change": 10.0},
}


class _FaultSeed(nn.Module):
    """x + conv1x1(x), the conv zero-initialised; counts its training forwards."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.training_forwards = 0

    def healthy(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.training_forwards += 1
        return x + self.conv(x)


class NanAfter(_FaultSeed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.healthy(x)
        return out * float("nan") if self.training_forwards > NAN_AFTER else out


class ExplodeAfter(_FaultSeed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.healthy(x)
        return out * EXPLOSION if self.training_forwards > EXPLODE_AFTER else out


class ExplodeInEval(_FaultSeed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.healthy(x)
        return out if self.training else out * EXPLOSION


FAULT_BLUEPRINTS = {
    "fault_nan": (NanAfter, "NaN after a few training forwards"),
    "fault_explode": (ExplodeAfter, "output x1e4 after a few training forwards"),
    "fault_eval_explode": (ExplodeInEval, "output x1e4 in eval mode only"),
}


@pytest.fixture(scope="module", autouse=True)
def fault_blueprints() -> Iterator[tuple[str, ...]]:
    for name, (module, description) in FAULT_BLUEPRINTS.items():
        BlueprintRegistry.register(name, "cnn", param_estimate=4_000, description=description)(module)
    try:
        yield tuple(FAULT_BLUEPRINTS)
    finally:
        for name in FAULT_BLUEPRINTS:
            BlueprintRegistry.unregister("cnn", name)


@pytest.fixture(scope="session")
def eager_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config file with the eager heuristic, for `esper train heuristic --config`."""
    path = tmp_path_factory.mktemp("config") / "eager.json"
    path.write_text(json.dumps({"heuristic": EAGER_HEURISTIC}))
    return path
