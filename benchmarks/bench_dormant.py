"""Train-step throughput of a host whose slots are all DORMANT vs the same host without slots.

    python benchmarks/bench_dormant.py [--quick]

ours: esper's `train_epoch` on a `MorphogeneticModel` (CNNHost, 3 blocks, 32 base
channels: the 95k-parameter CNN; 32x32 images, batch 64) with a DORMANT slot at
every injection point; baseline: a plain PyTorch loop (`_plain.train_epoch`) on
the same host object with its slots taken out. Both in steps/s; ratio = ours /
baseline (higher is better), target >= 0.98: idle growth machinery must cost
(almost) nothing.
"""

from __future__ import annotations

import _plain
import _timing

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.tolaria.trainer import OptimConfig, Optimizers, train_epoch


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 80) if args.quick else (2, 200)
    batches = _plain.image_batches(steps)
    host = CNNHost(n_blocks=3, base_channels=32)
    model = MorphogeneticModel(host)  # one DORMANT slot per injection point
    optimizers = Optimizers.from_config(model, OptimConfig())
    plain_optimizer = _plain.sgd(host)

    def baseline() -> None:
        with _plain.slots_replaced(host, {}):
            _plain.train_epoch(host, batches, plain_optimizer)

    return _timing.train_throughput(
        "dormant_slots_train_steps_per_s", 0.98, lambda: train_epoch(model, batches, optimizers), baseline, steps, repeats
    )


if __name__ == "__main__":
    main()
