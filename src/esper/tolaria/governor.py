"""The governor: catches a diverging run, rolls the host back and culls the culprit seed."""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from esper.kasmina.host import MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.leyline import ACTIVE_STAGES, BLENDED_STAGES
from esper.tolaria.trainer import Optimizers


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    # A loss above `explosion_factor` x the median of the last `history` good losses is an explosion.
    explosion_factor: float = 5.0
    history: int = 5


def _live_slots(model: MorphogeneticModel) -> list[SeedSlot]:
    return [s for s in model.seed_slots.values() if s.stage in ACTIVE_STAGES and s.seed is not None]


def _has_nonfinite(slot: SeedSlot) -> bool:
    return any(not torch.isfinite(p).all() for p in slot.seed.parameters())


class Governor:
    """Keeps a snapshot of the last good host state (live seeds excluded) to roll back to.

    Live seeds are left out of the snapshot because a rollback culls the seed that
    caused it; fossilized seeds are part of the host and are included.
    """

    def __init__(self, model: MorphogeneticModel, optimizers: Optimizers, config: GovernorConfig | None = None) -> None:
        self.model = model
        self.optimizers = optimizers
        self.config = config or GovernorConfig()
        self.good_losses: list[float] = []
        self.rollbacks = 0
        self._snapshot: dict[str, Any] | None = None
        self.snapshot()

    def snapshot(self) -> None:
        # Found by module identity, not by name: where a slot lives in the model's state dict
        # depends on the model (a built-in host's `host.slots.*`, a grafted model's `slots.*`).
        live_seeds = {id(slot.seed) for slot in _live_slots(self.model)}
        live_prefixes = tuple(
            f"{name}." for name, module in self.model.named_modules() if id(module) in live_seeds
        )
        model_state = {
            key: value.detach().clone()
            for key, value in self.model.state_dict().items()
            if not key.startswith(live_prefixes)
        }
        self._snapshot = {
            "model": model_state,
            "host_optimizer": copy.deepcopy(self.optimizers.host.state_dict()),
        }

    def diagnose(self, train_loss: float, val_loss: float) -> str | None:
        """Why this epoch must be rolled back, or None if it looks healthy."""
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            return f"non-finite loss (train {train_loss}, val {val_loss})"
        if len(self.good_losses) >= 2:
            reference = statistics.median(self.good_losses[-self.config.history :])
            limit = self.config.explosion_factor * max(reference, 1e-8)
            if train_loss > limit:
                return f"loss explosion: train loss {train_loss:.4g} > {limit:.4g}"
        return None

    def accept(self, train_loss: float) -> None:
        """Record a healthy epoch's loss (call `snapshot` once the epoch is complete)."""
        self.good_losses.append(train_loss)
        del self.good_losses[: -self.config.history]

    def rollback(self, reason: str) -> list[SeedSlot]:
        """Restore the last good host state and cull the offending live seeds; returns them."""
        assert self._snapshot is not None
        self.model.load_state_dict(self._snapshot["model"], strict=False)
        self.optimizers.host.load_state_dict(self._snapshot["host_optimizer"])
        live = _live_slots(self.model)
        offenders = [s for s in live if _has_nonfinite(s)]
        offenders = offenders or [s for s in live if s.stage in BLENDED_STAGES] or live
        for slot in offenders:
            slot.state.is_healthy = False
            slot.cull(f"governor rollback: {reason}")
        self.rollbacks += 1
        return offenders

    def state_dict(self) -> dict[str, Any]:
        return {"good_losses": list(self.good_losses), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.good_losses = list(state["good_losses"])
        self.rollbacks = int(state["rollbacks"])
        self.snapshot()
