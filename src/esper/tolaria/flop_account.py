"""A run's FLOPs account: what a trainer spends, epoch by epoch and over the run.

The phases (train, validate, the governor's probes) count the samples they ran
(`CountedBatches`), and `FlopAccount` prices them at the current architecture's
per-sample profile from `tolaria.flops.FlopMeter`, which measures each architecture once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from esper.leyline import FlopsReport
from esper.tolaria.distributed import World
from esper.tolaria.flops import EpochFlops, FlopMeter, FlopProfile

__all__ = ["CountedBatches", "FlopAccount"]

logger = logging.getLogger("esper.tolaria")

class CountedBatches:
    """`batches`, re-iterable, counting the samples of its first pass (one sample: one image or
    one sequence); `on_first` is handed the first batch seen, and with `only` just the batches
    at those positions are counted (those a caller computes on; it skips the others).

    Only the first pass is counted: the naive counterfactual path iterates the
    validation batches once per measured slot, and those passes are priced per
    sample by the profile, on the samples of one pass.
    """

    def __init__(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        on_first: Callable[[tuple[Tensor, Tensor]], None] | None = None,
        only: Iterable[int] | None = None,
    ) -> None:
        self.batches = batches
        self.on_first = on_first
        self.only = None if only is None else frozenset(only)
        self.samples = 0
        self.passes = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        counting = self.passes == 0
        self.passes += 1
        for index, batch in enumerate(self.batches):
            if self.on_first is not None:
                self.on_first(batch)
                self.on_first = None
            if counting and (self.only is None or index in self.only):
                self.samples += batch[0].shape[0]
            yield batch


class FlopAccount:
    """What a trainer's run spends: FLOPs per epoch by kind, and cumulative over the run.

    The phases report the samples they ran (`trained`, `validated`, `probed`); each
    is priced at the current architecture's per-sample profile (`FlopMeter`, measured
    once per architecture). `close_epoch` hands out the epoch's `FlopsReport` and
    starts the next. Without an example batch the meter is built from the first
    training batch (`observe`). The cumulative totals are checkpointed (`state_dict`).

    On several ranks (a distributed `world`, each rank running its share of every
    batch) the samples are summed over the ranks before they are priced, so every rank
    reports the global run's FLOPs: what one process training the same global batches
    would (the sum of the ranks' own work). Precision does not change the count:
    FlopCounterMode counts operations, whatever dtype they run in.

    A model whose forward cannot run on meta tensors (a user's model that reads tensor
    values) cannot be counted: the run goes on without FLOPs, said once in a warning
    line (`unavailable` holds why), and its reports are None.
    """

    def __init__(
        self,
        model: nn.Module,
        example_batch: tuple[Any, Tensor | None] | None = None,
        world: World | None = None,
    ) -> None:
        self.model = model
        self.world = world
        self.meter: FlopMeter | None = None
        self.unavailable: str | None = None
        if example_batch is not None:
            self.observe(example_batch)
        self.total = EpochFlops()
        self.epoch = EpochFlops()
        self.inference_per_sample = 0.0

    def observe(self, batch: tuple[Any, Tensor | None]) -> None:
        """Take the shapes of a batch of the task, if the meter has none yet."""
        if self.meter is None:
            self.meter = FlopMeter(self.model, batch)

    def measured(self) -> FlopMeter:
        """The meter, once it has a batch's shapes and has counted the host; a `RuntimeError`
        saying why when it cannot count."""
        if self.meter is None:
            raise RuntimeError("FLOPs cannot be counted before a batch of the task was seen")
        if self.profile() is None:
            raise RuntimeError(self.unavailable)
        return self.meter

    def profile(self) -> FlopProfile | None:
        """The current architecture's profile; None when this run's FLOPs cannot be counted."""
        if self.meter is None or self.unavailable is not None:
            return None
        try:
            return self.meter.profile()
        except RuntimeError as err:
            self.unavailable = str(err)
            if self.world is None or self.world.is_main:  # one line per run, not per rank
                logger.warning("warning: this run's FLOPs are not counted: %s", err)
            return None

    def trained(self, samples: int) -> None:
        """Train steps (forward + backward) on `samples` samples, with the architecture as it is."""
        samples = self._global(samples)
        profile = self.profile()
        if profile is not None:
            self._spend(EpochFlops(training=profile.training * samples))

    def validated(self, samples: int) -> None:
        """A validation on `samples` samples, with a counterfactual pass for each blended seed."""
        samples = self._global(samples)
        profile = self.profile()
        if profile is not None:
            self.inference_per_sample = profile.inference
            self._spend(profile.epoch(train_samples=0, val_samples=samples))

    def probed(self, samples: int) -> None:
        """The governor's culprit search recomputed `samples` samples' forward passes. Priced at
        the full network's forward: a probe with seeds switched off costs at most that."""
        samples = self._global(samples)
        profile = self.profile()
        if profile is not None:
            self._spend(EpochFlops(validation=profile.inference * samples))

    def _global(self, samples: int) -> int:
        """This rank's samples summed over the ranks (every rank calls this at the same point)."""
        if self.world is None or not self.world.distributed:
            return samples
        return int(self.world.all_reduce_(torch.tensor([samples], dtype=torch.float64)).item())

    def _spend(self, flops: EpochFlops) -> None:
        self.epoch = self.epoch + flops
        self.total = self.total + flops

    @property
    def counting(self) -> bool:
        """Whether this run's FLOPs are counted: a batch was seen and the model can be counted."""
        return self.meter is not None and self.unavailable is None

    def close_epoch(self) -> FlopsReport | None:
        """The epoch's FLOPs and the run's so far (None when they are not counted); the next
        epoch starts from zero."""
        epoch, total = self.epoch, self.total
        self.epoch = EpochFlops()
        if not self.counting:
            return None
        return FlopsReport(
            training=epoch.training,
            validation=epoch.validation,
            counterfactual=epoch.counterfactual,
            cumulative_training=total.training,
            cumulative_validation=total.validation,
            cumulative_counterfactual=total.counterfactual,
            inference_per_sample=self.inference_per_sample,
        )

    def summary(self) -> dict[str, float] | None:
        """The run's totals and the network's inference FLOPs per sample, for summary.json
        (None when they are not counted)."""
        if not self.counting:
            return None
        return {
            "inference_per_sample": self.inference_per_sample,
            "training": self.total.training,
            "validation": self.total.validation,
            "counterfactual": self.total.counterfactual,
        }

    def state_dict(self) -> dict[str, float]:
        total = self.total
        return {
            "training": total.training,
            "validation": total.validation,
            "counterfactual": total.counterfactual,
            "inference_per_sample": self.inference_per_sample,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total = EpochFlops(state["training"], state["validation"], state["counterfactual"])
        self.inference_per_sample = state["inference_per_sample"]
        self.epoch = EpochFlops()
