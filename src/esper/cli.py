"""The `esper` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from esper import __version__
from esper.jobs.device_options import add_device_arguments


def _cmd_blueprints(args: argparse.Namespace, console: Console) -> int:
    from esper.kasmina.blueprints import BlueprintRegistry
    from esper.kasmina.blueprints.registry import TOPOLOGIES

    dims = {"cnn": 32, "transformer": 64, "mlp": 64}
    table = Table(title="Blueprints")
    for column in ("topology", "name", "params (estimate)", "params (actual)", "description"):
        table.add_column(column)
    for topology in [args.topology] if args.topology else TOPOLOGIES:
        for spec in BlueprintRegistry.list_specs(topology):
            count = spec.actual_param_count(dims[topology])
            # A seed built from the host (a width seed, a stacked copy) has its weights only once
            # it is planted: their number is the host layer's, not the slot width's.
            actual = "sized by the host's layer" if spec.from_host and count == 0 else f"{count:,} @ dim {dims[topology]}"
            table.add_row(topology, spec.name, f"{spec.param_estimate:,}", actual, spec.description)
    console.print(table)
    return 0


def _cmd_tasks(args: argparse.Namespace, console: Console) -> int:
    from esper.runtime import list_tasks

    for spec in list_tasks():
        console.print(spec.describe(), highlight=False)
    return 0


def _cmd_train_heuristic(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs import scaleout
    from esper.jobs.config import (
        HeuristicRunConfig,
        build_config,
        config_from_flags,
        read_config_file,
    )
    from esper.jobs.heuristic import check_processes, run_heuristic
    from esper.jobs.report import print_summary
    from esper.nissa.run_folder import RunFolder

    scaleout.check_launch(args)
    if args.resume:
        _check_resume_flags(args, "epochs")
        run_dir, config = Path(args.resume), None
    else:
        config = config_from_flags(HeuristicRunConfig, args, read_config_file(args.config) if args.config else {})
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or f"runs/heuristic-{config.task}-{stamp}")
    if scaleout.wants_launch(args):
        resolved = config or build_config(HeuristicRunConfig, RunFolder(run_dir).saved_config("heuristic"), {})
        check_processes(resolved, scaleout.processes(args))
        return _launch(args, "heuristic", run_dir, console)
    with scaleout.worker_world(args) as world, _resumable("heuristic", run_dir):
        quiet = args.quiet or not world.is_main
        summary = run_heuristic(config, run_dir, resume=bool(args.resume), console=None if quiet else console, world=world,
                                epochs=args.epochs if args.resume else None)  # fmt: skip
    if summary is None:  # a rank other than 0: rank 0 reports
        return 0
    print_summary(summary, console)
    console.print(f"Run folder: {run_dir}", highlight=False)
    return 0


# What says how to run a command, not what it trains: these go with --resume.
_HOW_TO_RUN = ("resume", "quiet", "threads", "nproc", "nnodes", "rdzv_endpoint", "rdzv_id", "dist_backend", "dist_timeout")


def _check_resume_flags(args: argparse.Namespace, extends: str) -> None:
    """--resume continues a run with its own settings: a flag that would change them is refused,
    except `extends` (--epochs, --rounds), which trains the run longer."""
    parser = args.parser
    defaults = vars(parser.parse_args([]))
    given = [
        action.option_strings[0]
        for action in parser._actions  # argparse lists its flags nowhere else
        if action.option_strings and action.dest in defaults and action.dest not in (*_HOW_TO_RUN, extends)
        and getattr(args, action.dest) != defaults[action.dest]
    ]
    if given:
        raise ValueError(
            f"--resume DIR continues a run with its own settings; drop {', '.join(given)} "
            f"(only --{extends} may be given with it, to train the run longer)"
        )


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.compare import CompareConfig, run_compare
    from esper.jobs.compare_report import print_compare
    from esper.jobs.config import config_from_flags, flag_values, read_config_file

    if args.controller is not None and Path(args.controller).is_file():
        args.controller = str(Path(args.controller).resolve())  # the arms' configs hold it; resume may run elsewhere
    if args.resume:
        flagged = flag_values(CompareConfig, args)
        given = [key for key in flagged if key != "run"] + list(flagged.get("run", {}))  # run.device: --device
        given += [key for key in ("config", "out") if getattr(args, key)]
        if given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            raise ValueError(f"--resume DIR continues a compare with its own settings; drop {flags}")
        out, config = Path(args.resume), None
    else:
        if not args.out:
            raise ValueError("give --out DIR, the folder for the compare (or --resume DIR to continue one)")
        # --config holds run-config keys for every arm: compare's "run" section.
        run_keys = {"run": read_config_file(args.config)} if args.config else {}
        out, config = Path(args.out), config_from_flags(CompareConfig, args, run_keys)
    with _resumable("compare", out):
        results = run_compare(config, out, resume=bool(args.resume), console=None if args.quiet else console)
    print_compare(results, console)
    console.print(f"Compare folder: {out} (esper report {out})", highlight=False)
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.html_report import write_report
    from esper.nissa.files import check_writable

    if args.out:
        check_writable(args.out, "--out folder", folder=True)
    page = write_report([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None)
    console.print(f"Report: {page}", highlight=False)
    return 0


def _cmd_export(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.export import export_run

    written = export_run(args.run_dir, args.out)
    console.print(
        f"Exported {args.run_dir}: {written['params']:,} parameters to {written['file']} (outputs within "
        f"{written['max_difference']:.1g} of the grown model's); load it with torch.export.load(FILE).module()",
        highlight=False,
    )
    return 0


def _cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.runs_index import runs_table

    console.print(runs_table(Path(args.dir)))
    return 0


def _launch(args: argparse.Namespace, mode: str, run_dir: Path, console: Console) -> int:
    """`esper train MODE --nproc N ...`: the same command on N processes, through torchrun."""
    from esper.jobs import scaleout

    scaleout.check_run_dir(run_dir, mode, bool(args.resume))
    with _resumable(mode, run_dir, f" --nproc {args.nproc}"):
        scaleout.launch(args, run_dir, bool(args.resume))
    return 0


def _cmd_train_ppo(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs import scaleout
    from esper.jobs.config import build_config, config_from_flags, read_config_file
    from esper.jobs.ppo import PPORunConfig, check_processes, run_ppo
    from esper.nissa.run_folder import RunFolder

    scaleout.check_launch(args)
    if args.resume:
        _check_resume_flags(args, "rounds")
        run_dir, config = Path(args.resume), None
    else:
        config = config_from_flags(PPORunConfig, args, read_config_file(args.config) if args.config else {})
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or f"runs/ppo-{config.task}-{stamp}")
    if scaleout.wants_launch(args):
        resolved = config or build_config(PPORunConfig, RunFolder(run_dir).saved_config("ppo"), {})
        check_processes(resolved, scaleout.processes(args))
        return _launch(args, "ppo", run_dir, console)
    with scaleout.worker_world(args) as world, _resumable("ppo", run_dir):
        quiet = args.quiet or not world.is_main
        summary = run_ppo(config, run_dir, resume=bool(args.resume), console=None if quiet else console, world=world,
                          rounds=args.rounds if args.resume else None)  # fmt: skip
    if summary is None:  # a rank other than 0: rank 0 reports
        return 0
    console.print(
        f"return: first rounds {summary['first_rounds_return']:+.3f}, last rounds {summary['last_rounds_return']:+.3f}",
        highlight=False,
    )
    console.print(f"Policy: {summary['policy']}\nRun folder: {run_dir}", highlight=False)
    return 0


def _cmd_train_offline(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.config import config_from_flags
    from esper.jobs.offline import OfflineRunConfig, run_offline
    from esper.nissa.files import check_writable

    run_dir = Path(args.run_dir or f"runs/offline-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    check_writable(run_dir, "--run-dir", folder=True)
    config = config_from_flags(OfflineRunConfig, args)
    summary = run_offline(config, run_dir, console=None if args.quiet else console)
    last = summary["last_loss"]
    console.print(f"loss: td {last['td_loss']:.4f}, cql {last['cql']:.4f}, mean Q {last['q_mean']:+.3f}", highlight=False)
    console.print(f"Policy: {summary['policy']}\nRun folder: {run_dir}", highlight=False)
    return 0


def _cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from esper.jobs.evaluate import evaluate

    evaluate(args.policy, args.task, args.episodes, args.seed, args.episode_length, args.json, console, args.record,
             device=args.device or "cpu", precision=args.precision or "fp32")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esper", description="Morphogenetic training for PyTorch.")
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch CPU threads (default 1: the embedded tasks' small hosts run fastest on one)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    blueprints = commands.add_parser("blueprints", help="list the blueprint registry")
    blueprints.add_argument("--topology", choices=["cnn", "transformer", "mlp"])
    blueprints.set_defaults(func=_cmd_blueprints)

    tasks = commands.add_parser("tasks", help="list the tasks")
    tasks.set_defaults(func=_cmd_tasks)

    train = commands.add_parser("train", help="train a grown network or a controller")
    modes = train.add_subparsers(dest="mode", required=True)
    _add_heuristic_parser(modes)

    ppo = modes.add_parser("ppo", help="learn the controller with PPO over parallel environments")
    from esper.jobs.ppo import add_arguments as add_ppo_arguments
    from esper.jobs.scaleout import add_arguments as add_scaleout_arguments

    add_ppo_arguments(ppo)
    add_scaleout_arguments(ppo)
    ppo.set_defaults(func=_cmd_train_ppo, parser=ppo)

    offline = modes.add_parser("offline", help="learn a controller from recorded runs (offline DQN + CQL)")
    from esper.jobs.offline import add_arguments as add_offline_arguments

    add_offline_arguments(offline)
    offline.set_defaults(func=_cmd_train_offline)

    _add_evaluate_parser(commands)
    _add_compare_parser(commands)

    report = commands.add_parser("report", help="plots and an HTML page from run folders")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run folder, or several to compare")
    report.add_argument("--out", help="output folder (default RUN_DIR/report for one run, ./report for several)")
    report.set_defaults(func=_cmd_report)

    export = commands.add_parser("export", help="the grown network of a finished run as a plain model file")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of esper train heuristic")
    export.add_argument("--out", required=True, help="the file to write (torch.export's .pt2)")
    export.set_defaults(func=_cmd_export)

    runs = commands.add_parser("runs", help="list the run folders in DIR")
    runs.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder of run folders (default ./runs)")
    runs.set_defaults(func=_cmd_runs)
    return parser


def _add_heuristic_parser(modes: argparse._SubParsersAction) -> None:
    """`esper train heuristic` and its flags."""
    heuristic = modes.add_parser("heuristic", help="grow a host under the heuristic controller")
    heuristic.add_argument("--task", help="task name (see `esper tasks`); default digits")
    heuristic.add_argument("--epochs", type=int, help="epochs (default: the task's)")
    heuristic.add_argument("--slots", nargs="+", help="injection points to plant seeds in")
    heuristic.add_argument("--seed", type=int, help="random seed (default 0)")
    heuristic.add_argument("--blueprints", nargs="+", help="blueprints the heuristic may plant")
    heuristic.add_argument("--run-dir", help="run folder (default runs/heuristic-TASK-TIME)")
    heuristic.add_argument("--config", help="JSON or TOML file of config keys; flags override it")
    heuristic.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    heuristic.add_argument("--baseline", action="store_true", default=None, help="also train the host alone and compare")
    heuristic.add_argument("--tensorboard", action="store_true", default=None, help="also log to RUN_DIR/tensorboard")
    heuristic.add_argument("--lr-schedule", choices=("constant", "cosine", "cosine-restarts"),
                           help="learning rates constant, or annealed to 0 over the run (cosine-restarts: from the "
                                "peak again at each growth step of a schedule plan) (default: the task's)")  # fmt: skip
    heuristic.add_argument("--lr-warmup", type=float, metavar="FRACTION",
                           help="warm learning rates up linearly over this share of the run, in [0, 1] (default: the task's)")  # fmt: skip
    heuristic.add_argument("--checkpoint-every", type=int, help="checkpoint every K epochs (default 5)")
    heuristic.add_argument("--data-dir", dest="task_options__data_dir", metavar="DIR", help="dataset folder (cifar10)")
    heuristic.add_argument("--download", dest="task_options__download", action="store_true", default=None,
                           help="download the dataset if missing (cifar10)")  # fmt: skip
    heuristic.add_argument("--text-path", dest="task_options__path", metavar="FILE", help="UTF-8 text file (textfile task)")
    heuristic.add_argument(
        "--chooser", choices=["curriculum", "rotation"], help="how blueprints are picked (default curriculum: UCB1)"
    )
    heuristic.add_argument("--curriculum", metavar="FILE", help="start from an earlier run's curriculum.json")
    heuristic.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="grow a model of your own on the task: FACTORY(task data) returns (model, targets to graft)",
    )
    add_device_arguments(heuristic)
    heuristic.add_argument(
        "--max-params-added", dest="budget__max_params_added", type=int, metavar="N", help="growth budget: at most N params added by seeds"
    )
    heuristic.add_argument(
        "--max-inference-flops",
        dest="budget__max_inference_flops",
        type=float,
        metavar="F",
        help="growth budget: at most F inference FLOPs per sample for the whole grown network",
    )
    heuristic.add_argument("--quiet", action="store_true", help="no live progress")
    from esper.jobs.scaleout import add_arguments as add_scaleout_arguments

    add_scaleout_arguments(heuristic)
    heuristic.set_defaults(func=_cmd_train_heuristic, parser=heuristic)


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """`esper evaluate` and its flags."""
    evaluate = commands.add_parser("evaluate", help="run a controller on held-out episodes vs. the host alone")
    evaluate.add_argument("--policy", required=True, help="policy.pt from `esper train ppo` or `esper train offline`, or heuristic, or random")
    evaluate.add_argument("--task", help="task (default: the policy's, or digits)")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes (default 10)")
    evaluate.add_argument("--seed", type=int, default=0, help="episode i uses seed 10000 + SEED + i (default 0)")
    evaluate.add_argument("--episode-length", type=int, help="epochs per episode (default: the policy's, or 25)")
    evaluate.add_argument("--json", help="also write the report to this JSON file")
    evaluate.add_argument("--record", metavar="DIR", help="record the controller's transitions in DIR (for `esper train offline`)")
    add_device_arguments(evaluate, "the episodes' hosts")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_compare_parser(commands: argparse._SubParsersAction) -> None:
    """`esper compare` and its flags."""
    compare = commands.add_parser(
        "compare", help="does growth pay? the grown network against static ones, over seeds"
    )
    compare.add_argument("--task", help="task name (default mnist5k-tiny)")
    compare.add_argument("--seeds", type=int, help="number of seeds (default 5)")
    compare.add_argument("--first-seed", type=int, help="seeds FIRST, FIRST+1, ... (default 0)")
    compare.add_argument("--controller", help="a policy.pt from esper train ppo/offline: a policy arm grows beside the heuristic's grown arm")
    compare.add_argument("--transfer", dest="run__transfer", action="store_true", default=None,
                         help="the --controller policy was trained on another task: apply it to this one unchanged")  # fmt: skip
    compare.add_argument("--epochs", type=int, help="epochs of every arm (default: the task's)")
    compare.add_argument(
        "--arms", nargs="+", metavar="ARM",
        help="arms to train (default all: host-only grown static-final static-final-matched, "
        "and static-reference when the task has a reference host)",
    )  # fmt: skip
    compare.add_argument("--config", help="JSON or TOML file of run-config keys for every arm (as esper train heuristic --config)")
    add_device_arguments(compare, "every arm", section="run")
    compare.add_argument("--out", help="the compare folder (rerun the same command to continue it)")
    compare.add_argument("--resume", metavar="DIR", help="continue the interrupted compare in DIR")
    compare.add_argument("--quiet", action="store_true", help="no live progress")
    compare.set_defaults(func=_cmd_compare)


class _Stopped(Exception):
    """A run stopped by an interruption or a disk fault: one line to print, an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _os_reason(err: OSError, fallback: Path | None = None) -> str:
    """'PATH: reason' for an OS-level failure (`fallback`, e.g. the run folder, when the OS names no file)."""
    path = err.filename or fallback
    reason = err.strerror or str(err)
    return reason if path is None else f"{path}: {reason}"


