"""Train-step time of a grown network, exported, vs a static network of the same shapes.

    python benchmarks/bench_export.py [--quick]

Depth: `grown.export()` of a 1-layer GPT (64 wide, 4 heads, 64 characters of context,
batch 32) grown to 3 layers by two fossilized `stack` seeds at `layer1`, against a
`TransformerHost` built with 3 layers. Width: `grown.export()` of mnist5k-tiny's 4-channel
CNN whose block2 and block3 were widened by merged `widen` seeds (8 -> 16, 16 -> 32
channels; 28x28 images, batch 128), against the same CNN built that wide
(`StaticSeedsHostFactory`, as compare's static arms build it). Both arms of each figure are
trained by the same plain PyTorch loop (`_plain.train_epoch`, SGD). Ratio = ours / baseline
in steps/s (higher is better), target >= 0.98: once growth is over, the grown network costs
what a static one of its shape costs (fossils are ordinary layers, merged widths are the
layers' own).
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

from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage, TaskConfig
from esper.runtime.static_host import StaticSeedsHostFactory

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


def widened_and_exported() -> torch.nn.Module:
    def cnn() -> CNNHost:
        return CNNHost(num_classes=10, n_blocks=3, base_channels=4, in_channels=1)

    model = MorphogeneticModel(cnn(), ["block2", "block3"], task_config=TaskConfig(topology="cnn", blending_epochs=2))
    for slot_id in ("block2", "block3"):
        grow(model.seed_slots[slot_id], SeedStage.FOSSILIZED, "widen", host_module=model.host)
    return model.export(), StaticSeedsHostFactory(lambda data: cnn(), (), {}, (("block2", 16), ("block3", 32)))(None)


def _figure(name: str, exported: torch.nn.Module, static: torch.nn.Module, batches: list, repeats: int) -> list[dict]:
    if sorted(p.shape for p in exported.parameters()) != sorted(p.shape for p in static.parameters()):
        raise SystemExit(f"bench_export: {name}: the exported and the static network differ in shape")
    ours, baseline = _plain.sgd(exported), _plain.sgd(static)
    return _timing.train_throughput(
        name,
        0.98,
        lambda: _plain.train_epoch(exported, batches, ours),
        lambda: _plain.train_epoch(static, batches, baseline),
        len(batches),
        repeats,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    steps, repeats = (2, 30) if args.quick else (2, 100)
    static_gpt = TransformerHost(VOCAB, WIDTH, HEADS, n_layer=3, block_size=CONTEXT, dropout=0.0)
    rows = _figure("exported_stack_train_steps_per_s", grown_and_exported(), static_gpt, _batches(steps), repeats)
    images = _plain.image_batches(steps, batch=128, size=28)
    images = [(x[:, :1], y) for x, y in images]  # one channel, as mnist
    exported, static_cnn = widened_and_exported()
    return rows + _figure("exported_widen_train_steps_per_s", exported, static_cnn, images, repeats)


if __name__ == "__main__":
    main()
