"""What a controller sees at the end of each epoch, and what it must implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from esper.leyline.actions import Action
from esper.leyline.reports import FlopsReport, FossilReport, SeedReport, StageTransition


@dataclass(slots=True)
class EpochSignals:
    epoch: int
    total_epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_params: int
    seed_params: int
    # One entry per slot: its live seed; None for a slot without one (DORMANT).
    slots: dict[str, SeedReport | None] = field(default_factory=dict)
    rolled_back: bool = False
    # Every lifecycle move since the previous epoch's signals: the consequences of the last
    # decision (germinations, fossilizations, culls), the lifecycle clock, and this epoch's
    # rollback culls. Who counts or pays for outcomes reads these, not stage snapshots.
    transitions: list[StageTransition] = field(default_factory=list)
    # Each slot's kept seeds (part of the host): its merged width seeds (`WidthReport`s), then
    # its stack of fossils, each in the order they were kept.
    fossils: dict[str, list[FossilReport]] = field(default_factory=dict)
    # The epoch's FLOPs, the run's so far, and the inference FLOPs per sample of the network;
    # None when the run cannot count them (a model whose forward does not run on meta tensors).
    flops: FlopsReport | None = None
    # Per slot, the run's blueprints a germination there may plant now: those the slot can take
    # (a width seed needs a layer to widen, a stack a block to copy) within the run's growth
    # budget; None when the trainer was told neither (every blueprint may be planted).
    affordable: dict[str, list[str]] | None = None
    # Per limit the run's growth budget sets ("max_params_added", "max_inference_flops"), the
    # fraction of it still unused, in [0, 1]; None when the run has no budget.
    budget_left: dict[str, float] | None = None
    # Per slot, how hard the loss pushes on the host layers whose output the slot receives
    # (||grad|| / ||weight|| over the epoch, `tolaria.pressure`): where growth is most wanted.
    # None when it was not measured.
    pressure: dict[str, float] | None = None
    # Per slot, per blueprint in `affordable`, the inference FLOPs per sample a seed of it
    # would add there (the FLOPs meter's price); None when the run cannot count FLOPs.
    costs: dict[str, dict[str, float]] | None = None


class Controller(Protocol):
    """Decides, once per epoch, what to grow, keep or remove."""

    def decide(self, signals: EpochSignals) -> list[Action]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
