"""Graph compilations over a seed's whole lifecycle under torch.compile vs its number of stage changes.

    python benchmarks/bench_recompiles.py [--quick]

A `MorphogeneticModel` (CNNHost, 3 blocks, 8 base channels, one slot) is compiled
once with `fullgraph=True` and trained a step per phase through germinate ->
TRAINING -> BLENDING (one step per alpha value of the ramp) -> SHADOWING ->
PROBATIONARY -> FOSSILIZED. Compilations are counted with dynamo's
`CompileCounter` backend (recompiles are a dynamo matter; the backend that
turns graphs into kernels does not change how many there are).
ours: graphs compiled (the first included); baseline: stage changes (6).
ratio = ours / (baseline + 1) (lower is better), target <= 1: at most one graph
per stage plus the first, so an alpha step never recompiles.
"""

from __future__ import annotations

import _timing
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.kasmina.slot import QualityGates
from esper.leyline import SeedStage, TaskConfig

# Gates that pass on schedule: this figure is about mechanics, not the seed's quality.
OPEN_GATES = QualityGates(
    min_training_improvement=-1.0,
    min_training_epochs=0,
    min_seed_gradient_ratio=0.0,
    min_shadowing_epochs=0,
    min_contribution=-1.0,
)


def lifecycle(blending_epochs: int) -> tuple[int, int]:
    """(graphs compiled, stage changes) for one seed taken from DORMANT to FOSSILIZED."""
    torch._dynamo.reset()
    config = TaskConfig(topology="cnn", blending_epochs=blending_epochs)
    model = MorphogeneticModel(CNNHost(n_blocks=3, base_channels=8), ["block2"], gates=OPEN_GATES, task_config=config)
    slot = model.seed_slots["block2"]
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    stages = [slot.stage]
    seed: list = []  # the seed's record once planted: it keeps its stage after joining the stack

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(compiled(x), y).backward()
        optimizer.step()
        stage = seed[0].stage if seed else slot.stage
        if stage != stages[-1]:
            stages.append(stage)

    step()
    seed.append(slot.germinate("conv_light", host_module=model.host))
    step()
    slot.advance_stage(SeedStage.TRAINING)
    step()
    slot.state.metrics.seed_gradient_norm_ratio = 1.0
    slot.advance_stage(SeedStage.BLENDING)
    while slot.stage == SeedStage.BLENDING:
        step()
        slot.step_epoch()  # one alpha step; enters SHADOWING once alpha >= 0.95
    step()
    slot.state.metrics.counterfactual_contribution = 0.1
    slot.advance_stage(SeedStage.PROBATIONARY)
    step()
    slot.advance_stage(SeedStage.FOSSILIZED)
    step()
    if stages[-1] != SeedStage.FOSSILIZED:
        raise RuntimeError(f"the seed did not reach FOSSILIZED: {stages}")
    return counter.frame_count, len(stages) - 1


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    graphs, changes = lifecycle(blending_epochs=5 if args.quick else 20)
    return _timing.emit(
        [_timing.row("lifecycle_compiled_graphs", graphs, changes, graphs / (changes + 1), 1.0, higher_is_better=False)]
    )


if __name__ == "__main__":
    main()
