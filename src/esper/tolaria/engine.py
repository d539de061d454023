"""The epoch engine: train, validate with counterfactuals, guard, act, step the lifecycle.

One `MorphogeneticTrainer` drives one host. A run (heuristic job, or one PPO
environment) calls, each epoch: `run_epoch` -> controller decides on `signals` ->
`apply` -> `end_epoch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from esper.kasmina.host import MorphogeneticModel
from esper.leyline import (
    ACTIVE_STAGES,
    Action,
    ActionKind,
    EpochSignals,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
)
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.trainer import (
    Batches,
    OptimConfig,
    Optimizers,
    record_validation,
    train_epoch,
    validate_with_counterfactuals,
)


@dataclass(slots=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_params: int
    seed_params: int
    contributions: dict[str, float] = field(default_factory=dict)
    rollback: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_epoch(loader: Iterable, epoch: int) -> None:
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


class MorphogeneticTrainer:
    def __init__(
        self,
        model: MorphogeneticModel,
        train_loader: Batches,
        val_loader: Batches,
        optim: OptimConfig,
        governor: GovernorConfig | None = None,
        on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.optimizers = Optimizers(model, optim)
        self.governor = Governor(model, self.optimizers, governor)
        self.on_telemetry = on_telemetry
        self.epoch = 0
        self.last_record: EpochRecord | None = None

    @property
    def slots(self):
        return self.model.seed_slots

    def run_epoch(self) -> EpochRecord:
        """Train one epoch, validate (with per-slot counterfactuals) and guard against divergence."""
        start = time.perf_counter()
        epoch = self.epoch
        _set_epoch(self.train_loader, epoch)
        train = train_epoch(self.model, self.train_loader, self.optimizers)
        val = validate_with_counterfactuals(self.model, self.val_loader)
        rollback = self.governor.diagnose(train.loss, val.loss)
        if rollback is None:
            self.governor.accept(train.loss)
        else:
            culled = self.governor.rollback(rollback)
            self._emit(
                TelemetryEventType.GOVERNOR_ROLLBACK,
                rollback,
                culled=[s.state.seed_id for s in culled],
                slots=[s.slot_id for s in culled],
            )
            self._sync_optimizers()
            val = validate_with_counterfactuals(self.model, self.val_loader)
        record_validation(self.slots.values(), val.accuracy)
        record = EpochRecord(
            epoch=epoch,
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            host_params=self.model.host_param_count(),
            seed_params=self.model.seed_param_count(),
            contributions=val.contributions,
            rollback=rollback,
            seconds=time.perf_counter() - start,
        )
        self.last_record = record
        return record

    def signals(self, record: EpochRecord, total_epochs: int) -> EpochSignals:
        return EpochSignals(
            epoch=record.epoch,
            total_epochs=total_epochs,
            train_loss=record.train_loss,
            train_accuracy=record.train_accuracy,
            val_loss=record.val_loss,
            val_accuracy=record.val_accuracy,
            host_params=record.host_params,
            seed_params=record.seed_params,
            slots={slot_id: slot.report() for slot_id, slot in self.slots.items()},
            rolled_back=record.rollback is not None,
        )

    def apply(self, actions: Iterable[Action]) -> list[tuple[Action, bool, str]]:
        """Carry out a controller's actions; returns (action, done, message) for each."""
        outcomes = []
        for action in actions:
            if action.kind == ActionKind.WAIT:
                continue
            slot = self.slots[action.slot_id]
            match action.kind:
                case ActionKind.GERMINATE:
                    slot.germinate(action.blueprint_id, host_module=self.model.host)
                    done, message = True, f"germinated {action.blueprint_id}"
                case ActionKind.FOSSILIZE:
                    result = slot.advance_stage(SeedStage.FOSSILIZED)
                    done, message = result.passed, result.message
                case ActionKind.CULL:
                    done = slot.cull(action.reason or "controller decision")
                    message = "culled" if done else "nothing to cull"
            outcomes.append((action, done, message))
            self._emit(
                TelemetryEventType.CONTROLLER_DECISION,
                f"{action.kind.name} {action.slot_id}: {message}",
                slot_id=action.slot_id,
                action=action.kind.name,
                done=done,
                reason=action.reason,
            )
        self._sync_optimizers()
        return outcomes

    def end_epoch(self) -> None:
        """Step every slot's lifecycle clock and snapshot the (now final) host state."""
        for slot in self.slots.values():
            slot.step_epoch()
        self._sync_optimizers()
        self.governor.snapshot()
        self.epoch += 1

    def _sync_optimizers(self) -> None:
        """Keep the seed optimiser's groups in line with the slots' live seeds."""
        optimizers = self.optimizers
        for slot_id in optimizers.slot_order():
            slot = self.slots[slot_id]
            if slot.stage == SeedStage.FOSSILIZED:
                optimizers.move_seed_to_host(slot_id)
            elif slot.stage not in ACTIVE_STAGES or slot.seed is None:
                optimizers.remove_seed(slot_id)
        known = set(optimizers.slot_order())
        for slot_id, slot in self.slots.items():
            if slot.stage in ACTIVE_STAGES and slot.seed is not None and slot_id not in known:
                optimizers.add_seed(slot_id, list(slot.seed.parameters()))

    def _emit(self, event_type: TelemetryEventType, message: str, slot_id: str | None = None, **data: Any) -> None:
        if self.on_telemetry is not None:
            self.on_telemetry(
                TelemetryEvent(event_type=event_type, epoch=self.epoch, slot_id=slot_id, message=message, data=data)
            )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "slots": {slot_id: slot.lifecycle_state() for slot_id, slot in self.slots.items()},
            "optimizers": self.optimizers.state_dict(),
            "governor": self.governor.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for slot_id, slot in self.slots.items():
            slot.load_lifecycle_state(state["slots"][slot_id], host_module=self.model.host)
        self.model.load_state_dict(state["model"])
        saved = state["optimizers"]
        self.optimizers = Optimizers(self.model, self.optimizers.config)
        # Rebuild groups in their saved order so the optimiser state lines up.
        for slot_id in saved["seed_slots"]:
            self.optimizers.add_seed(slot_id, list(self.slots[slot_id].seed.parameters()))
        for slot_id in saved["host_extra_slots"]:
            self.optimizers.add_seed(slot_id, list(self.slots[slot_id].seed.parameters()))
            self.optimizers.move_seed_to_host(slot_id)
        self.optimizers.host.load_state_dict(saved["host"])
        self.optimizers.seeds.load_state_dict(saved["seeds"])
        self.governor.optimizers = self.optimizers
        self.governor.load_state_dict(state["governor"])
        torch.set_rng_state(state["rng"])
        self.epoch = state["epoch"]
