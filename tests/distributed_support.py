"""What the scale-out tests share: real processes, in a process group or under torchrun.

- `run_ranks(check, n, tmp_path)` starts n processes (torch.multiprocessing, gloo) that
  join one process group the way torchrun's workers do (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT in the environment, `init_world`), runs `check(world, tmp_path)` in each
  and returns what each wrote to `tmp_path/rank{r}.json`. A rank that hangs is killed
  after `timeout` seconds and the test fails. The checks below are what a rank does.
- `esper(*argv)` runs `python -m esper` as a process (e.g. `--nproc 2`: the launcher
  and its ranks); `rank_pids(launcher)` finds the ranks a launcher started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

import esper
from esper.jobs.scaleout import WORKER_MARK
from esper.kasmina.host import MLPHost, MorphogeneticModel
from esper.runtime.data import InMemoryLoader
from esper.tolaria import MorphogeneticTrainer, OptimConfig
from esper.tolaria.distributed import HEARTBEAT_S, RankFailure, RankZeroFailed, World, init_world

SOURCES = str(Path(esper.__file__).parents[1])


def esper_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "esper", "--threads", "1", *argv]


def esper_env() -> dict[str, str]:
    """This checkout's sources for the child processes (and nothing of this process's torchrun)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", WORKER_MARK)}
    return {**env, "PYTHONPATH": SOURCES}


