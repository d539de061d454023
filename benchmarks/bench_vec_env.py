"""K = 4 environments in one process (a PPO rollout) vs 4 plain training loops run one after another.

    python benchmarks/bench_vec_env.py [--quick]

ours: `simic.vec_env.VecEnv` with 4 `digits` environments: `reset` (fresh hosts,
optimisers, loaders) and one lockstep episode of `episode_length` host epochs,
each epoch with counterfactual validation, governor, signals, observations and
masks. Every environment WAITs (action 0), so the hosts train exactly what the
baseline trains. baseline: 4 plain PyTorch loops, one after another, each
building the same host and loaders and training + validating it for the same
epochs. Both in seconds per rollout; ratio = baseline / ours (higher is better),
target >= 0.9.
"""

from __future__ import annotations

import _plain
import _timing
import torch

from esper.runtime import get_task
from esper.simic.vec_env import VecEnv

TASK = "digits"
K = 4


def plain_loops(spec, data, epochs: int):
    def run() -> None:
        for seed in range(K):
            torch.manual_seed(seed)
            host = spec.build_host(data)
            train, val = data.loaders(spec.batch_size, seed, spec.max_train_batches, spec.max_val_batches)
            optimizer = _plain.sgd(host, spec.host_lr)
            for epoch in range(epochs):
                train.set_epoch(epoch)
                _plain.train_epoch(host, train, optimizer)
                _plain.validate(host, val)

    return run


def rollout(env: VecEnv):
    wait = torch.zeros(K, dtype=torch.long)

    def run() -> None:
        env.reset(list(range(K)))
        done = False
        while not done:
            _, _, _, done = env.step(wait)

    return run


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    epochs, repeats = (10, 7) if args.quick else (25, 9)
    spec = get_task(TASK)
    data = spec.load_data()
    env = VecEnv(spec, data, K, epochs, blueprints=["norm"])
    timings = _timing.interleaved({"ours": rollout(env), "baseline": plain_loops(spec, data, epochs)}, repeats)
    ours, base = timings.median("ours"), timings.median("baseline")
    ratio = timings.ratio("baseline", "ours")
    return _timing.emit([_timing.row("vec_env_k4_rollout_s", ours, base, ratio, 0.9, higher_is_better=True)])


if __name__ == "__main__":
    main()
