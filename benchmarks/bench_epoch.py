"""`esper train heuristic` epoch time vs a plain PyTorch loop training the final grown architecture.

    python benchmarks/bench_epoch.py [--quick]

ours: `run_heuristic` (the job behind `esper train heuristic`: data loading,
run folder, telemetry, checkpoints every 5 epochs, counterfactual validation,
governor, controller) on the `digits` task for its default 40 epochs, per epoch.
baseline: the architecture that run ends with (the host plus each slot's stack of
fossilized seeds as plain layers), trained and validated for the same epochs on the same data
(loaded inside the timed region too) by a plain PyTorch loop, per epoch.
ratio = baseline / ours (higher is better), target >= 0.85.
"""

from __future__ import annotations

import itertools
import tempfile

import _plain
import _timing

from esper.jobs.config import HeuristicRunConfig
from esper.jobs.heuristic import run_heuristic
from esper.runtime import get_task
from esper.runtime.static_host import StaticSeedsHostFactory

TASK = "digits"


def grown_architecture_loop(architecture: dict, epochs: int):
    """A plain loop over the host with every slot's fossils (its stack, in order) built in as
    ordinary layers: the static network the run ended with."""
    spec = get_task(TASK)
    plan = tuple((slot_id, blueprint) for slot_id, stack in architecture["slots"].items() for blueprint in stack)
    build_host = StaticSeedsHostFactory(spec.build_host, plan, spec.task_config.blueprint_kwargs)

    def run() -> None:
        data = spec.load_data()
        host = build_host(data)
        train, val = data.loaders(spec.batch_size, 0, spec.max_train_batches, spec.max_val_batches)
        optimizer = _plain.sgd(host, spec.host_lr)
        for epoch in range(epochs):
            train.set_epoch(epoch)
            _plain.train_epoch(host, train, optimizer)
            _plain.validate(host, val)

    return run


def main(argv: list[str] | None = None) -> list[dict]:
    args = _timing.parse(__doc__, argv)
    _timing.setup()
    repeats = 5 if args.quick else 9
    epochs = get_task(TASK).epochs
    config = HeuristicRunConfig(task=TASK, epochs=epochs, seed=0)
    with tempfile.TemporaryDirectory() as root:
        runs = itertools.count()
        summary = run_heuristic(config, f"{root}/first")  # also the warm-up

        def ours() -> None:
            run_heuristic(config, f"{root}/run{next(runs)}")  # a fresh run folder each time

        timings = _timing.interleaved(
            {"ours": ours, "baseline": grown_architecture_loop(summary["architecture"], epochs)},
            repeats,
            warmup=0,
        )
    ours, base = timings.median("ours") / epochs, timings.median("baseline") / epochs
    ratio = timings.ratio("baseline", "ours")
    return _timing.emit([_timing.row("heuristic_epoch_s", ours, base, ratio, 0.85, higher_is_better=True)])


if __name__ == "__main__":
    main()