def esper(*argv: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m esper ARGV` to the end; its output as text."""
    command = esper_command(*argv)
    return subprocess.run(command, env=esper_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the ranks the `--nproc` launcher with pid `launcher` started (read from /proc)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        variables = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if parent == launcher and b"RANK" in variables:
            ranks[int(variables[b"RANK"])] = int(entry.name)
    return ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, check: Callable[[World, Path], dict], folder: str, timeout_s: float) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = init_world("gloo", timeout_s)
    try:
        result = check(world, Path(folder))
    except BaseException:  # noqa: BLE001 - written for the test to show, whatever it was
        result = {"crashed": traceback.format_exc()}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    if not result.get("leave_early"):
        world.close()


def run_ranks(check: Callable[[World, Path], dict], n: int, folder: Path, timeout: float = 60.0, timeout_s: float = 30.0) -> list[dict]:
    context = mp.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=_rank_main, args=(r, n, port, check, str(folder), timeout_s)) for r in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    hung = [r for r, p in enumerate(processes) if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    if hung:  # raised, not asserted: this helper is not rewritten by pytest, and `make test` runs -O
        raise AssertionError(f"rank(s) {hung} did not finish within {timeout} s")
    results = []
    for rank in range(n):
        path = folder / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    for rank, result in enumerate(results):
        if "crashed" in result:
            raise AssertionError(f"rank {rank} crashed:\n{result['crashed']}")
    return results


# --------------------------------------------------------------------------- checks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=generator), torch.randint(0, 2, (8,), generator=generator)


def gradients_of_shares(world: World, folder: Path) -> dict:
    """Uneven shares (3 and 5 of 8 samples, then 0 and 8): the reduced gradient is the whole batch's."""
    inputs, targets = _batch()
    reference = _model()
    nn.functional.cross_entropy(reference(inputs), targets).backward()
    expected = [p.grad.clone() for p in reference.parameters()]
    out = {}
    for name, cut in (("uneven", 3), ("empty", 0)):
        model = _model()
        lo, hi = (0, cut) if world.rank == 0 else (cut, 8)
        if hi > lo:
            loss = nn.functional.cross_entropy(model(inputs[lo:hi]), targets[lo:hi])
            loss.backward()
            extras = [loss.item()]
        else:
            extras = [0.0]
        (mean_loss,) = world.reduce_gradients(model.parameters(), hi - lo, extras, fill_missing=True)
        whole = nn.functional.cross_entropy(_model()(inputs), targets).item()
        out[name] = {
            "grad_error": max((p.grad - e).abs().max().item() for p, e in zip(model.parameters(), expected, strict=True)),
            "loss_error": abs(mean_loss - whole),
        }
    return out


def broadcast_and_replicas(world: World, folder: Path) -> dict:
    """A module made differently on each rank becomes rank 0's; `check_replicas` sees a drift."""
    torch.manual_seed(world.rank)
    module = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    module[1].running_mean.fill_(float(world.rank))
    world.broadcast_module(module)
    gathered = world.all_gather(torch.cat([t.detach().reshape(-1).double() for t in module.state_dict().values()]))
    world.check_replicas(module)  # identical now: passes
    module[1].running_mean.fill_(float(world.rank))
    world.average_buffers(module)
    averaged = module[1].running_mean.tolist()
    if world.rank == 1:
        with torch.no_grad():
            module[0].weight.add_(1.0)
    try:
        world.check_replicas(module)
        drift = None
    except RankFailure as err:
        drift = str(err)
    return {"identical": torch.equal(gathered[0], gathered[1]), "averaged": averaged, "drift": drift}


def disagreeing_configs(world: World, folder: Path) -> dict:
    """Rank 1 resolved another config: every rank refuses to start, naming it and the key."""
    try:
        world.check_same("run's settings", {"config": {"envs": 8 if world.rank == 0 else 4}, "data": "abc"})
        return {"error": None}
    except ValueError as err:
        return {"error": str(err)}


def rank_zero_fails(world: World, folder: Path) -> dict:
    """What only rank 0 does fails: rank 0 raises its error, the others `RankZeroFailed`."""

    def create() -> str:
        raise FileExistsError("the folder already holds a run")

    try:
        world.run_on_main(create)
    except (FileExistsError, RankZeroFailed) as err:
        return {"raised": type(err).__name__}
    return {"raised": None}


def rollback_together(world: World, folder: Path) -> dict:
    """A NaN in rank 1's share of a batch poisons every rank (the gradients are shared); the
    governor sees it in the summed losses on every rank, and every rank rolls back the same way."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 8), torch.randint(0, 3, (64,))
    inputs[20, 3] = float("nan")  # batch 0 is samples 0-31 in order: rank 1 holds 16-31
    loaders = [InMemoryLoader(x, y, 32, shuffle=False, seed=0, rank=world.rank, world_size=world.size)
               for x, y in ((inputs, targets), (inputs[:16].nan_to_num(), targets[:16]))]  # fmt: skip
    model = MorphogeneticModel(MLPHost(8, num_classes=3, hidden=8, n_layers=1), ["layer1"])
    trainer = MorphogeneticTrainer(model, *loaders, OptimConfig(), world=world)
    before = [p.detach().clone() for p in model.parameters()]
    record = trainer.run_epoch()
    restored = all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    world.check_replicas(model)
    return {"rollback": record.rollback, "restored": restored, "rollbacks": trainer.governor.rollbacks}


def flops_of_the_global_batches(world: World, folder: Path) -> dict:
    """Each rank trains and validates its share of every batch (uneven: 15 and 16 of 31): the
    FLOPs every rank reports are the global batches', what one process counts on the same data."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(70, 8), torch.randint(0, 3, (70,))

    def epoch_flops(on: World) -> dict:
        loaders = [InMemoryLoader(x, y, 31, shuffle=False, seed=0, rank=on.rank, world_size=on.size)
                   for x, y in ((inputs, targets), (inputs[:40], targets[:40]))]  # fmt: skip
        torch.manual_seed(0)
        model = MorphogeneticModel(MLPHost(8, num_classes=3, hidden=8, n_layers=1), ["layer1"])
        return MorphogeneticTrainer(model, *loaders, OptimConfig(), world=on).run_epoch().flops.to_dict()

    return {"shared": epoch_flops(world), "alone": epoch_flops(World.single())}


def rank_one_dies(world: World, folder: Path) -> dict:
    """Rank 1 dies before a collective: rank 0's `RankFailure` names it."""
    world.at("epoch 3 of 9")
    world.all_reduce_(torch.ones(2))  # both alive here
    if world.rank == 1:
        os._exit(0)  # gone without a word, as a killed process
    try:
        world.all_reduce_(torch.ones(2))
    except RankFailure as err:
        return {"message": str(err), "leave_early": True}
    return {"message": None}


def every_check(world: World, folder: Path) -> dict:
    """All of the above in one process group (starting processes is what costs), the death last."""
    checks = (
        gradients_of_shares,
        broadcast_and_replicas,
        disagreeing_configs,
        rank_zero_fails,
        rollback_together,
        flops_of_the_global_batches,
    )
    results = {check.__name__: check(world, folder) for check in checks}
    # Rank 1 never returns from the last check: what it found so far is written first.
    (folder / f"rank{world.rank}.json").write_text(json.dumps({**results, "rank_one_dies": {"died": True}}))
    return {**results, "rank_one_dies": rank_one_dies(world, folder), "leave_early": True}


def rank_one_is_stuck(world: World, folder: Path) -> dict:
    """Rank 1 is alive (its heartbeat goes on) but busy elsewhere: rank 0's timeout names it as stuck."""
    world.all_reduce_(torch.ones(2))
    if world.rank == 1:
        world.at("a long computation")
        time.sleep(3 * world.timeout_s + 4 * HEARTBEAT_S)  # outlives rank 0's timeout and diagnosis
        return {"leave_early": True}
    try:
        world.all_reduce_(torch.ones(2))
    except RankFailure as err:
        return {"message": str(err), "leave_early": True}
    return {"message": None}
