"""Fan telemetry events out to outputs without ever letting an output hurt training."""

from __future__ import annotations

import logging
import queue
import threading
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from esper.leyline import TelemetryEvent

logger = logging.getLogger("esper.nissa")

DEFAULT_MAX_FAILURES = 3


@runtime_checkable
class TelemetryOutput(Protocol):
    """Anything that consumes events. It may also define ``close() -> None``;
    the hub calls it when present."""

    def handle(self, event: TelemetryEvent) -> None: ...


def _close_quietly(output: object) -> None:
    close = getattr(output, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - closing an output must not break shutdown
        logger.warning(
            "telemetry output %r failed to close: %s: %s", output, type(exc).__name__, exc
        )


class _GuardedOutput:
    """Calls an output, swallowing its errors and disabling it after a failure streak.

    Each failure logs one warning line (no traceback, so a broken output cannot
    flood the training log); ``max_failures`` consecutive failures disable it.
    """

    def __init__(self, output: TelemetryOutput, max_failures: int) -> None:
        self.output = output
        self.max_failures = max_failures
        self.failures = 0
        self.disabled = False

    def handle(self, event: TelemetryEvent) -> None:
        try:
            self.output.handle(event)
        except Exception as exc:  # noqa: BLE001 - outputs must never break training
            self.failures += 1
            self.disabled = self.failures >= self.max_failures
            logger.warning(
                "telemetry output %r failed on %s (%d/%d consecutive)%s: %s: %s",
                self.output,
                event.event_type.value,
                self.failures,
                self.max_failures,
                "; disabling it" if self.disabled else "",
                type(exc).__name__,
                exc,
            )
        else:
            self.failures = 0


class TelemetryHub:
    """Single ``on_telemetry`` callback that fans each event out to every output.

    The hub itself is callable, so ``hub`` can be passed wherever a
    ``Callable[[TelemetryEvent], None]`` is expected.
    """

    def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self._max_failures = max_failures
        self._outputs: list[_GuardedOutput] = []
        self._active: list[_GuardedOutput] = []
        self._closed = False

    def add_output(self, output: TelemetryOutput) -> None:
        if self._closed:
            raise RuntimeError("cannot add an output to a closed TelemetryHub")
        guarded = _GuardedOutput(output, self._max_failures)
        self._outputs.append(guarded)
        self._active.append(guarded)

    @property
    def outputs(self) -> list[TelemetryOutput]:
        """Outputs still receiving events (disabled ones are left out)."""
        return [guarded.output for guarded in self._active]

    def emit(self, event: TelemetryEvent) -> None:
        if not self._active:
            return
        for guarded in self._active:
            guarded.handle(event)
        if any(guarded.disabled for guarded in self._active):
            self._active = [guarded for guarded in self._active if not guarded.disabled]

    __call__ = emit

    def close(self) -> None:
        """Close every output once, disabled ones included; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._active = []
        for guarded in self._outputs:
            _close_quietly(guarded.output)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_STOP = object()


class ThreadedOutput:
    """Runs a slow output on a daemon worker thread so training never waits on it.

    Events go through a bounded queue; when it is full the event is dropped and
    counted in ``dropped`` rather than blocking the training loop. The inner
    output is guarded like a hub output (errors logged, disabled after a streak).
    """

    def __init__(
        self,
        inner: TelemetryOutput,
        max_queue: int = 10000,
        max_failures: int = DEFAULT_MAX_FAILURES,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.inner = inner
        self.dropped = 0
        self._guarded = _GuardedOutput(inner, max_failures)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._worker = threading.Thread(
            target=self._run, name=f"esper-telemetry-{type(inner).__name__}", daemon=True
        )
        self._worker.start()

    def __repr__(self) -> str:
        return f"ThreadedOutput({self.inner!r})"

    def handle(self, event: TelemetryEvent) -> None:
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if not self._guarded.disabled:
                self._guarded.handle(item)  # type: ignore[arg-type]

    def close(self) -> None:
        """Deliver everything already queued, stop the worker, then close the inner output."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # blocks only until the worker frees a slot
        self._worker.join()
        if self.dropped:
            logger.warning("telemetry output %r dropped %d events (queue full)", self, self.dropped)
        _close_quietly(self.inner)