@contextmanager
def _resumable(mode: str, run_dir: Path, flags: str = "") -> Iterator[None]:
    """Turn Ctrl-C, a disk fault or a failed rank during a run into one line with the exact command to continue.

    Once the run folder holds its config what was written is kept and valid, so
    `esper train MODE --resume RUN_DIR` (`esper compare --resume DIR` for mode
    "compare") continues from the last checkpoint (`flags`, e.g. " --nproc 2", are
    added to it); before that nothing was written and the command is simply run again.
    """
    from esper.jobs.compare import CONFIG_FILE
    from esper.jobs.scaleout import LaunchFailed
    from esper.nissa.run_folder import RunFolder
    from esper.tolaria import TrainingFailed
    from esper.tolaria.distributed import RankFailure, RankZeroFailed

    started = run_dir / CONFIG_FILE if mode == "compare" else RunFolder(run_dir).config_path
    command = "esper compare" if mode == "compare" else f"esper train {mode}"
    resume = f"{command} --resume {run_dir}{flags}"
    try:
        yield
    except KeyboardInterrupt:
        if started.exists():
            message = f"interrupted: checkpoints so far are kept; continue with: {resume}"
        else:
            message = "interrupted before the run folder was made; nothing was written"
        raise _Stopped(message, 130) from None
    except (RankFailure, LaunchFailed) as err:
        if started.exists():
            message = f"{err}. The checkpoints so far are kept; continue with: {resume}"
        else:
            message = f"{err}. Nothing was written; run the command again"
        raise _Stopped(message, 2) from None
    except RuntimeError as err:
        # A fault during the run (a forward that raised, a device error); not one said as it is.
        if not started.exists() or isinstance(err, (TrainingFailed, RankZeroFailed)):
            raise
        message = f"{err}. What was written so far is kept; once that is fixed, continue with: {resume}"
        raise _Stopped(message, 2) from None
    except OSError as err:
        if err.errno is None:  # one of Esper's own messages (FileNotFoundError, FileExistsError)
            raise
        if started.exists():
            message = (
                f"{_os_reason(err, run_dir)}. What was written so far is kept; once that is fixed, "
                f"continue with: {resume}"
            )
        else:
            message = f"{_os_reason(err, run_dir)}. Nothing was written; fix that and run the command again"
        raise _Stopped(message, 2) from None


