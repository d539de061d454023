"""`esper compare`: does growth pay? The grown network against static ones, seed by seed.

For each seed, these arms are trained, each as a normal run of the heuristic job
(`run_heuristic`) in its own run folder `DIR/seed-S/ARM`, with the same data order
(the loaders' order is a function of the seed) and the same epochs:

- `host-only`: the task's host, nothing grown (controller "none");
- `grown`: the heuristic growing it;
- `policy`: a learned controller (`--controller POLICY.pt`, from `esper train ppo` or
  `offline`) growing it, beside the heuristic on the same seeds (only with a policy);
- `static-final`: the grown run's final network (summary.json's `architecture`: every
  fossilized seed at full strength, built into the trunk), freshly initialised and
  trained from scratch;
- `static-final-matched`: that network again, stopped once its training FLOPs reach
  what the grown run spent (`max_training_flops`; its last epoch is cut short, to the
  batch);
- `static-reference`: the task's static reference host, when it has one;
- `static-reference-matched`: the reference host stopped once its training FLOPs reach
  what the grown run spent (a cosine schedule anneals over that budget);
- `scheduled`: the host grown by the `schedule` controller on a fixed plan toward the
  reference (the task's plan, or the config's `schedule`), when there is a plan.

An arm run is a run folder like any other: `esper report` and `--resume` work on it.
The compare resumes where it stopped (rerun the command, or `--resume DIR`): finished
arm runs are kept, one cut off mid-run continues from its checkpoint. After every arm
run DIR/compare.json is rewritten (`jobs.compare_results`), and at the end its figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from esper import __version__
from esper.jobs import compare_figures
from esper.jobs.compare_results import ARMS, ArmRun, compare_results
from esper.jobs.config import HeuristicRunConfig, build_config
from esper.jobs.heuristic import prepare_run, run_heuristic
from esper.jobs.report_figures import save_png
from esper.leyline.ranges import MAX_SEED, AtLeastOne, Seed, check_fields
from esper.nissa.files import check_format, check_writable, with_format
from esper.nissa.run_folder import read_json, write_json
from esper.runtime import get_task
from esper.runtime.static_host import host_variant
from esper.tolaria import TrainingFailed

CONFIG_FILE = "compare_config.json"
RESULTS_FILE = "compare.json"
FIGURES = {
    "metric_vs_flops.png": "Validation metric against cumulative training FLOPs (mean ± SE over seeds)",
    "metric_vs_params.png": "Final validation metric against parameters (mean ± SE over seeds)",
}
# Keys of the arms' run config that compare sets itself, per arm.
OWNED_KEYS = ("task", "seed", "epochs", "controller", "host", "built_in", "built_in_widths", "max_training_flops")
# An arm that is trained from what the grown run ended with.
NEEDS_GROWN = ("static-final", "static-final-matched", "static-reference-matched")
# Run-config keys that only the arm they configure takes.
ARM_ONLY_KEYS = {"schedule": "scheduled", "transfer": "policy"}


@dataclass(slots=True)
class CompareConfig:
    task: str = "mnist5k-tiny"
    seeds: AtLeastOne = 5  # seeds first_seed, first_seed + 1, ...
    first_seed: Seed = 0
    controller: str = "heuristic"  # "heuristic", or a policy.pt: then a policy arm grows beside the heuristic
    epochs: AtLeastOne | None = None  # None: the task's default
    arms: list[str] | None = None  # None: every arm, static-reference if the task has a reference host
    # More run-config keys for every arm (task_options, heuristic, blueprints, slots, ...).
    run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.first_seed + self.seeds - 1 > MAX_SEED:
            raise ValueError(f"the last seed, first_seed + seeds - 1, must be <= {MAX_SEED}, got {self.first_seed + self.seeds - 1}")
        if self.controller == "none":
            raise ValueError("--controller must be 'heuristic' or a policy.pt: the grown arm grows")
        if self.arms is not None:
            unknown = [arm for arm in self.arms if arm not in ARMS]
            if unknown or not self.arms:
                raise ValueError(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}")
            if "grown" not in self.arms and any(arm in NEEDS_GROWN for arm in self.arms):
                raise ValueError(f"the {', '.join(a for a in self.arms if a in NEEDS_GROWN)} arm(s) are built from the grown run: add the grown arm")
            if "policy" in self.arms and self.controller == "heuristic":
                raise ValueError("the policy arm grows with a learned controller: give --controller POLICY.pt")
        owned = sorted(set(self.run) & set(OWNED_KEYS))
        if owned:
            raise ValueError(f"compare sets {', '.join(owned)} for each arm itself; leave them out of --config")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def planned_arms(config: CompareConfig) -> list[str]:
    """The arms to train, in training order; a reference arm on a task without one is refused."""
    spec = get_task(config.task)
    if config.arms is None:
        skipped = {"static-reference", "static-reference-matched"} if spec.reference_host is None else set()
        if config.controller == "heuristic":
            skipped.add("policy")
        if not spec.schedule and "schedule" not in config.run:
            skipped.add("scheduled")
        return [arm for arm in ARMS if arm not in skipped]
    if "static-reference" in config.arms or "static-reference-matched" in config.arms:
        try:
            host_variant(spec, "reference", {})
        except ValueError as err:
            raise ValueError(f"{err}; leave static-reference out of --arms") from None
    return [arm for arm in ARMS if arm in config.arms]


class CompareFolder:
    """DIR: compare_config.json, one run folder per arm and seed, compare.json and figures."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / CONFIG_FILE)
    results_path = property(lambda self: self.path / RESULTS_FILE)

    def run_path(self, seed: int, arm: str) -> Path:
        return self.path / f"seed-{seed}" / arm

    def saved_config(self) -> CompareConfig:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not an `esper compare` folder (it has no {CONFIG_FILE})")
        saved = read_json(self.config_path)
        check_format(saved, self.config_path)
        return build_config(CompareConfig, saved["config"], {})

    def check_new(self, config: CompareConfig) -> bool:
        """Whether DIR holds this very compare already (then it is resumed); refuses anything else."""
        if self.config_path.exists():
            if self.saved_config() == config:
                return True
            raise ValueError(
                f"{self.path} holds a compare with other settings; continue that one with "
                f"`esper compare --resume {self.path}`, or choose another --out"
            )
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise ValueError(f"{self.path} already holds something else than a compare; choose another --out")
        check_writable(self.path, "--out folder", folder=True)
        return False


