"""Throughput of esper's vectorised PER buffer vs a per-item sum tree (and cpprb if installed).

    python benchmarks/per.py [--quick]

Each buffer is filled to capacity (131072) first, then we time three operations,
each on 256 transitions per call: add (one chunk of 256), sample(256) and
update_priorities(256); and single adds, `add(...)` of one transition as online
recording calls it, N = 131072 of them in a row into the full buffer (ours
includes bringing its tree sums up to date at the end). Figures are calls (or
single adds) per second, the median over several repetitions. Prints one JSON
line per figure:
    {"name", "ours", "baseline", "ratio", "target", "pass"}
Targets: sample and update ratio >= 10 vs the per-item baseline; add and single
add ratio >= 1. cpprb lines compare against cpprb (C++ sum tree) and carry no target.

The baseline is the classic textbook PER (a Python loop over items, each walking
the tree on its own). It writes transitions into preallocated numpy arrays (cheap
per-item writes) and gathers a batch with one `index_select` per field through
torch views of them, as ours does, so the comparison isolates the tree work and,
if anything, flatters the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from esper.simic.prioritized_buffer import PrioritizedReplayBuffer

CAPACITY = 131072
BATCH = 256
STATE_DIM = 32


class PerItemPER:
    """Textbook proportional PER: a sum tree updated and searched one item at a time."""

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4,
                 beta_increment: float = 0.001, epsilon: float = 1e-6, seed: int = 0) -> None:
        self.capacity, self.alpha, self.beta = capacity, alpha, beta
        self.beta_increment, self.epsilon = beta_increment, epsilon
        self.tree = np.zeros(2 * capacity - 1)  # node i has children 2i+1, 2i+2
        self.rng = np.random.default_rng(seed)
        self.storage: dict[str, np.ndarray] = {
            "states": np.zeros((capacity, STATE_DIM), np.float32),
            "actions": np.zeros(capacity, np.int64),
            "rewards": np.zeros(capacity, np.float32),
            "next_states": np.zeros((capacity, STATE_DIM), np.float32),
            "dones": np.zeros(capacity, np.float32),
        }
        self.views = {name: torch.from_numpy(arr) for name, arr in self.storage.items()}
        self.next = 0
        self.size = 0

    def _update(self, tree_idx: int, priority: float) -> None:
        change = priority - self.tree[tree_idx]
        self.tree[tree_idx] = priority
        while tree_idx != 0:
            tree_idx = (tree_idx - 1) // 2
            self.tree[tree_idx] += change

    def _retrieve(self, value: float) -> int:
        idx = 0
        while 2 * idx + 1 < len(self.tree):
            left = 2 * idx + 1
            if value <= self.tree[left]:
                idx = left
            else:
                value -= self.tree[left]
                idx = left + 1
        return idx

    def add(self, state, action, reward, next_state, done, priority) -> None:
        slot = self.next
        storage = self.storage
        storage["states"][slot] = state
        storage["actions"][slot] = action
        storage["rewards"][slot] = reward
        storage["next_states"][slot] = next_state
        storage["dones"][slot] = done
        self._update(slot + self.capacity - 1, (priority + self.epsilon) ** self.alpha)
        self.next = (self.next + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_batch(self, states, actions, rewards, next_states, dones, priorities) -> None:
        for item in zip(states, actions, rewards, next_states, dones, priorities, strict=True):
            self.add(*item)

    def sample(self, batch_size: int):
        segment = self.tree[0] / batch_size
        indices, priorities = [], []
        for i in range(batch_size):
            value = self.rng.uniform(segment * i, segment * (i + 1))
            tree_idx = self._retrieve(value)
            indices.append(tree_idx - self.capacity + 1)
            priorities.append(self.tree[tree_idx])
        indices = np.array(indices)
        probs = np.array(priorities) / self.tree[0]
        weights = (self.size * probs) ** -self.beta
        weights /= weights.max()
        self.beta = min(1.0, self.beta + self.beta_increment)
        rows = torch.from_numpy(indices)
        batch = {name: view.index_select(0, rows) for name, view in self.views.items()}
        return batch, indices, weights

    def update_priorities(self, indices, priorities) -> None:
        for idx, priority in zip(indices, priorities):
            self._update(int(idx) + self.capacity - 1, (priority + self.epsilon) ** self.alpha)


def make_chunks(rng: np.random.Generator, n_chunks: int) -> list[tuple[np.ndarray, ...]]:
    """Pre-generated add inputs, so data generation is not timed."""
    return [
        (rng.standard_normal((BATCH, STATE_DIM), dtype=np.float32), rng.integers(0, 4, BATCH),
         rng.standard_normal(BATCH, dtype=np.float32),
         rng.standard_normal((BATCH, STATE_DIM), dtype=np.float32),
         rng.random(BATCH) < 0.05, rng.random(BATCH) * 2.0)
        for _ in range(n_chunks)
    ]


# "add"(chunk), "add_one"(transition), "sample"(n) -> indices, "update"(indices, priorities);
# "sync"() settles deferred work a single add may leave (ours: the pending tree sums).
Ops = dict[str, Callable]


def esper_ops() -> Ops:
    buf = PrioritizedReplayBuffer(CAPACITY, seed=0)
    return {"add": lambda c: buf.add_batch(*c), "add_one": lambda t: buf.add(*t),
            "sync": lambda: buf.total_priority, "sample": lambda n: buf.sample(n)[1],
            "update": buf.update_priorities}


def baseline_ops() -> Ops:
    buf = PerItemPER(CAPACITY)
    return {"add": lambda c: buf.add_batch(*c), "add_one": lambda t: buf.add(*t),
            "sync": lambda: None, "sample": lambda n: buf.sample(n)[1],
            "update": buf.update_priorities}


def cpprb_ops() -> Ops | None:
    """cpprb through its own API (numpy batches, no torch conversion); None if not installed."""
    try:
        import cpprb
    except ImportError:
        return None
    buf = cpprb.PrioritizedReplayBuffer(
        CAPACITY,
        {"obs": {"shape": STATE_DIM}, "act": {"dtype": np.int64}, "rew": {},
         "next_obs": {"shape": STATE_DIM}, "done": {}},
        alpha=0.6, eps=1e-6,
    )

    def add(c):
        buf.add(obs=c[0], act=c[1], rew=c[2], next_obs=c[3], done=c[4], priorities=c[5])

    return {"add": add, "add_one": add, "sync": lambda: None,
            "sample": lambda n: buf.sample(n, beta=0.4)["indexes"], "update": buf.update_priorities}


def single_adds(chunks) -> Callable[[Ops], None]:
    """N = CAPACITY single adds, one transition per call, cycling through the chunks' rows."""
    transitions = [tuple(field[i] for field in chunk) for chunk in chunks for i in range(BATCH)]
    work = [transitions[i % len(transitions)] for i in range(CAPACITY)]

    def run(ops: Ops) -> None:
        add_one = ops["add_one"]
        for transition in work:
            add_one(transition)
        ops["sync"]()

    return run


