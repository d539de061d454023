"""Train-step throughput with one seed in the incubator vs the same modules as one plain nn.Module.

    python benchmarks/bench_incubator.py [--quick]

ours: esper's `train_epoch` on a `MorphogeneticModel` (CNNHost, 3 blocks, 32 base
channels, 32x32 images, batch 64) with a `conv_light` seed in TRAINING at block2:
alpha 0, isolated input, straight-through output, seed/host gradient norms read
every 4 steps for G2. baseline: a plain PyTorch loop on one plain `nn.Module`
made of the same host and the same seed module applied after block2 (the same
objects: the host with the seed itself in place of its slot). Both in
steps/s; ratio = ours / baseline (higher is better), target >= 0.95.
"""

from __future__ import annotations

import _plain
import _timing

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage
from esper.tolaria.trainer import OptimConfig, Optimizers, train_epoch

SLOT = "block2"


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 80) if args.quick else (2, 200)
    batches = _plain.image_batches(steps)
    host = CNNHost(n_blocks=3, base_channels=32)
    model = MorphogeneticModel(host, [SLOT])
    slot = model.seed_slots[SLOT]
    slot.germinate("conv_light", host_module=host)
    if not slot.advance_stage(SeedStage.TRAINING).passed:
        raise RuntimeError("G1 refused the freshly germinated seed")
    optimizers = Optimizers.from_config(model, OptimConfig())
    optimizers.add_seed((SLOT, slot.state.seed_id), list(slot.seed.parameters()))
    with _plain.slots_replaced(host, {SLOT: slot.seed}):
        plain_optimizer = _plain.sgd(host)

    def baseline() -> None:
        with _plain.slots_replaced(host, {SLOT: slot.seed}):  # the seed as a plain layer
            _plain.train_epoch(host, batches, plain_optimizer)

    return _timing.train_throughput(
        "incubator_train_steps_per_s", 0.95, lambda: train_epoch(model, batches, optimizers), baseline, steps, repeats
    )


if __name__ == "__main__":
    main()