def is_compare_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def arm_config(config: CompareConfig, arm: str, seed: int, grown: dict[str, Any] | None) -> HeuristicRunConfig:
    """The run config of `arm` on `seed`; the static-final arms read the grown run's summary."""
    run = {key: value for key, value in config.run.items() if ARM_ONLY_KEYS.get(key, arm) == arm}
    values: dict[str, Any] = {**run, "task": config.task, "seed": seed, "epochs": config.epochs}
    match arm:
        case "host-only":
            values["controller"] = "none"
        case "grown":
            values["controller"] = "heuristic"
        case "policy":
            values["controller"] = config.controller
        case "static-final" | "static-final-matched":
            if grown is None:
                raise ValueError(f"the {arm} arm is built from a finished grown run's summary")
            architecture = grown["architecture"]
            widths = {slot_id: merged[-1] for slot_id, merged in architecture.get("widths", {}).items()}
            values |= {"controller": "none", "built_in": architecture["slots"], "built_in_widths": widths}
            if arm == "static-final-matched":
                values["max_training_flops"] = grown["flops"]["training"]
        case "scheduled":
            values["controller"] = "schedule"
        case "static-reference":
            values |= {"controller": "none", "host": "reference"}
        case "static-reference-matched":
            if grown is None:
                raise ValueError(f"the {arm} arm is trained on a finished grown run's training FLOPs")
            values |= {"controller": "none", "host": "reference", "max_training_flops": grown["flops"]["training"]}
    return build_config(HeuristicRunConfig, values, {}, section="run")


def check(config: CompareConfig) -> list[str]:
    """Everything that can be wrong before any arm runs: the arms, and each arm's run setup
    (task, controller file, blueprints, budget, options) as the first seed would build it."""
    arms = planned_arms(config)
    seed = config.seed_list[0]
    for arm in arms:
        if arm not in NEEDS_GROWN:
            prepare_run(arm_config(config, arm, seed, None))
    return arms


def arm_state(path: Path) -> str:
    """"new", "started" (cut off: resume it), "complete" or "failed"."""
    summary = path / "summary.json"
    if summary.exists():
        return str(read_json(summary)["status"])
    return "started" if (path / "config.json").exists() else "new"


class _Display:
    """The live progress: arm runs done overall, and the epochs of the arm run in progress."""

    def __init__(self, console: Console | None, total_runs: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=console is None,
        )
        self.runs = self.progress.add_task("arm runs", total=total_runs)
        self.epochs = self.progress.add_task("", total=None, visible=False)

    @contextmanager
    def shown(self) -> Iterator[_Display]:
        with self.progress:
            yield self

    def start(self, seed: int, arm: str, index: int, seeds: int, epochs: int) -> Callable[[int, int], None]:
        label = f"seed {seed} ({index}/{seeds}) [bold]{arm}[/] epoch"
        self.progress.reset(self.epochs, description=label, total=epochs, completed=0, visible=True)
        return lambda done, total: self.progress.update(self.epochs, completed=done, total=total)

    def finish(self) -> None:
        self.progress.advance(self.runs)


def collect(folder: CompareFolder, config: CompareConfig, arms: list[str]) -> dict[str, list[ArmRun]]:
    """The finished (complete) arm runs in the folder, per arm, in seed order."""
    runs: dict[str, list[ArmRun]] = {arm: [] for arm in arms}
    for seed in config.seed_list:
        for arm in arms:
            _add_if_complete(runs, folder, seed, arm)
    return runs


