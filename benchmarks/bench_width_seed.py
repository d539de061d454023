"""Train-step throughput of a host with a live `widen` seed vs the bare host and vs the host built that wide.

    python benchmarks/bench_width_seed.py [--quick]

The host is mnist5k-tiny's CNN (3 blocks, 4 base channels; 28x28 images, batch 128) with a
`widen` seed at block2 (8 -> 16 channels), brought through the real lifecycle
(tests/seed_lifecycle.py) to TRAINING (the new units get gradient, the forward is the host's)
and, in a second model, to BLENDING (alpha scales the new units' outgoing contribution). Each
is trained by esper's `train_epoch` (seed/host gradient norms read every 4 steps for G2).
Baselines, trained by a plain PyTorch loop (`_plain.train_epoch`): the bare host (a host of
the same shape, no slots), and the host built 16 channels wide at block2
(`StaticSeedsHostFactory`, as compare's static arms build it). All four subjects are timed
alternately in one process, on one thread (`_timing.THREADS`). Ratio = ours / baseline in
steps/s (higher is better); context lines: issue 20 asks for the overhead to be measured,
without a target.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _plain
import _timing

# The seeds are moved through the real lifecycle, as the tests move them (tests/seed_lifecycle.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from seed_lifecycle import grow

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage, TaskConfig
from esper.runtime.static_host import StaticSeedsHostFactory
from esper.tolaria.trainer import OptimConfig, Optimizers, train_epoch

SLOT, WIDE = "block2", 16


def cnn() -> CNNHost:
    return CNNHost(num_classes=10, n_blocks=3, base_channels=4, in_channels=1)


def with_live_seed(stage: SeedStage) -> tuple[MorphogeneticModel, Optimizers]:
    """The host with a `widen` seed at block2 in `stage`, and its optimisers (the seed's group too)."""
    model = MorphogeneticModel(cnn(), [SLOT], task_config=TaskConfig(topology="cnn", blending_epochs=2))
    slot = model.seed_slots[SLOT]
    state = grow(slot, stage, "widen", host_module=model.host)
    optimizers = Optimizers.from_config(model, OptimConfig())
    optimizers.add_seed((SLOT, state.seed_id), list(slot.seed.parameters()))
    return model, optimizers


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 30) if args.quick else (2, 100)
    batches = _plain.image_batches(steps, batch=128, size=28)
    batches = [(inputs[:, :1], targets) for inputs, targets in batches]  # one channel, as MNIST
    training, blending = with_live_seed(SeedStage.TRAINING), with_live_seed(SeedStage.BLENDING)
    bare, wide = cnn(), StaticSeedsHostFactory(lambda data: cnn(), (), {}, ((SLOT, WIDE),))(None)
    bare_sgd, wide_sgd = _plain.sgd(bare), _plain.sgd(wide)
    timings = _timing.interleaved(
        {
            "training": lambda: train_epoch(training[0], batches, training[1]),
            "blending": lambda: train_epoch(blending[0], batches, blending[1]),
            "bare": lambda: _plain.train_epoch(bare, batches, bare_sgd),
            "wide": lambda: _plain.train_epoch(wide, batches, wide_sgd),
        },
        repeats,
    )
    rows = []
    for stage in ("training", "blending"):
        for baseline, what in (("bare", "bare_host"), ("wide", "static_wide_host")):
            rows.append(_timing.reference_row(
                f"widen_seed_{stage}_vs_{what}_train_steps_per_s",
                steps / timings.median(stage),
                steps / timings.median(baseline),
                timings.ratio(baseline, stage),  # = throughput ratio ours / baseline
            ))  # fmt: skip
    return _timing.emit(rows)


if __name__ == "__main__":
    main()
