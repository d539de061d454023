"""Train-step time of a grown network, exported, vs a static network of the same shapes.

    python benchmarks/bench_export.py [--quick]

ours: `grown.export()` of a 1-layer GPT (64 wide, 4 heads, 64 characters of context,
batch 32) grown to 3 layers by two fossilized `stack` seeds at `layer1`; baseline: a
`TransformerHost` built with 3 layers, the same shapes from the start. Both trained by the
same plain PyTorch loop (`_plain.train_epoch`, SGD). Ratio = ours / baseline in steps/s
(higher is better), target >= 0.98: once growth is over, the grown network costs what a
static one of its shape costs (its fossils are ordinary layers in an `nn.Sequential`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import _plain
import _timing
import torch

# The seeds are kept through the real lifecycle, as the tests keep them (tests/seed_lifecycle.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from seed_lifecycle import grow

from esper.kasmina.host import MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage, TaskConfig

VOCAB, WIDTH, HEADS, CONTEXT, BATCH = 96, 64, 4, 64, 32


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [tuple(torch.randint(0, VOCAB, (2, BATCH, CONTEXT), generator=g)) for _ in range(steps)]


def grown_and_exported() -> torch.nn.Module:
    host = TransformerHost(VOCAB, WIDTH, HEADS, n_layer=1, block_size=CONTEXT, dropout=0.0)
    model = MorphogeneticModel(host, ["layer1"], task_config=TaskConfig(topology="transformer", blending_epochs=2))
    for _ in range(2):
        grow(model.seed_slots["layer1"], SeedStage.FOSSILIZED, "stack", host_module=model.host)
    return model.export()


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 30) if args.quick else (2, 100)
    batches = _batches(steps)
    exported = grown_and_exported()
    static = TransformerHost(VOCAB, WIDTH, HEADS, n_layer=3, block_size=CONTEXT, dropout=0.0)
    shapes = sorted(p.shape for p in exported.parameters())
    if shapes != sorted(p.shape for p in static.parameters()):
        raise SystemExit("bench_export: the exported and the static network differ in shape")
    ours, baseline = _plain.sgd(exported), _plain.sgd(static)
    return _timing.train_throughput(
        "exported_stack_train_steps_per_s",
        0.98,
        lambda: _plain.train_epoch(exported, batches, ours),
        lambda: _plain.train_epoch(static, batches, baseline),
        steps,
        repeats,
    )


if __name__ == "__main__":
    main()
