"""Scale-out with torch.distributed: the ranks of one run, and one host trained on all of them.

`World` is this process's place in a run that torchrun launched (rank, world size, the
device its collectives use) and the few collectives Esper needs. A process started
without torchrun (or by torchrun with one process) gets `World.single()`: no process
group, every collective is the identity, so one process runs exactly as before.

Training one host on several ranks (data parallel, what DDP does) is done by hand here:
`reduce_gradients` all-reduces the gradients of whatever parameters the optimisers hold
after each backward, in one flat bucket, each rank's weighted by its share of the global
batch. DistributedDataParallel wraps a fixed set of parameters when it is built; seeds
appear and disappear every few epochs (germinate, cull, fossilize), so DDP would have to
be rebuilt each time, and its forward wrapper would sit in front of the slots' hooks.
A new seed is made identical on every rank by `broadcast_module` from rank 0.

Faults. A collective that fails (gloo reports a peer that closed its connection, or the
process group's timeout runs out because a peer hangs) raises `RankFailure` naming the
rank at fault. To know which, every rank runs a heartbeat thread that publishes in the
process group's store, once a second: a beat count, how many collectives its main thread
has entered, and what it is doing (`World.at`). A rank whose beat stops is dead or
frozen; one that beats but has entered fewer collectives is stuck in its own work.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from esper.leyline import Action, Controller, EpochSignals

T = TypeVar("T")

BACKENDS = ("gloo", "nccl")
# Long enough for rank 0's own work between collectives (checkpoints, the summary) on a
# large host; a rank that hangs is named once it runs out. `--dist-timeout` sets it.
DEFAULT_TIMEOUT_S = 300.0
HEARTBEAT_S = 1.0
_KEY = "esper/heartbeat/{}"


class RankFailure(RuntimeError):
    """Another rank died or hangs, so this one cannot go on; the message names the rank."""


class RankZeroFailed(RuntimeError):
    """What rank 0 alone does (the run folder) failed there; rank 0 reports why."""


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [lo, hi) of n items split over `size` ranks (sizes differ by <= 1)."""
    return n * rank // size, n * (rank + 1) // size


def resolve_backend(requested: str | None) -> str:
    """The process group backend: as requested, else nccl where CUDA is, gloo elsewhere."""
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown distributed backend {requested!r}; choose one of {', '.join(BACKENDS)}")
        if requested == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
            raise ValueError("the nccl backend needs CUDA GPUs and a CUDA build of PyTorch; use --dist-backend gloo")
        return requested
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