def _rank_prefix() -> str:
    """"rank N: " in a process of a distributed run (its lines mix with the other ranks')."""
    return f"rank {os.environ.get('RANK', '0')}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _reported_by_rank_zero(err: BaseException) -> bool:
    """An error every rank meets together (decided on rank 0, or on numbers every rank shares):
    rank 0 prints it, the others stay quiet."""
    from esper.tolaria import TrainingFailed
    from esper.tolaria.distributed import RankZeroFailed

    return isinstance(err, (RankZeroFailed, TrainingFailed)) and not _is_rank_zero()


def _print_error(console: Console, message: str) -> None:
    """One line, printed verbatim: a message holding [brackets] is not rich markup."""
    line = Text(f"{_rank_prefix()}error: ", style="bold red")
    line.append(" ".join(message.split()))
    console.print(line, soft_wrap=True)


def _interrupt_once(signum: int, frame: object) -> None:
    """The first Ctrl-C stops the command; more while it winds down are ignored (a second one
    landing in a `finally` or in the interpreter's exit would end it with a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextmanager
def _one_interrupt() -> Iterator[None]:
    """`_interrupt_once` as the Ctrl-C handler while the command runs (where Ctrl-C is Python's
    default: an ignored SIGINT stays ignored). Once an interrupt came, SIGINT stays ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _interrupt_once:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    with _one_interrupt():
        return _run(argv, console)


def _run(argv: list[str], console: Console) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # what `--nproc` runs again on every process
        if args.threads < 1:
            raise SystemExit("esper: --threads must be >= 1")
        torch.set_num_threads(args.threads)
        return args.func(args, console)
    except _Stopped as stop:
        if stop.code == 130:
            # Ctrl-C reaches every rank and the `--nproc` launcher: one of them says what to do.
            from esper.jobs.scaleout import is_launched_worker

            if _is_rank_zero() and not is_launched_worker():
                console.print(Text(str(stop), style="yellow"), soft_wrap=True)
        else:
            _print_error(console, str(stop))
        return stop.code
    except OSError as err:
        _print_error(console, str(err) if err.errno is None else _os_reason(err))
        return 2
    except (ValueError, RuntimeError, ImportError) as err:
        if not _reported_by_rank_zero(err):
            _print_error(console, str(err))
        return 2
    except KeyboardInterrupt:
        console.print(Text("interrupted", style="yellow"))
        return 130


if __name__ == "__main__":
    sys.exit(main())
