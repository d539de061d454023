"""The training-FLOPs cap cuts the last epoch short, to the batch, and repeats its cut on a second pass."""

from __future__ import annotations

import pytest
import torch

from esper.runtime.data import InMemoryLoader
from esper.tolaria.flops_cap import TrainingFlopsCap


def _loader() -> InMemoryLoader:
    inputs = torch.arange(10.0).view(10, 1)
    return InMemoryLoader(inputs, torch.zeros(10, dtype=torch.long), batch_size=3, shuffle=True, seed=0)


def test_an_epoch_stops_at_the_first_batch_that_starts_past_the_cap() -> None:
    spent = [0.0]
    cap = TrainingFlopsCap(7.0, spent=lambda: spent[0], per_sample=lambda: 1.0)
    batches = cap.wrap(_loader())
    batches.set_epoch(0)
    first = [inputs for inputs, _ in batches]
    # 3 + 3 samples leave the run short of 7; the third batch takes it to 9, past the cap.
    assert [len(b) for b in first] == [3, 3, 3] and batches.epoch_batches == 3
    again = [inputs for inputs, _ in batches]  # the governor recomputing the epoch's batches
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)) and len(again) == 3
    spent[0] = 9.0
    assert cap.reached()
    batches.set_epoch(1)
    assert list(batches) == []


def test_a_cap_beyond_the_epoch_leaves_it_whole_and_in_the_loaders_order() -> None:
    cap = TrainingFlopsCap(100.0, spent=lambda: 0.0, per_sample=lambda: 1.0)
    batches, plain = cap.wrap(_loader()), _loader()
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, plain, strict=True))
    assert not cap.reached()


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TrainingFlopsCap(0.0, spent=lambda: 0.0, per_sample=lambda: 1.0)
