"""Data parallel loading: the ranks' shares of each batch are exactly one process's batch."""

from __future__ import annotations

import pytest
import torch

from esper.runtime.data import InMemoryLoader, TaskData


def _loader(rank: int = 0, world_size: int = 1, n: int = 50, **kwargs) -> InMemoryLoader:
    inputs = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    options = {"batch_size": 16, "shuffle": True, "seed": 3, "min_batch_size": 2, **kwargs}
    return InMemoryLoader(inputs, torch.arange(n), rank=rank, world_size=world_size, **options)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_the_shares_of_every_batch_make_up_one_processs_batch(world_size, shuffle):
    # 56 = 3 x 16 + 8: the partial last batch is shared too (at least 2 samples a rank).
    alone = _loader(n=56, shuffle=shuffle)
    ranks = [_loader(rank, world_size, n=56, shuffle=shuffle) for rank in range(world_size)]
    for epoch in (0, 1):
        for loader in (alone, *ranks):
            loader.set_epoch(epoch)
        shares = [list(loader) for loader in ranks]
        assert all(len(loader) == len(alone) for loader in ranks)
        for i, (inputs, targets) in enumerate(alone):
            assert torch.equal(torch.cat([share[i][1] for share in shares]), targets)
            assert torch.equal(torch.cat([share[i][0] for share in shares]), inputs)


def test_a_trailing_batch_too_small_to_share_is_dropped_on_every_rank():
    # 50 = 3 x 16 + 2: one process keeps the last 2 samples; 2 ranks would get 1 each (< 2).
    assert len(_loader()) == 4
    assert [len(_loader(rank, 2)) for rank in (0, 1)] == [3, 3]
    assert [len(_loader(rank, 2, n=52)) for rank in (0, 1)] == [4, 4]  # 4 left: 2 each


def test_a_batch_too_small_for_the_ranks_is_refused():
    with pytest.raises(ValueError, match="a batch of 16 cannot be shared by 9 processes"):
        _loader(0, 9)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        _loader(2, 2)


def test_the_data_signature_tells_copies_from_other_data():
    def data(values: torch.Tensor) -> TaskData:
        return TaskData(values, torch.zeros(len(values)), values[:2], torch.zeros(2))

    values = torch.randn(10, 3)
    assert data(values).signature() == data(values.clone()).signature()
    changed = values.clone()
    changed[4, 1] += 1.0
    assert data(changed).signature() != data(values).signature()
