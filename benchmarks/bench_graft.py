"""Train-step throughput of a user's model with DORMANT grafted slots vs the same bare model.

    python benchmarks/bench_graft.py [--quick]

The model is written without Esper (an `nn.Sequential` CNN of the shape of
bench_dormant's host: three conv blocks of 32, 64, 128 channels, ~95k parameters;
32x32 images, batch 64). ours: esper's `train_epoch` on `esper.graft(model, ["0",
"1", "2"], x)`, a DORMANT slot on every conv block; baseline: a plain PyTorch loop
(`_plain.train_epoch`) on the same model object with its slots taken out (no hooks
left on its modules). Both in steps/s; ratio = ours / baseline (higher is better),
target >= 0.98: a dormant grafted slot must cost no more than a dormant slot in a
built-in host (bench_dormant's figure).
"""

from __future__ import annotations

import _plain
import _timing
from torch import nn

import esper
from esper.tolaria.trainer import OptimConfig, Optimizers, train_epoch


def user_cnn() -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU -> max-pool blocks, global pooling, a linear classifier."""
    blocks, c_in = [], 3
    for c_out in (32, 64, 128):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        blocks.append(nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)))
        c_in = c_out
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 80) if args.quick else (2, 200)
    batches = _plain.image_batches(steps)
    model = user_cnn()
    grafted = esper.graft(model, ["0", "1", "2"], batches[0][0][:2])
    optimizers = Optimizers.from_config(grafted, OptimConfig())
    plain_optimizer = _plain.sgd(model)

    def baseline() -> None:
        with _plain.slots_replaced(grafted, {}):
            _plain.train_epoch(model, batches, plain_optimizer)

    return _timing.train_throughput(
        "graft_dormant_slots_train_steps_per_s",
        0.98,
        lambda: train_epoch(grafted, batches, optimizers),
        baseline,
        steps,
        repeats,
    )


if __name__ == "__main__":
    main()