def _add_if_complete(runs: dict[str, list[ArmRun]], folder: CompareFolder, seed: int, arm: str) -> None:
    path = folder.run_path(seed, arm)
    try:
        if arm_state(path) == "complete":
            runs[arm].append(ArmRun.read(path, seed, str(path.relative_to(folder.path))))
    except (ValueError, KeyError, TypeError) as err:
        reason = str(err) if isinstance(err, ValueError) else f"{path}: its summary or metrics lack {err}"
        raise ValueError(f"{reason}; that arm run is damaged: remove {path} to train it again, "
                         "then run the command again") from None  # fmt: skip


def write_results(
    folder: CompareFolder,
    config: CompareConfig,
    runs: dict[str, list[ArmRun]],
    seconds: float,
    failed: list[str],
) -> dict[str, Any]:
    """compare.json from the finished arm runs ("status" says whether every run is done)."""
    arms = list(runs)
    done = sum(len(r) for r in runs.values())
    planned = len(arms) * config.seeds
    spec = get_task(config.task)
    results = {
        "mode": "compare",
        "task": config.task,
        "controller": config.controller,
        "epochs": config.epochs or spec.epochs,
        "seeds": config.seed_list,
        "arms_planned": arms,
        "status": "complete" if done + len(failed) == planned else "incomplete",
        "runs_done": done,
        "runs_planned": planned,
        "failed": failed,
        "metrics": ["val_accuracy", "val_loss"] if _with_loss(config) else ["val_accuracy"],
        "wall_seconds": round(seconds, 1),
        **compare_results(runs, with_loss=_with_loss(config), reach_fractions=spec.reach_fractions,
                          transfer=bool(config.run.get("transfer"))),
        "esper_version": __version__,
    }
    write_json(folder.results_path, results)
    return results


def _with_loss(config: CompareConfig) -> bool:
    """Char-LM tasks are judged on val loss as well as accuracy."""
    return get_task(config.task).topology == "transformer"


def build_figures(runs: dict[str, list[ArmRun]], config: CompareConfig) -> dict[str, Figure | None]:
    """The compare's figures by file name (None for one with nothing to plot yet)."""
    metrics = ["val_accuracy", "val_loss"] if _with_loss(config) else ["val_accuracy"]
    return {
        "metric_vs_flops.png": compare_figures.metric_against_flops(runs, metrics),
        "metric_vs_params.png": compare_figures.metric_against_params(runs, metrics),
    }


def run_compare(
    config: CompareConfig | None, out: str | Path, resume: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Run (or continue) the compare in `out`; returns compare.json's content."""
    folder = CompareFolder(out)
    if resume:
        config = folder.saved_config()
    elif config is None:
        raise ValueError("a new compare needs a config (or resume=True to continue one)")
    else:
        resume = folder.check_new(config)
    arms = check(config)
    if resume:
        collect(folder, config, arms)  # every finished arm run reads, before anything is rewritten
    else:
        folder.path.mkdir(parents=True, exist_ok=True)
        write_json(folder.config_path, with_format({"mode": "compare", "config": config.to_dict()}))
    earlier = read_json(folder.results_path).get("wall_seconds", 0.0) if folder.results_path.exists() else 0.0
    started = time.perf_counter()
    failed: list[str] = []
    runs: dict[str, list[ArmRun]] = {arm: [] for arm in arms}
    epochs = config.epochs or get_task(config.task).epochs
    display = _Display(console, len(arms) * config.seeds)
    with display.shown():
        for index, seed in enumerate(config.seed_list, start=1):
            grown: dict[str, Any] | None = None
            for arm in arms:
                path = folder.run_path(seed, arm)
                state = arm_state(path)
                if arm in NEEDS_GROWN and grown is None:
                    failed.append(f"seed-{seed}/{arm}: not trained, the grown run failed")
                elif state == "failed":
                    failed.append(f"seed-{seed}/{arm}: {read_json(path / 'summary.json').get('reason')}")
                elif state != "complete":
                    run_config = None if state == "started" else arm_config(config, arm, seed, grown)
                    progress = display.start(seed, arm, index, config.seeds, epochs)
                    try:
                        run_heuristic(run_config, path, resume=state == "started", progress=progress)
                    except TrainingFailed as err:
                        failed.append(f"seed-{seed}/{arm}: {err}")
                _add_if_complete(runs, folder, seed, arm)
                if arm == "grown" and runs["grown"] and runs["grown"][-1].seed == seed:
                    grown = read_json(path / "summary.json")
                display.finish()
                write_results(folder, config, runs, earlier + time.perf_counter() - started, failed)
    for name, fig in build_figures(runs, config).items():
        if fig is not None:
            save_png(fig, folder.path / name)
    return read_json(folder.results_path)