class World:
    """This process's rank in the run, and the collectives Esper uses (identities for one process)."""

    def __init__(
        self,
        rank: int = 0,
        size: int = 1,
        local_rank: int = 0,
        backend: str | None = None,
        device: torch.device | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.rank = rank
        self.size = size
        self.local_rank = local_rank
        self.backend = backend
        # Where collective tensors live: nccl moves only CUDA tensors.
        self.device = device or torch.device("cpu")
        self.timeout_s = timeout_s
        self.collectives = 0  # entered by the main thread; the heartbeat publishes it
        self.doing = "start-up"  # what the main thread does (`at`); the heartbeat publishes it
        self._store: dist.Store | None = None
        self._beat_count = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @classmethod
    def single(cls) -> World:
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def at(self, doing: str) -> None:
        """Say what this rank is doing now (named in another rank's fault message); published at once."""
        self.doing = doing
        if self._store is not None:
            self._publish()

    # ------------------------------------------------------------------ lifecycle
    def _start_heartbeat(self) -> None:
        # The process group's own store: torchrun's agent hosts it, so it outlives a dead worker.
        self._store = dist.distributed_c10d._get_default_store()
        self._publish()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self._beat_count += 1
                try:
                    self._publish()
                except (RuntimeError, OSError):  # the store is gone: the run is ending or already failed
                    return

        self._beat = threading.Thread(target=beat, name="esper-heartbeat", daemon=True)
        self._beat.start()

    def _publish(self) -> None:
        # The store's client serialises its operations, so the main thread (`at`) may publish too.
        value = json.dumps({"beat": self._beat_count, "collectives": self.collectives, "doing": self.doing})
        self._store.set(_KEY.format(self.rank), value)

    def close(self) -> None:
        """Leave the process group (at the end of a run, or after a failure)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2 * HEARTBEAT_S)
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ faults
    def _collective(self, what: str, run: Callable[[], T]) -> T:
        self.collectives += 1
        try:
            return run()
        except RuntimeError as err:  # DistBackendError / DistNetworkError: a peer closed or timed out
            raise RankFailure(self._diagnose(what, err)) from None

    def _beats(self) -> dict[int, dict[str, Any]]:
        beats = {}
        for rank in range(self.size):
            key = _KEY.format(rank)
            if rank != self.rank and self._store.check([key]):
                beats[rank] = json.loads(self._store.get(key))
        return beats

    def _diagnose(self, what: str, err: RuntimeError) -> str:
        """Which ranks are at fault: silent ones (dead or frozen) and live ones that never got here."""
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        waited = f"rank {self.rank} stopped waiting for them in {what} ({self.doing})"
        if self._store is None:
            return f"{what} failed on rank {self.rank} ({self.doing}): {cause}"
        try:
            before = self._beats()
            time.sleep(3 * HEARTBEAT_S)
            after = self._beats()
        except (RuntimeError, OSError) as store_err:
            return f"{waited}, and the run's rendezvous store cannot be reached ({store_err}); its host is gone"
        culprits = []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            now = after.get(rank)
            if now is None:
                culprits.append(f"rank {rank} never reported in (did it start?)")
            elif before.get(rank, {}).get("beat") == now["beat"]:
                culprits.append(f"rank {rank} stopped responding during {now['doing']} (its process died or is frozen)")
            elif now["collectives"] < self.collectives:
                culprits.append(f"rank {rank} is alive but stuck in {now['doing']} (it never reached this step)")
        if not culprits:
            return f"{what} failed on rank {self.rank} ({self.doing}): {cause}"
        return f"{'; '.join(culprits)}; {waited}"

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if not self.distributed:
            return tensor
        moved = tensor.to(self.device)
        self._collective("all_reduce", lambda: dist.all_reduce(moved))
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's `tensor` (the same shape on every rank), in rank order."""
        if not self.distributed:
            return [tensor]
        moved = tensor.to(self.device)
        out = [torch.empty_like(moved) for _ in range(self.size)]
        self._collective("all_gather", lambda: dist.all_gather(out, moved))
        return [t.to(tensor.device) for t in out]

    def all_gather_object(self, obj: T) -> list[T]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        self._collective("all_gather_object", lambda: dist.all_gather_object(out, obj))
        return out

    def gather_object(self, obj: T) -> list[T] | None:
        """Every rank's `obj` on rank 0 (in rank order); None elsewhere."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_main else None
        self._collective("gather_object", lambda: dist.gather_object(obj, out, dst=0))
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (what the others pass is ignored)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        self._collective("broadcast_object_list", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0 alone, its result on every rank; if it fails there, every rank stops.

        Rank 0 raises the error itself; the others raise `RankZeroFailed` (rank 0 reports it),
        so no rank is left waiting in a collective for a rank that gave up.
        """
        if not self.distributed:
            return fn()
        error: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - any failure there must stop every rank
                error = err
        ok, result = self.broadcast_object((error is None, result if error is None else None))
        if error is not None:
            raise error
        if not ok:
            raise RankZeroFailed("rank 0 failed (it says why)")
        return result

    def check_same(self, what: str, value: dict[str, Any]) -> None:
        """Refuse to start unless every rank has the same `value` (e.g. the resolved config).

        Ranks parse their own command line and config file and load their own data, so a
        different file or dataset on one machine would silently train something else.
        """
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        gathered = self.all_gather_object((digest, value))
        reference_digest, reference = gathered[0]
        differ = [
            f"rank {rank} differs from rank 0 in {', '.join(_differing_keys(reference, rank_value))}"
            for rank, (rank_digest, rank_value) in enumerate(gathered)
            if rank_digest != reference_digest
        ]
        if differ:
            raise ValueError(
                f"the ranks disagree on the {what}: {'; '.join(differ)}. Start every rank with the same "
                "command line, config file, data and Esper version"
            )

    # ------------------------------------------------------------------ data parallel
    def reduce_gradients(
        self, params: Iterable[nn.Parameter], count: int, extras: Sequence[float] = (), fill_missing: bool = False
    ) -> list[float]:
        """Make every rank's gradients the global batch's: sum of (local count / global count) x local grad.

        Each rank's loss is a mean over its `count` samples, so weighting by its share gives
        exactly the gradient of the mean over the global batch, also when shares differ.
        `extras` (numbers that are means over the local samples, e.g. logged losses) ride
        in the same collective and come back as global means. Parameters without a gradient
        are left alone (they have none on any rank: the replicas are identical), or given
        zeros with `fill_missing` (a rank with no samples in this step still takes part).
        """
        if not self.distributed:
            return list(extras)
        params = [p for p in params if p.grad is not None or fill_missing]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        local = torch.tensor([*extras, 1.0], dtype=torch.float32, device=self.device)
        flat = torch.cat([g.detach().reshape(-1).to(self.device, torch.float32) for g in grads] + [local])
        flat.mul_(count)
        self.all_reduce_(flat)
        flat.div_(flat[-1].clone())
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            value = flat[offset : offset + grad.numel()].view_as(grad).to(grad.device, grad.dtype)
            offset += grad.numel()
            if param.grad is None:
                param.grad = value
            else:
                param.grad.copy_(value)
        return flat[offset:-1].tolist()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (a new seed, the model at the start)."""
        if not self.distributed:
            return
        tensors = [value for value in module.state_dict().values() if isinstance(value, Tensor)]  # not extra state
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.device)
            self._collective("broadcast", lambda flat=flat: dist.broadcast(flat, src=0))
            offset = 0
            for tensor in group:
                tensor.detach().copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()

    def average_buffers(self, module: nn.Module) -> None:
        """Average BatchNorm running statistics over the ranks (each saw only its share of the batches)."""
        if not self.distributed:
            return
        stats = [
            buffer
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for buffer in (m.running_mean, m.running_var)
            if buffer is not None
        ]
        if not stats:
            return
        flat = torch.cat([b.reshape(-1).to(torch.float64) for b in stats])
        self.all_reduce_(flat).div_(self.size)
        offset = 0
        for buffer in stats:
            buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()

    def check_replicas(self, module: nn.Module) -> None:
        """Stop if the replicas of `module` have drifted apart (they must stay identical)."""
        if not self.distributed:
            return
        sums = torch.stack([t.detach().double().sum() for t in module.state_dict().values()
                            if isinstance(t, Tensor) and t.is_floating_point()])  # fmt: skip
        gathered = self.all_gather(sums.to(self.device))
        drifted = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
        if drifted:
            raise RankFailure(
                f"the model on rank(s) {drifted} differs from rank 0's: the replicas drifted apart "
                "(a non-deterministic operation or a fault); continue from the last checkpoint"
            )


def _differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ, one level into nested dicts ("config.envs")."""
    keys = []
    for key in sorted(a.keys() | b.keys()):
        left, right = a.get(key), b.get(key)
        if left == right:
            continue
        if isinstance(left, dict) and isinstance(right, dict) and not prefix:
            keys += _differing_keys(left, right, f"{key}.")
        else:
            keys.append(prefix + key)
    return keys


def init_world(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """This process's `World`, from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    Without torchrun, or with one process, there is nothing to join: `World.single()`.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if timeout_s <= 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    if size <= 1:
        resolve_backend(backend)  # a bad --dist-backend is refused in one process too
        return World.single()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = resolve_backend(backend)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    world = World(rank, size, local_rank, backend, device, timeout_s)
    world._start_heartbeat()
    return world


class MainRankDecides:
    """A `Controller` whose decisions are rank 0's, broadcast before any rank applies them.

    On rank 0 it wraps the real controller; elsewhere `controller` is None and it only
    receives. Every rank then applies the same actions (the one way they stay in step).
    """

    def __init__(self, controller: Controller | None, world: World) -> None:
        if world.is_main and controller is None:
            raise ValueError("rank 0 needs the controller that decides")
        self.controller = controller
        self.world = world

    def decide(self, signals: EpochSignals) -> list[Action]:
        actions = self.controller.decide(signals) if self.world.is_main else None
        return self.world.broadcast_object(actions)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.controller is None else self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.controller is not None:
            self.controller.load_state_dict(state)
