"""`tolaria.distributed.World` in two real processes (gloo): the collectives a run relies on.

One process group runs every check (`distributed_support.every_check`; starting the
processes is what costs), ending with rank 1 dying so that rank 0's failure names it.
"""

from __future__ import annotations

import itertools

import pytest
from distributed_support import every_check, rank_one_is_stuck, run_ranks

from esper.tolaria.distributed import World, shard


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(every_check, 2, tmp_path_factory.mktemp("ranks"), timeout_s=20.0)


def test_reduced_gradients_are_the_whole_batchs_whatever_the_shares(ranks):
    for rank in ranks:
        for case in ("uneven", "empty"):  # 3 + 5 samples; 0 + 8 (rank 0 has none this step)
            assert rank["gradients_of_shares"][case]["grad_error"] < 1e-6
            assert rank["gradients_of_shares"][case]["loss_error"] < 1e-6


def test_broadcast_makes_replicas_identical_and_drift_is_caught(ranks):
    for rank in ranks:
        checks = rank["broadcast_and_replicas"]
        assert checks["identical"]
        assert checks["averaged"] == [0.5, 0.5, 0.5]  # BatchNorm running means 0 and 1
        assert "differs from rank 0" in checks["drift"] and "[1]" in checks["drift"]


def test_ranks_that_disagree_on_the_config_refuse_to_start(ranks):
    for rank in ranks:
        error = rank["disagreeing_configs"]["error"]
        assert "rank 1 differs from rank 0 in config.envs." in error and "same command line" in error


def test_a_failure_on_rank_zero_stops_every_rank(ranks):
    assert ranks[0]["rank_zero_fails"] == {"raised": "FileExistsError"}
    assert ranks[1]["rank_zero_fails"] == {"raised": "RankZeroFailed"}


def test_a_fault_in_one_ranks_share_rolls_every_rank_back_together(ranks):
    for rank in ranks:
        checks = rank["rollback_together"]
        assert checks["rollback"].startswith("non-finite loss (train nan")
        assert checks["restored"] and checks["rollbacks"] == 1


def test_every_rank_reports_the_flops_of_the_global_batches(ranks):
    for rank in ranks:
        flops = rank["flops_of_the_global_batches"]
        assert flops["shared"]["training"] > 0 and flops["shared"]["validation"] > 0
        for key, value in flops["alone"].items():  # summed over the ranks' shares: one process's
            assert flops["shared"][key] == pytest.approx(value, rel=1e-12), key


def test_a_dead_rank_is_named_by_the_one_left_waiting(ranks):
    message = ranks[0]["rank_one_dies"]["message"]
    assert message.startswith("rank 1 stopped responding during epoch 3 of 9"), message
    assert "rank 0 stopped waiting for them in all_reduce" in message


@pytest.mark.slow
def test_a_live_but_stuck_rank_is_named_once_the_timeout_runs_out(tmp_path):
    ranks = run_ranks(rank_one_is_stuck, 2, tmp_path, timeout_s=2.0)
    message = ranks[0]["message"]
    assert message.startswith("rank 1 is alive but stuck in a long computation (it never reached this step)"), message


def test_one_process_is_a_world_of_one_with_identity_collectives():
    world = World.single()
    assert not world.distributed and world.is_main
    assert world.broadcast_object("x") == "x" and world.all_gather_object(3) == [3]
    assert world.reduce_gradients([], 5, [0.25]) == [0.25]


@pytest.mark.parametrize(("n", "size"), [(8, 2), (8, 3), (3, 2), (5, 5)])
def test_shards_cover_everything_once_and_differ_by_at_most_one(n, size):
    bounds = [shard(n, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
