"""A training-FLOPs cap: a run that stops once it has spent a given training compute.

`esper compare`'s `static-final-matched` arm trains the grown run's final network for
exactly the training FLOPs the grown run spent. Whole epochs would overshoot by up to
an epoch, so the cap cuts the last epoch short, to the batch: `CappedBatches` wraps
the training loader and ends an epoch's pass at the first batch that starts with the
cap already reached (so the run stops within one batch past the cap, never before
it); the epoch loop (`EpochLoop(cap=...)`) ends the run after that epoch, which is
validated like any other, and follows the cap's progress in its learning-rate
schedule, so a capped run's schedule ends at its cap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice

from torch import Tensor

from esper.tolaria.trainer import Batches


class TrainingFlopsCap:
    """`cap` training FLOPs; `spent()` is what the run spent in the epochs before the current
    one, `per_sample()` a training step's FLOPs per sample for the current architecture."""

    def __init__(self, cap: float, spent: Callable[[], float], per_sample: Callable[[], float]) -> None:
        if not cap > 0:
            raise ValueError(f"a training-FLOPs cap must be > 0, got {cap}")
        self.cap = cap
        self.spent = spent
        self.per_sample = per_sample

    def reached(self) -> bool:
        return self.spent() >= self.cap

    def progress(self) -> float:
        """How far through its compute the run is: what a learning-rate schedule follows."""
        return self.spent() / self.cap

    def wrap(self, batches: Batches) -> CappedBatches:
        return CappedBatches(batches, self)


class CappedBatches:
    """A training loader whose epoch ends early once the cap is reached.

    An epoch's first pass decides where it ends (the cap, the FLOPs spent before it and
    the architecture are fixed within an epoch); a later pass over the same epoch (the
    governor recomputing some batches) sees exactly those batches.
    """

    def __init__(self, batches: Batches, cap: TrainingFlopsCap) -> None:
        self.batches = batches
        self.cap = cap
        self.epoch_batches: int | None = None  # decided by the epoch's first pass

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.batches, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        self.epoch_batches = None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.epoch_batches is not None:
            return islice(iter(self.batches), self.epoch_batches)
        return self._first_pass()

    def _first_pass(self) -> Iterator[tuple[Tensor, Tensor]]:
        spent, per_sample, count = self.cap.spent(), self.cap.per_sample(), 0
        for inputs, targets in self.batches:
            if spent >= self.cap.cap:
                break
            yield inputs, targets
            count += 1
            spent += per_sample * inputs.shape[0]
        self.epoch_batches = count
