"""`esper export RUN_DIR --out FILE`: the grown network of a finished run, as a plain model file.

The run's model is rebuilt from its config and final checkpoint, `grown.export()` turns it into
ordinary torch layers (fossils built in, merged widths in the layers, no slots or hooks), and
`torch.export` writes it as a program of aten operations: `torch.export.load(FILE).module()`
runs it with nothing of the run and nothing of Esper (why torch.export and not a pickle of the
module: a pickle needs Esper's classes to load). The batch dimension (and a language model's
sequence length, up to its context) stays dynamic. Before anything is written the file's
outputs are checked against the grown model's on a batch of the task's data (within 1e-5).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import HeuristicCheckpoint, prepare_run
from esper.kasmina.host import SeededModel, TransformerHost
from esper.nissa.files import check_writable, load_torch_file, restore, save_torch_export
from esper.nissa.run_folder import FINAL_CHECKPOINT, RunFolder, read_json

TOLERANCE = 1e-5  # the largest |difference| allowed between the file's outputs and the grown model's


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, object]:
    """Write the finished run's grown network to `out`; returns what was written (for the console)."""
    folder, out = RunFolder(run_dir), Path(out)
    config = _finished_heuristic_run(folder)
    check_writable(out, "--out file")
    prepared = prepare_run(config, resume=True)
    trainer = prepared.trainer
    checkpoint = folder.checkpoint_dir / FINAL_CHECKPOINT
    payload = load_torch_file(checkpoint, "an Esper checkpoint", HeuristicCheckpoint)
    restore(checkpoint, "this run", lambda: trainer.load_state_dict(payload["trainer"]))
    model = trainer.model.eval()
    plain = model.export().eval()
    example = prepared.data.train_inputs[:4]
    program = torch.export.export(plain, (example,), dynamic_shapes=(_dynamic(plain, example),))
    with torch.no_grad(), _live_seeds_off(model):
        expected = model(example)
    difference = (program.module()(example) - expected).abs().max().item()
    if not difference <= TOLERANCE:
        raise RuntimeError(
            f"the exported network's outputs differ from the grown model's by {difference:.3g} "
            f"(more than {TOLERANCE:g}); nothing was written: please report this run"
        )
    save_torch_export(program, out)
    return {
        "file": str(out),
        "params": sum(p.numel() for p in plain.parameters()),
        "max_difference": difference,
        "example_shape": list(example.shape),
    }


def _finished_heuristic_run(folder: RunFolder) -> HeuristicRunConfig:
    """The config of a finished `esper train heuristic` run in `folder`; one line on anything else."""
    if not folder.config_path.is_file():
        raise ValueError(f"{folder.path} is not an Esper run folder (it has no config.json)")
    saved = folder.read_config()
    if saved.get("mode") != "heuristic":
        raise ValueError(
            f"{folder.path} is a '{saved.get('mode')}' run, which trains a controller, not a network: "
            "export a run of esper train heuristic (or an arm of esper compare)"
        )
    summary = folder.path / "summary.json"
    status = read_json(summary).get("status") if summary.is_file() else "unfinished"
    if status != "complete" or not (folder.checkpoint_dir / FINAL_CHECKPOINT).is_file():
        raise ValueError(
            f"{folder.path} is not a finished run (status: {status}): finish it with "
            f"esper train heuristic --resume {folder.path}, then export it"
        )
    return build_config(HeuristicRunConfig, saved["config"], {})


def _dynamic(model: nn.Module, example: torch.Tensor) -> dict[int, torch.export.Dim]:
    """A dynamic batch; a language model's sequence length too, up to its context."""
    dims = {0: torch.export.Dim("batch", min=1)}
    if isinstance(model, TransformerHost):
        dims[1] = torch.export.Dim("tokens", min=1, max=model.block_size)
    return dims


def _live_seeds_off(model: SeededModel) -> contextlib.ExitStack:
    """Every live seed switched off: the network the run kept (what `export` builds)."""
    stack = contextlib.ExitStack()
    for slot in model.seed_slots.values():
        stack.enter_context(slot.force_alpha(0.0))
    return stack
