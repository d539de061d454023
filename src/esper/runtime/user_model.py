"""`esper train heuristic --model package.module:factory`: a model of your own on a bundled task.

The factory is called with the task's data (a `TaskData`: tensors and metadata such
as `num_classes`, `in_channels`, `in_features`, `vocab_size`, `block_size`) and returns
`(model, targets)`: an `nn.Module` mapping a batch of the task's inputs to logits
(one score per class, or per vocabulary entry at each position) and the modules to
graft seed slots onto (names or patterns, as for `esper.graft`). The run grafts it
and trains it like a built-in host: run folder, reports and `--resume` (which calls
the factory again, after the same random seed, so the model is rebuilt the same).

Like `python -m`, the current folder is importable: a factory in ./mymodels.py is
`mymodels:build`. Whatever goes wrong with the factory (it cannot be imported, it
raises, it returns something else, its model does not fit the task) is one
`ValueError` naming `--model`, before anything is written.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from esper.kasmina.graft import GraftedModel, graft, training_modes_kept
from esper.kasmina.slot import QualityGates
from esper.leyline import TaskConfig, TelemetryEvent
from esper.runtime.data import TaskData

_FACTORY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
PROBE_SAMPLES = 2


def check_factory_path(path: str) -> str:
    """`path` if it has the `package.module:factory` form; else a `ValueError` saying so."""
    if not _FACTORY_PATH.match(path):
        raise ValueError(
            f"--model '{path}' is not of the form package.module:factory (e.g. mymodels:build for "
            "a function build(data) in ./mymodels.py)"
        )
    return path


def load_factory(path: str) -> Callable[[TaskData], Any]:
    """The callable `path` names, imported as Python would from the current folder."""
    module_name, attribute = check_factory_path(path).split(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # what `python -m` does; the `esper` script alone would not
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (
            module_name == err.name or module_name.startswith(err.name + ".")
        ):
            raise ValueError(
                f"--model {path}: there is no module '{module_name}' here ({cwd}); run from the "
                "folder that holds it, or install its package"
            ) from None
        raise ValueError(f"--model {path}: importing {module_name} failed: {err}") from None
    except Exception as err:  # noqa: BLE001 - any error in the user's module is theirs to see, in one line
        raise ValueError(
            f"--model {path}: importing {module_name} failed ({type(err).__name__}: {err})"
        ) from None
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ValueError(f"--model {path}: {module_name} has no '{attribute}'") from None
    if not callable(factory):
        # ValueError like every other --model problem: the CLI turns it into one line, exit 2.
        raise ValueError(  # noqa: TRY004
            f"--model {path}: '{attribute}' is a {type(factory).__name__}, not a function of the task data"
        )
    return factory


def build_user_model(
    path: str,
    data: TaskData,
    device: torch.device,
    *,
    gates: QualityGates | None = None,
    on_telemetry: Callable[[TelemetryEvent], None] | None = None,
    task_config: TaskConfig | None = None,
    fast_mode: bool = False,
) -> GraftedModel:
    """Call the factory, move its model to `device`, graft its targets, check it fits the task."""
    factory = load_factory(path)
    try:
        result = factory(data)
    except Exception as err:  # noqa: BLE001 - the factory is the user's code
        raise ValueError(
            f"--model {path}: the factory raised {type(err).__name__}: {err}"
        ) from None
    model, targets = _unpack(path, result)
    example = data.train_inputs[:PROBE_SAMPLES].to(device)
    try:
        grafted = graft(model.to(device), targets, example, gates=gates, on_telemetry=on_telemetry,
                        task_config=task_config, fast_mode=fast_mode)  # fmt: skip
    except ValueError as err:
        raise ValueError(f"--model {path}: {err}") from None
    _check_output(path, grafted, example, data)
    return grafted


def _unpack(path: str, result: Any) -> tuple[nn.Module, list[str]]:
    wrong = f"--model {path}: the factory must return (model, targets), a torch.nn.Module and the module names to graft"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ValueError(f"{wrong}; it returned {type(result).__name__}")
    model, targets = result
    if not isinstance(model, nn.Module):
        raise ValueError(f"{wrong}; its model is a {type(model).__name__}")  # noqa: TRY004
    if isinstance(targets, str):
        targets = [targets]
    if (
        not isinstance(targets, Sequence)
        or not targets
        or not all(isinstance(t, str) for t in targets)
    ):
        raise ValueError(f"{wrong}; its targets are {targets!r}, not a list of names")
    return model, list(targets)


def _check_output(path: str, model: nn.Module, example: torch.Tensor, data: TaskData) -> None:
    """The logits the trainer's loss needs: (*targets' shape, classes) for one probe batch."""
    classes = data.metadata.get("num_classes") or data.metadata.get("vocab_size")
    wanted = (*data.train_targets[:PROBE_SAMPLES].shape, classes)
    with torch.no_grad(), training_modes_kept(model):
        model.eval()
        try:
            output = model(example)
        except Exception as err:  # noqa: BLE001 - the user's model
            raise ValueError(
                f"--model {path}: the model failed on a batch of the task ({type(err).__name__}: {err})"
            ) from None
    if (
        not isinstance(output, torch.Tensor)
        or not output.is_floating_point()
        or tuple(output.shape) != wanted
    ):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"--model {path}: the model maps a batch of inputs {tuple(example.shape)} to {got}; the task "
            f"needs logits of shape {wanted} (one score per class, floating point)"
        )
