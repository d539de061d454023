"""Proportional prioritized experience replay (Schaul et al., 2016) on a sum tree.

Transitions are sampled with probability P(i) = p_i / sum_k p_k, where the stored
priority p_i = (priority + epsilon) ** alpha. A sum tree makes sampling and
priority updates O(log N). Every hot-path operation (add_batch, sample,
update_priorities) works on whole batches at once: numpy walks the tree one level
at a time for all items together, so Python only loops over the ~log2(N) levels,
never over items. Sampling skips the small top of the tree with one prefix sum +
searchsorted over a mid level, then walks the rest.

Tree layout: a flat float64 array of size 2 * P, where P is the capacity rounded
up to a power of two. Node 1 is the root, node k has children 2k and 2k + 1, and
leaves live at [P, 2P). Leaves past `capacity` stay zero, so they are never drawn.

A single `add` (what online recording calls, once per step) cannot amortise
numpy's per-call overhead over a batch, so it takes a scalar path: the
transition goes straight into numpy views of the storage and its priority into
its leaf, so storage, `len` and `_priorities[i]` are current at once; only the
sums above the leaf wait in `_pending` and are recomputed for all pending leaves
together, as one batch, before anything reads a sum (`sample`, `total_priority`)
or when many have piled up. Invariant: every internal node that is not an
ancestor of a pending leaf equals the sum of its children (batched writes keep
it, since they recompute their own ancestors from children).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# Single adds whose ancestors wait before one batched recompute: bounds the memory and
# the delay; past a few thousand the batched recompute costs ~0.1 us per leaf.
MAX_PENDING = 4096


def _to_numpy(x: Any) -> np.ndarray:
    if type(x) is np.ndarray:  # the common case, checked first: single adds call this 3 times
        return x
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class PrioritizedReplayBuffer:
    """Ring buffer of (state, action, reward, next_state, done) with proportional PER.

    Storage is torch tensors, preallocated lazily on the first add from the per-item
    shape and dtype of the state and action, so a sampled batch is a single
    `index_select` per field. Rewards and dones are stored as float32 so they drop
    straight into TD targets.
    """

    def __init__(
        self,
        capacity: int,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_increment: float = 0.001,
        epsilon: float = 1e-6,
        seed: int | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be a positive integer, got {capacity}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not beta_increment >= 0:
            raise ValueError(f"beta_increment must be >= 0, got {beta_increment}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")

        self.capacity = int(capacity)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.beta_increment = float(beta_increment)
        self.epsilon = float(epsilon)
        self.rng = np.random.default_rng(seed)

        self._n_leaves = 1 << (self.capacity - 1).bit_length()  # next power of two
        self._depth = self._n_leaves.bit_length() - 1  # levels between root and leaves
        self._jump = min(self._depth, 10)  # top levels resolved by one searchsorted (sample)
        self._tree = np.zeros(2 * self._n_leaves, dtype=np.float64)
        self._priorities = self._tree[self._n_leaves : self._n_leaves + self.capacity]  # view

        self._storage: dict[str, torch.Tensor] | None = None
        self._arrays: dict[str, np.ndarray] = {}  # numpy views of _storage, for single adds
        self._item_shapes: tuple[tuple[int, ...], ...] = ()  # of one state, action, next state
        self._pending: list[int] = []  # slots added one by one whose ancestors are not summed yet
        self._next = 0  # slot the next transition goes to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def total_priority(self) -> float:
        """Sum of the stored priorities (the sampling mass)."""
        self._sync()
        return float(self._tree[1])

    # ----------------------------------------------------------------- adding
    def add(self, state: Any, action: Any, reward: float, next_state: Any, done: bool,
            priority: float) -> None:
        """Add one transition in O(log N) amortised, with small constants (see the module doc)."""
        value = float(priority)
        if not 0.0 <= value < math.inf:  # NaN fails both comparisons
            raise ValueError(f"priorities must be finite and >= 0, got {value}")
        if self._storage is None:  # the first add sizes the storage: the batch path does that
            self.add_batch(_to_numpy(state)[None], _to_numpy(action)[None], [reward],
                           _to_numpy(next_state)[None], [done], [priority])
            return
        state, action, next_state = _to_numpy(state), _to_numpy(action), _to_numpy(next_state)
        if (state.shape, action.shape, next_state.shape) != self._item_shapes:
            self._check_item_shapes(state[None], action[None], next_state[None])  # names the culprit
        slot = self._next
        arrays = self._arrays
        arrays["states"][slot] = state
        arrays["actions"][slot] = action
        arrays["rewards"][slot] = reward
        arrays["next_states"][slot] = next_state
        arrays["dones"][slot] = done
        self._tree[slot + self._n_leaves] = (value + self.epsilon) ** self.alpha
        self._pending.append(slot)
        if len(self._pending) >= MAX_PENDING:
            self._sync()
        self._next = (slot + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def add_batch(self, states: Any, actions: Any, rewards: Any, next_states: Any, dones: Any,
                  priorities: Any) -> None:
        """Add a batch of transitions; the leading dimension of every argument is the batch."""
        states, next_states = _to_numpy(states), _to_numpy(next_states)
        actions = _to_numpy(actions)
        rewards = _to_numpy(rewards).astype(np.float32).reshape(-1)
        dones = _to_numpy(dones).astype(np.float32).reshape(-1)
        priorities = self._check_priorities(priorities)
        n = len(priorities)
        for name, arr in (("states", states), ("actions", actions), ("rewards", rewards),
                          ("next_states", next_states), ("dones", dones)):
            if arr.ndim == 0 or len(arr) != n:
                raise ValueError(
                    f"{name} must have leading batch dimension {n} (the number of priorities), "
                    f"got shape {arr.shape}"
                )
        if n == 0:
            return
        if self._storage is None:
            self._allocate(states, actions)
        self._check_item_shapes(states, actions, next_states)

        # Only the newest `capacity` items survive a batch larger than the buffer.
        if n > self.capacity:
            skip = n - self.capacity
            self._next = (self._next + skip) % self.capacity
            states, actions, rewards = states[skip:], actions[skip:], rewards[skip:]
            next_states, dones, priorities = next_states[skip:], dones[skip:], priorities[skip:]
            n = self.capacity

        slots = (self._next + np.arange(n)) % self.capacity
        slots_t = torch.from_numpy(slots)
        for name, arr in (("states", states), ("actions", actions), ("rewards", rewards),
                          ("next_states", next_states), ("dones", dones)):
            store = self._storage[name]
            store.index_copy_(0, slots_t, torch.as_tensor(arr, dtype=store.dtype))
        self._set_leaves(slots, (priorities + self.epsilon) ** self.alpha)
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def _allocate(self, states: np.ndarray, actions: np.ndarray) -> None:
        c = self.capacity
        state_dtype = torch.from_numpy(states[:0]).dtype
        action_dtype = torch.from_numpy(actions[:0]).dtype
        self._storage = {
            "states": torch.zeros((c, *states.shape[1:]), dtype=state_dtype),
            "actions": torch.zeros((c, *actions.shape[1:]), dtype=action_dtype),
            "rewards": torch.zeros(c, dtype=torch.float32),
            "next_states": torch.zeros((c, *states.shape[1:]), dtype=state_dtype),
            "dones": torch.zeros(c, dtype=torch.float32),
        }
        self._arrays = {name: store.numpy() for name, store in self._storage.items()}
        self._item_shapes = (states.shape[1:], actions.shape[1:], states.shape[1:])

    def _check_item_shapes(self, states: np.ndarray, actions: np.ndarray,
                           next_states: np.ndarray) -> None:
        for name, arr in (("states", states), ("actions", actions), ("next_states", next_states)):
            expected = tuple(self._storage[name].shape[1:])
            if arr.shape[1:] != expected:
                raise ValueError(
                    f"{name} items have shape {arr.shape[1:]}, but this buffer stores {expected}"
                )

    @staticmethod
    def _check_priorities(priorities: Any) -> np.ndarray:
        p = _to_numpy(priorities).astype(np.float64).reshape(-1)
        valid = (p >= 0) & (p < np.inf)  # one pass: NaN fails both comparisons
        if not valid.all():
            # Plain "value at i" pairs: a numpy repr's brackets would be eaten by console markup.
            bad = np.flatnonzero(~valid)
            shown = ", ".join(f"{p[i]} at {i}" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ValueError(f"priorities must be finite and >= 0, got {shown}{more}")
        return p

    # -------------------------------------------------------------- sum tree
    def _set_leaves(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Write leaf values (slots must be unique), then recompute their ancestors."""
        self._tree[slots + self._n_leaves] = values
        self._sum_ancestors(slots)

    def _sync(self) -> None:
        """Recompute the sums above the leaves single adds wrote since the last sync."""
        if self._pending:
            slots = np.array(self._pending, dtype=np.int64)
            self._pending.clear()
            self._sum_ancestors(slots)

    def _sum_ancestors(self, slots: np.ndarray) -> None:
        """Recompute the ancestors of these leaves level by level (repeated slots are fine).

        Parents are recomputed from their two children rather than adjusted by deltas,
        so sums stay exact and floating-point drift cannot build up over millions of
        updates. Near the root a level has fewer nodes than the batch touches, and one
        slice-wide add over the whole level is cheaper than gathering the touched nodes.
        """
        tree = self._tree
        nodes = slots + self._n_leaves
        level = self._n_leaves  # index of the first node of the current level
        while level > 1:
            level >>= 1
            if level <= 4 * len(slots):
                np.add(tree[2 * level : 4 * level : 2], tree[2 * level + 1 : 4 * level : 2],
                       out=tree[level : 2 * level])
            else:
                nodes >>= 1
                left = nodes << 1
                tree[nodes] = tree[left] + tree[left + 1]

    def update_priorities(self, indices: Any, priorities: Any) -> None:
        """Set new raw priorities (e.g. |TD error|) for sampled slots; last write wins."""
        indices = _to_numpy(indices).astype(np.int64).reshape(-1)
        priorities = self._check_priorities(priorities)
        if len(indices) != len(priorities):
            raise ValueError(
                f"got {len(indices)} indices but {len(priorities)} priorities; they must match"
            )
        outside = indices[(indices < 0) | (indices >= self._size)]
        if len(outside):
            shown = ", ".join(str(i) for i in outside[:5]) + (" ..." if len(outside) > 5 else "")
            raise ValueError(
                f"indices must be in [0, {self._size}), the filled part of the buffer; got {shown}"
            )
        # Keep the last occurrence of each index: unique() on the reversed array finds it.
        unique, first_in_reversed = np.unique(indices[::-1], return_index=True)
        last = len(indices) - 1 - first_in_reversed
        self._set_leaves(unique, (priorities[last] + self.epsilon) ** self.alpha)

    # -------------------------------------------------------------- sampling
    def sample(self, batch_size: int) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
        """Stratified proportional sample: one uniform draw per equal-mass segment of the total.

        Returns (batch of torch tensors, slot indices, importance-sampling weights).
        The weights w_i = (N * P(i)) ** -beta are divided by the batch maximum so the
        largest is 1 and updates are only ever scaled down. beta then anneals toward 1.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self._size == 0:
            raise ValueError("cannot sample from an empty buffer; add transitions first")
        self._sync()
        total = self._tree[1]
        if total <= 0:
            raise ValueError("cannot sample: every stored priority is zero (use epsilon > 0)")

        segment = total / batch_size
        targets = (np.arange(batch_size) + self.rng.random(batch_size)) * segment
        # Round-off can push the last draw to `total`; keep it strictly inside the mass.
        targets = np.minimum(targets, np.nextafter(total, 0.0))
        nodes = self._descend(targets)
        leaf_mass = self._tree[nodes]
        # Round-off can carry a target past the last non-empty leaf into an empty one;
        # redo those (rare) draws with the guarded walk, which only enters non-empty nodes.
        stray = leaf_mass == 0
        if stray.any():
            nodes[stray] = self._walk(np.ones(stray.sum(), dtype=np.int64), targets[stray],
                                      self._depth, guard=True)
            leaf_mass = self._tree[nodes]
        indices = nodes - self._n_leaves

        probs = leaf_mass / total
        weights = (self._size * probs) ** -self.beta
        weights /= weights.max()
        self.beta = min(1.0, self.beta + self.beta_increment)

        rows = torch.from_numpy(indices)
        batch = {name: store.index_select(0, rows) for name, store in self._storage.items()}
        return batch, indices, weights.astype(np.float32)

    def _descend(self, targets: np.ndarray) -> np.ndarray:
        """Leaf node id for every target mass at once (fast path; see `sample` for strays).

        The top of the tree is small, so rather than walking it level by level, one
        prefix sum over level `_jump` and one searchsorted place every target in its
        subtree there; the binary walk then covers the remaining levels.
        """
        first = 1 << self._jump  # first node of the level we jump to
        mass = self._tree[first : 2 * first]
        ends = np.cumsum(mass)
        nodes = np.minimum(np.searchsorted(ends, targets, side="right"), first - 1)
        targets = targets - (ends[nodes] - mass[nodes])
        return self._walk(nodes + first, targets, self._depth - self._jump, guard=False)

    def _walk(self, nodes: np.ndarray, targets: np.ndarray, levels: int, guard: bool) -> np.ndarray:
        """Walk `levels` levels down from `nodes`, all targets at once; returns the final nodes.

        At each level a target goes right (minus the left mass) when it is at least the
        left child's mass. With `guard`, a target never enters an empty right child,
        which makes the walk immune to round-off at the cost of one more gather per level.
        """
        nodes, targets = nodes.copy(), targets.copy()
        for _ in range(levels):
            nodes <<= 1
            left_mass = self._tree[nodes]
            go_right = targets >= left_mass
            if guard:
                go_right &= self._tree[nodes + 1] > 0
            targets -= left_mass * go_right
            nodes += go_right
        return nodes
