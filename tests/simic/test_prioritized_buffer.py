import numpy as np
import pytest
import torch

from esper.simic.prioritized_buffer import MAX_PENDING, PrioritizedReplayBuffer


def fill(buf: PrioritizedReplayBuffer, priorities, state_dim: int = 3, start: int = 0) -> None:
    """Add one transition per priority; state i is filled with the value start + i."""
    n = len(priorities)
    ids = np.arange(start, start + n, dtype=np.float32)
    states = np.repeat(ids[:, None], state_dim, axis=1)
    buf.add_batch(states, np.arange(n), ids, states + 1, np.zeros(n, dtype=bool), priorities)


def assert_tree_consistent(buf: PrioritizedReplayBuffer) -> None:
    leaves = buf._tree[buf._n_leaves:]
    assert buf.total_priority == pytest.approx(leaves.sum(), rel=1e-12)
    assert np.all(leaves[buf.capacity:] == 0)
    tree = buf._tree  # total_priority brought every sum up to date: each is exactly its children's
    parents = np.arange(1, buf._n_leaves)
    np.testing.assert_array_equal(tree[parents], tree[2 * parents] + tree[2 * parents + 1])


def sample_counts(buf: PrioritizedReplayBuffer, draws: int, batch_size: int = 100) -> np.ndarray:
    counts = np.zeros(buf.capacity, dtype=np.int64)
    for _ in range(draws // batch_size):
        _, idx, _ = buf.sample(batch_size)
        counts += np.bincount(idx, minlength=buf.capacity)
    return counts


def assert_frequencies_match(counts: np.ndarray, expected_probs: np.ndarray) -> None:
    expected = expected_probs / expected_probs.sum() * counts.sum()
    try:
        from scipy.stats import chisquare
    except ImportError:
        stat = float(((counts - expected) ** 2 / expected).sum())
        # 99.9th percentile of chi-square with 9 degrees of freedom is 27.9; allow others too.
        assert stat < 3 * len(counts) + 10, stat
    else:
        assert chisquare(counts, expected).pvalue > 1e-3


def test_sampling_frequencies_follow_priority_to_the_alpha():
    buf = PrioritizedReplayBuffer(10, alpha=0.6, epsilon=0.0, seed=0)
    priorities = np.arange(1.0, 11.0)
    fill(buf, priorities)
    np.testing.assert_allclose(buf._priorities, priorities**0.6)
    assert_frequencies_match(sample_counts(buf, 200_000), priorities**0.6)


def test_single_draw_frequencies_follow_priorities():
    # batch_size 1 means no stratification: each draw is an independent proportional sample.
    buf = PrioritizedReplayBuffer(10, alpha=1.0, epsilon=0.0, seed=1)
    priorities = np.array([5.0, 1, 1, 1, 1, 2, 2, 3, 3, 1])
    fill(buf, priorities)
    assert_frequencies_match(sample_counts(buf, 20_000, batch_size=1), priorities)


def test_importance_weights_hand_computed():
    # Stored priorities (p + 0) ** 0.5 = [1, 3], total 4, so P = [0.25, 0.75].
    # With 4 stratified segments [0,1) [1,2) [2,3) [3,4) the draws are forced: [0, 1, 1, 1].
    # w = (N * P) ** -beta with N = 2, beta = 0.5: w0 = 0.5 ** -0.5 = 1.41421,
    # w1 = 1.5 ** -0.5 = 0.81650; divided by the max (w0): [1, 0.57735].
    buf = PrioritizedReplayBuffer(2, alpha=0.5, beta=0.5, epsilon=0.0, seed=0)
    fill(buf, [1.0, 9.0])
    _, idx, weights = buf.sample(4)
    assert idx.tolist() == [0, 1, 1, 1]
    np.testing.assert_allclose(weights, [1.0, 0.57735, 0.57735, 0.57735], rtol=1e-5)


def test_update_priorities_changes_sampling():
    buf = PrioritizedReplayBuffer(8, seed=0)
    fill(buf, np.ones(8))
    _, idx, _ = buf.sample(256)
    assert np.mean(idx == 3) == pytest.approx(1 / 8, abs=0.01)  # stratified: 32 of 256
    buf.update_priorities([3], [1e6])
    assert_tree_consistent(buf)
    _, idx, _ = buf.sample(256)
    assert np.mean(idx == 3) > 0.95


def test_update_priorities_duplicate_indices_last_write_wins():
    buf = PrioritizedReplayBuffer(6, alpha=1.0, epsilon=0.0, seed=0)
    fill(buf, np.ones(6))
    buf.update_priorities(np.array([2, 4, 2, 2]), np.array([100.0, 5.0, 50.0, 7.0]))
    np.testing.assert_allclose(buf._priorities, [1, 1, 7, 1, 5, 1])
    assert buf._tree[1] == pytest.approx(16.0)
    assert_tree_consistent(buf)


@pytest.mark.parametrize("capacity", [1, 5, 7, 100])
def test_capacity_not_power_of_two(capacity):
    buf = PrioritizedReplayBuffer(capacity, alpha=1.0, epsilon=0.0, seed=0)
    priorities = np.arange(1.0, capacity + 1)
    fill(buf, priorities)
    assert len(buf) == capacity
    assert_tree_consistent(buf)
    counts = sample_counts(buf, 100 * capacity * 20, batch_size=100)
    if capacity > 1:
        assert_frequencies_match(counts, priorities)


def test_partially_filled_buffer_never_samples_empty_slots():
    buf = PrioritizedReplayBuffer(100, seed=0)
    fill(buf, np.full(37, 0.5))
    counts = sample_counts(buf, 50_000, batch_size=1000)
    assert counts[37:].sum() == 0
    assert np.all(counts[:37] > 0)


def test_draw_at_the_top_of_the_mass_stays_in_filled_slots():
    # Force every uniform draw to 1.0 so the last target lands exactly on the total mass.
    class TopRng:
        def random(self, n):
            return np.ones(n)

    buf = PrioritizedReplayBuffer(8, seed=0)
    fill(buf, [0.1, 0.2, 0.3])
    buf.rng = TopRng()
    _, idx, _ = buf.sample(3)
    assert idx.max() == 2


def test_guarded_walk_never_enters_empty_leaves():
    # A target equal to the total mass is what round-off can produce: the plain walk
    # then runs off the filled leaves, the guarded walk (sample's fallback) does not.
    buf = PrioritizedReplayBuffer(8, alpha=1.0, epsilon=0.0, seed=0)
    fill(buf, [1.0, 2.0, 3.0])
    total = np.array([buf._tree[1]])
    root = np.ones(1, dtype=np.int64)
    assert buf._walk(root, total, buf._depth, guard=False)[0] - buf._n_leaves >= 3
    assert buf._walk(root, total, buf._depth, guard=True)[0] - buf._n_leaves == 2


def test_samples_stay_in_filled_slots_under_extreme_priorities():
    class TopRng:  # every draw at the very top of its segment
        def random(self, n):
            return np.nextafter(np.ones(n), 0.0)

    rng = np.random.default_rng(0)
    for capacity in (1, 3, 100, 1000, 3000):
        for _ in range(5):
            filled = int(rng.integers(1, capacity + 1))
            buf = PrioritizedReplayBuffer(capacity, seed=0)
            fill(buf, 10.0 ** rng.uniform(-8, 8, filled))
            for draw_rng in (buf.rng, TopRng()):
                buf.rng = draw_rng
                _, idx, weights = buf.sample(64)
                assert idx.max() < filled
                assert np.all(buf._priorities[idx] > 0)
                assert np.all(np.isfinite(weights)) and weights.max() == 1.0


def test_zero_priority_slots_are_never_sampled():
    buf = PrioritizedReplayBuffer(5, alpha=1.0, epsilon=0.0, seed=0)
    fill(buf, [0.0, 1.0, 0.0, 2.0, 0.0])
    counts = sample_counts(buf, 20_000, batch_size=1000)
    assert counts[[0, 2, 4]].sum() == 0
    assert_frequencies_match(counts[[1, 3]], np.array([1.0, 2.0]))


def test_one_dominant_priority():
    buf = PrioritizedReplayBuffer(7, alpha=1.0, epsilon=0.0, seed=0)
    fill(buf, [1e-9, 1e12, 1e-9, 1e-9, 1e-9])
    _, idx, weights = buf.sample(512)
    assert np.all(idx < 5)
    assert np.all(idx == 1)
    np.testing.assert_allclose(weights, 1.0)


def test_all_equal_priorities_sample_uniformly():
    buf = PrioritizedReplayBuffer(10, seed=3)
    fill(buf, np.full(10, 2.5))
    counts = sample_counts(buf, 20_000, batch_size=1)
    assert_frequencies_match(counts, np.ones(10))
    _, _, weights = buf.sample(64)
    np.testing.assert_allclose(weights, 1.0)


def test_wrap_around_overwrites_oldest():
    buf = PrioritizedReplayBuffer(5, seed=0)
    fill(buf, np.ones(3), start=0)
    fill(buf, np.ones(4), start=3)  # slots 3, 4, then wraps to 0, 1
    assert len(buf) == 5
    assert sorted(buf._storage["rewards"].tolist()) == [2, 3, 4, 5, 6]
    batch, idx, _ = buf.sample(200)
    assert set(batch["rewards"].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    np.testing.assert_array_equal(batch["states"][:, 0], buf._storage["rewards"].numpy()[idx])


def test_batch_larger_than_capacity_keeps_newest():
    buf = PrioritizedReplayBuffer(5, alpha=1.0, epsilon=0.0, seed=0)
    fill(buf, np.arange(1.0, 13.0))
    assert len(buf) == 5
    assert sorted(buf._storage["rewards"].tolist()) == [7, 8, 9, 10, 11]
    np.testing.assert_allclose(np.sort(buf._priorities), [8, 9, 10, 11, 12])
    assert_tree_consistent(buf)
    fill(buf, [1.0], start=100)  # the next add overwrites the oldest survivor (reward 7)
    assert sorted(buf._storage["rewards"].tolist()) == [8, 9, 10, 11, 100]


def test_beta_anneals_to_one_and_stops():
    buf = PrioritizedReplayBuffer(4, beta=0.9, beta_increment=0.04, seed=0)
    fill(buf, np.ones(4))
    betas = []
    for _ in range(5):
        buf.sample(2)
        betas.append(buf.beta)
    np.testing.assert_allclose(betas, [0.94, 0.98, 1.0, 1.0, 1.0])


def test_batch_shapes_and_dtypes():
    buf = PrioritizedReplayBuffer(16, seed=0)
    for i in range(10):
        buf.add(torch.full((4, 2), float(i)), i % 3, 0.5 * i, np.full((4, 2), i + 1.0, np.float32),
                i == 9, priority=1.0 + i)
    batch, idx, weights = buf.sample(32)
    assert batch["states"].shape == (32, 4, 2) and batch["states"].dtype == torch.float32
    assert batch["next_states"].shape == (32, 4, 2)
    assert batch["actions"].shape == (32,) and batch["actions"].dtype == torch.int64
    assert batch["rewards"].shape == (32,) and batch["rewards"].dtype == torch.float32
    assert batch["dones"].shape == (32,) and batch["dones"].dtype == torch.float32
    assert idx.shape == weights.shape == (32,)
    torch.testing.assert_close(batch["rewards"], torch.from_numpy(0.5 * idx.astype(np.float32)))
    torch.testing.assert_close(batch["dones"], torch.from_numpy((idx == 9).astype(np.float32)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 4, "alpha": -0.1}, "alpha"),
        ({"capacity": 4, "beta": 1.5}, "beta"),
        ({"capacity": 4, "beta": -0.1}, "beta"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrioritizedReplayBuffer(**kwargs)


def test_bad_sample_and_priority_inputs():
    buf = PrioritizedReplayBuffer(4)
    with pytest.raises(ValueError, match="empty buffer"):
        buf.sample(2)
    fill(buf, np.ones(2))
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="priorities"):
            buf.add(np.zeros(3, np.float32), 0, 0.0, np.zeros(3, np.float32), False, bad)
        with pytest.raises(ValueError, match="priorities"):
            buf.update_priorities([0], [bad])
    with pytest.raises(ValueError, match=r"indices must be in \[0, 2\), .*; got 3, -1$"):
        buf.update_priorities([0, 3, -1], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="must match"):
        buf.update_priorities([0, 1], [1.0])
    with pytest.raises(ValueError, match="leading batch dimension"):
        buf.add_batch(np.zeros((3, 3)), np.zeros(3), np.zeros(3), np.zeros((3, 3)), np.zeros(3),
                      [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        buf.add(np.zeros(5, np.float32), 0, 0.0, np.zeros(5, np.float32), False, 1.0)
    assert len(buf) == 2


# ------------------------------------------------------------------ single adds


def add_one_by_one(buf: PrioritizedReplayBuffer, priorities, start: int = 0) -> None:
    """`fill`'s transitions, through `add` one at a time (what online recording calls)."""
    for i, priority in enumerate(priorities, start=start):
        state = np.full(3, i, dtype=np.float32)
        buf.add(state, i, float(i), state + 1, False, priority)


def test_single_adds_store_exactly_what_a_batch_add_stores():
    rng = np.random.default_rng(0)
    priorities = rng.random(2 * MAX_PENDING + 123) * 5  # wraps around and crosses the pending limit
    one_by_one, batched = PrioritizedReplayBuffer(3000, seed=0), PrioritizedReplayBuffer(3000, seed=0)
    add_one_by_one(one_by_one, priorities)
    fill(batched, priorities)
    assert len(one_by_one) == len(batched) == 3000
    for name, store in batched._storage.items():
        torch.testing.assert_close(one_by_one._storage[name], store, rtol=0, atol=0)
    # Python's pow and numpy's vectorised power may differ in the last bit, nothing more.
    np.testing.assert_allclose(one_by_one._priorities, batched._priorities, rtol=1e-15)
    assert_tree_consistent(one_by_one)  # brings the pending sums up to date, then checks them
    np.testing.assert_allclose(one_by_one._tree, batched._tree, rtol=1e-13)


def test_priority_is_readable_right_after_a_single_add():
    buf = PrioritizedReplayBuffer(8, alpha=0.5, epsilon=0.0, seed=0)
    add_one_by_one(buf, [4.0, 9.0])
    assert buf._priorities[0] == 2.0 and buf._priorities[1] == 3.0 and len(buf) == 2
    add_one_by_one(buf, [16.0], start=2)
    assert buf._priorities[2] == 4.0
    assert buf.total_priority == 9.0
    assert_tree_consistent(buf)


def test_sampling_after_single_adds_follows_priorities():
    buf = PrioritizedReplayBuffer(10, alpha=1.0, epsilon=0.0, seed=2)
    add_one_by_one(buf, np.full(3, 50.0))  # slots 0..2, overwritten by the wrap-around below
    priorities = np.array([5.0, 1, 1, 1, 1, 2, 2, 3, 3, 1])
    add_one_by_one(buf, priorities, start=3)  # slots 3..9, then 0..2
    expected = np.roll(priorities, 3)
    np.testing.assert_array_equal(buf._priorities, expected)
    assert_frequencies_match(sample_counts(buf, 20_000, batch_size=1), expected)


def test_single_adds_mix_with_updates_and_batch_adds():
    rng = np.random.default_rng(1)
    buf = PrioritizedReplayBuffer(50, alpha=0.7, seed=0)
    for step in range(300):
        add_one_by_one(buf, [rng.random() * 3], start=step)
        if step % 7 == 0:
            buf.update_priorities(rng.integers(0, len(buf), 5), rng.random(5))
        if step % 11 == 0:
            fill(buf, rng.random(4))
        if step % 13 == 0:
            assert_tree_consistent(buf)
    assert_tree_consistent(buf)


def test_single_add_copies_its_inputs():
    buf = PrioritizedReplayBuffer(4, seed=0)
    buf.add(np.zeros(2, np.float32), 0, 0.0, np.zeros(2, np.float32), False, 1.0)  # sizes the storage
    state = torch.ones(2)
    buf.add(state, 1, 1.0, state, True, 1.0)
    state.fill_(7.0)  # a caller reusing its tensor must not change what was stored
    torch.testing.assert_close(buf._storage["states"][1], torch.ones(2))
    assert buf._storage["dones"][1] == 1.0


def test_bad_single_adds_name_the_value_and_change_nothing():
    buf = PrioritizedReplayBuffer(4, seed=0)
    add_one_by_one(buf, [1.0])
    for bad in (float("nan"), float("inf"), -2.5):
        with pytest.raises(ValueError, match=f"priorities must be finite and >= 0, got {bad}"):
            buf.add(np.zeros(3, np.float32), 0, 0.0, np.zeros(3, np.float32), False, bad)
    with pytest.raises(ValueError, match=r"states items have shape \(4,\)"):
        buf.add(np.zeros(4, np.float32), 0, 0.0, np.zeros(4, np.float32), False, 1.0)
    assert len(buf) == 1 and buf.total_priority == buf._priorities[0]


def test_batch_priority_errors_show_the_values_and_where():
    buf = PrioritizedReplayBuffer(8, seed=0)
    fill(buf, np.ones(4))
    with pytest.raises(ValueError, match=r"got nan at 1, -1.0 at 3$"):
        buf.update_priorities([0, 1, 2, 3], [1.0, float("nan"), 2.0, -1.0])
    with pytest.raises(ValueError, match=r"got inf at 0, .* and 2 more$"):
        buf.update_priorities(np.arange(7) % 4, np.full(7, np.inf))