def measure(subjects: dict[str, Ops], chunks, calls: int, repeats: int) -> dict[str, dict]:
    """Calls/s per subject and op: the median over `repeats` timings of `calls` calls each.

    Every buffer is filled to capacity first. Repetitions alternate between subjects,
    so background load on a shared machine hits all of them alike. A single-add
    timing is one call of CAPACITY adds, reported as adds/s.
    """
    fill_rng = np.random.default_rng(1)
    fill_order = fill_rng.integers(len(chunks), size=CAPACITY // BATCH)
    for ops in subjects.values():
        for i in fill_order:
            ops["add"](chunks[i])
    indices = {name: ops["sample"](BATCH) for name, ops in subjects.items()}
    new_priorities = np.random.default_rng(2).random(BATCH) * 2.0
    chunk_cycle = itertools.cycle(chunks)
    add_many_singles = single_adds(chunks)
    workloads = {  # op -> (work, calls per timing, items per call)
        "add": (lambda name, ops: ops["add"](next(chunk_cycle)), calls, 1),
        "sample": (lambda name, ops: ops["sample"](BATCH), calls, 1),
        "update": (lambda name, ops: ops["update"](indices[name], new_priorities), calls, 1),
        "add_one": (lambda name, ops: add_many_singles(ops), 1, CAPACITY),
    }
    rates = {name: {op: [] for op in workloads} for name in subjects}
    for op, (work, n_calls, items) in workloads.items():
        for _ in range(repeats):
            for name, ops in subjects.items():
                start = time.perf_counter()
                for _ in range(n_calls):
                    work(name, ops)
                rates[name][op].append(n_calls * items / (time.perf_counter() - start))
    return {name: {op: statistics.median(r) for op, r in per_op.items()}
            for name, per_op in rates.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 30 s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    calls, repeats = (20, 5) if args.quick else (100, 9)

    subjects = {"ours": esper_ops(), "baseline": baseline_ops()}
    cpprb = cpprb_ops()
    if cpprb is not None:
        subjects["cpprb"] = cpprb
    rates = measure(subjects, make_chunks(np.random.default_rng(0), 64), calls, repeats)
    ours, baseline = rates["ours"], rates["baseline"]

    targets = {"add": 1.0, "sample": 10.0, "update": 10.0, "add_one": 1.0}
    names = {op: f"{op}_{BATCH}_per_s" for op in targets} | {"add_one": "add_single_per_s"}
    results = []
    for op, target in targets.items():
        ratio = ours[op] / baseline[op]
        results.append({"name": names[op], "ours": round(ours[op], 1),
                        "baseline": round(baseline[op], 1), "ratio": round(ratio, 2),
                        "target": target, "pass": ratio >= target})
    if cpprb is None:
        print("cpprb is not installed; skipping the cpprb comparison", file=sys.stderr)
    else:
        for op in targets:
            results.append({"name": f"cpprb_{names[op]}", "ours": round(ours[op], 1),
                            "baseline": round(rates["cpprb"][op], 1),
                            "ratio": round(ours[op] / rates["cpprb"][op], 2),
                            "target": None, "pass": None})
    for row in results:
        print(json.dumps(row))
    return results


if __name__ == "__main__":
    main()
