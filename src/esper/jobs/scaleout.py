"""Running `esper train ppo|heuristic` on several processes or machines, with torchrun.

Under torchrun (`torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]
-m esper train ...`) every process is one rank of the run: `worker_world` joins the
process group torchrun prepared, and the job shares its work out (`tolaria.distributed`,
`simic.distributed`).

`--nproc N` is the one-command shortcut. It checks everything it can before any
process starts (the flags, the config, the run folder, processes against the work to
share), then runs the same command through torchrun's own entry point
(`torch.distributed.run`), adding `--run-dir` so every rank names the same folder.
When a rank fails, torchrun's agent stops the others; the shortcut then says in one
line which rank failed and how the run continues (`--resume`, with any number of
processes).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from esper import __version__
from esper.nissa.files import check_writable
from esper.nissa.run_folder import RunFolder
from esper.runtime.data import TaskData
from esper.tolaria.distributed import BACKENDS, DEFAULT_TIMEOUT_S, World, init_world

# Set by the shortcut for the processes it launches: they are its workers, not launchers.
WORKER_MARK = "ESPER_NPROC_WORKER"
_ENDPOINT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d+$")


class LaunchFailed(RuntimeError):
    """A rank of a run the shortcut launched failed; the message says which and how."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale-out flags of `esper train ppo|heuristic`."""
    group = parser.add_argument_group("scale-out (torch.distributed; see the README, 'Scaling out')")
    group.add_argument("--nproc", type=int, metavar="N", help="run on N processes on this machine (launches torchrun)")
    group.add_argument(
        "--nnodes", type=int, metavar="M", help="with --nproc: M machines take part, each running this command"
    )
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="with --nnodes > 1: where the machines meet")
    group.add_argument("--rdzv-id", default="esper", help="with --nnodes > 1: a name for this run's rendezvous")
    group.add_argument("--dist-backend", choices=BACKENDS, help="process group backend (default: nccl with CUDA, else gloo)")
    group.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long a rank waits for the others before naming the one at fault (default {DEFAULT_TIMEOUT_S:g})",
    )


def run_fingerprint(config: dict[str, Any], data: TaskData) -> dict[str, Any]:
    """What every rank of a run must agree on: the resolved config, the data, the versions."""
    return {"config": config, "data": data.signature(), "esper": __version__, "torch": torch.__version__}


def is_launched_worker() -> bool:
    """Whether this process is a rank the `--nproc` shortcut launched."""
    return os.environ.get(WORKER_MARK) == "1" and "WORLD_SIZE" in os.environ


def wants_launch(args: argparse.Namespace) -> bool:
    """Whether this command is the `--nproc` shortcut (and not one of the ranks it started)."""
    return args.nproc is not None and not is_launched_worker()


def processes(args: argparse.Namespace) -> int:
    return args.nproc * (args.nnodes or 1)


def check_launch(args: argparse.Namespace) -> None:
    """The shortcut's own flags; a `ValueError` saying what to change."""
    if is_launched_worker():
        return  # checked by the shortcut that launched this process
    if args.nproc is None:
        if args.nnodes is not None or args.rdzv_endpoint is not None:
            raise ValueError("--nnodes and --rdzv-endpoint go with --nproc (or use torchrun directly)")
        return
    if "WORLD_SIZE" in os.environ:
        raise ValueError("--nproc launches torchrun itself; under torchrun, leave --nproc out")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1 (processes on this machine), got {args.nproc}")
    nnodes = args.nnodes or 1
    if nnodes < 1:
        raise ValueError(f"--nnodes must be >= 1, got {nnodes}")
    if nnodes > 1 and not args.rdzv_endpoint:
        raise ValueError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT: a host and a free port every machine can "
            "reach, where they meet (the same on every machine), e.g. --rdzv-endpoint node0.example:29400"
        )
    if args.rdzv_endpoint and not _ENDPOINT.match(args.rdzv_endpoint):
        raise ValueError(f"--rdzv-endpoint must be HOST:PORT, got {args.rdzv_endpoint!r}")


def check_run_dir(run_dir: Path, mode: str, resume: bool) -> None:
    """Before launching: a new run's folder must be free and writable (a resumed run's exists)."""
    if not resume:
        RunFolder(run_dir).check_new(mode)
        check_writable(run_dir, "--run-dir", folder=True)


@contextmanager
def worker_world(args: argparse.Namespace) -> Iterator[World]:
    """This process's `World` for the run (one process without torchrun), left at the end."""
    world = init_world(args.dist_backend, args.dist_timeout)
    try:
        yield world
    finally:
        world.close()


def _quiet_torchrun() -> None:
    """torchrun's agent logs every worker failure at length; the shortcut says it in one line."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch(args: argparse.Namespace, run_dir: Path, resume: bool) -> None:
    """Run this same command on `--nproc` processes (per machine) through torchrun's entry point.

    Returns once every rank finished; raises `LaunchFailed` naming the rank that failed
    first, and `KeyboardInterrupt` if the launch was interrupted.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _quiet_torchrun()
    torchrun = ["--nproc-per-node", str(args.nproc)]
    nnodes = args.nnodes or 1
    if nnodes > 1:
        torchrun += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint,
                     "--rdzv-id", args.rdzv_id]  # fmt: skip
    else:
        torchrun.append("--standalone")  # a rendezvous on this machine, on a free port
    command = list(args.argv) + ([] if resume or args.run_dir else ["--run-dir", str(run_dir)])
    saved = {key: os.environ.get(key) for key in (WORKER_MARK, "OMP_NUM_THREADS")}
    os.environ[WORKER_MARK] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # else torchrun sets 1 with a warning
    try:
        # "--": what follows is the command, even where a flag of ours looks like one of torchrun's.
        run(parse_args([*torchrun, "-m", "--", "esper", *command]))
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        else:
            how = f"stopped with exit code {failure.exitcode} (its message is above)"
        raise LaunchFailed(f"rank {rank} {how}; torchrun stopped the other ranks") from None
    except SignalException:
        raise KeyboardInterrupt from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
