"""Validation with per-slot counterfactuals for k = 1, 2, 3 blended slots vs one plain validation pass.

    python benchmarks/bench_counterfactual.py [--quick]

Host: CNNHost with 4 blocks (slots block2, block3, block4), 32 base channels,
32x32 images; `conv_light` seeds BLENDING at alpha 0.5 in the first k slots (the
earliest slots are the expensive ones: their counterfactuals recompute the most).
ours: `validate_with_counterfactuals` (fast path: trunk once, a tail per slot);
baseline: `validate` on the same model (one pass). Both in seconds;
ratio = ours / baseline (lower is better), target <= 1 + 0.6 k. A reference
line without a target (`counterfactual_naive_k*`) times the naive method
(k + 1 full passes, `naive=True`) against the same baseline.
"""

from __future__ import annotations

import _plain
import _timing

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.kasmina.slot import QualityGates
from esper.leyline import SeedStage
from esper.tolaria.trainer import validate, validate_with_counterfactuals

SLOTS = ("block2", "block3", "block4")
# Gates that let a seed straight through: the measurement needs blended seeds, not judged ones.
_OPEN_GATES = QualityGates(min_training_epochs=0, min_seed_gradient_ratio=0.0)


def blended_model(k: int) -> MorphogeneticModel:
    """A 4-block host with `conv_light` seeds blending at alpha 0.5 in its first k slots."""
    model = MorphogeneticModel(CNNHost(n_blocks=4, base_channels=32), gates=_OPEN_GATES)
    for key in SLOTS[:k]:
        slot = model.seed_slots[key]
        slot.germinate("conv_light", host_module=model.host)
        for stage in (SeedStage.TRAINING, SeedStage.BLENDING):
            if not slot.advance_stage(stage).passed:
                raise RuntimeError(f"{key}: the open gates refused {stage.name}")
        slot.set_alpha(0.5)
    return model


def measure(k: int, batches: list, repeats: int) -> list[dict]:
    model = blended_model(k)
    timings = _timing.interleaved(
        {
            "ours": lambda: validate_with_counterfactuals(model, batches),
            "naive": lambda: validate_with_counterfactuals(model, batches, naive=True),
            "baseline": lambda: validate(model, batches),
        },
        repeats,
    )
    ours, naive, base = (timings.median(name) for name in ("ours", "naive", "baseline"))
    target = round(1 + 0.6 * k, 2)
    ratio = timings.ratio("ours", "baseline")
    return [
        _timing.row(f"counterfactual_validation_k{k}_s", ours, base, ratio, target, higher_is_better=False),
        _timing.reference_row(f"counterfactual_naive_k{k}_s", naive, base, timings.ratio("naive", "baseline")),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    n_batches, repeats = (4, 9) if args.quick else (8, 15)
    batches = _plain.image_batches(n_batches, batch=128)
    return _timing.emit([row for k in (1, 2, 3) for row in measure(k, batches, repeats)])


if __name__ == "__main__":
    main()
