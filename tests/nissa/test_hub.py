import logging
import threading
import time

import pytest

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import TelemetryHub, ThreadedOutput


def _event(epoch: int = 0) -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.EPOCH_COMPLETED, epoch=epoch)


class Recorder:
    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []
        self.closed = 0

    def handle(self, event: TelemetryEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed += 1


class Failing:
    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def handle(self, event: TelemetryEvent) -> None:
        self.calls += 1
        raise RuntimeError("disk on fire")

    def close(self) -> None:
        self.closed = True


class Flaky:
    """Fails every other call: never reaches a streak of failures."""

    def __init__(self) -> None:
        self.calls = 0

    def handle(self, event: TelemetryEvent) -> None:
        self.calls += 1
        if self.calls % 2:
            raise ValueError("flaky")


class HandleOnly:
    def __init__(self) -> None:
        self.count = 0

    def handle(self, event: TelemetryEvent) -> None:
        self.count += 1


def test_fan_out_to_every_output_and_callable():
    hub = TelemetryHub()
    a, b = Recorder(), Recorder()
    hub.add_output(a)
    hub.add_output(b)
    first, second = _event(1), _event(2)
    hub.emit(first)
    hub(second)
    assert a.events == [first, second]
    assert b.events == [first, second]


def test_an_output_sees_only_the_events_after_it_joins():
    hub = TelemetryHub()
    hub.emit(_event(0))  # no output yet: nothing to deliver, nothing kept
    late = Recorder()
    hub.add_output(late)
    hub.emit(_event(1))
    assert [event.epoch for event in late.events] == [1]


def test_failing_output_disabled_after_streak_others_unaffected(caplog):
    hub = TelemetryHub(max_failures=3)
    failing, good = Failing(), Recorder()
    hub.add_output(failing)
    hub.add_output(good)
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        for epoch in range(10):
            hub.emit(_event(epoch))
    assert failing.calls == 3
    assert len(good.events) == 10
    assert hub.outputs == [good]
    warnings = [r for r in caplog.records if r.name == "esper.nissa"]
    assert len(warnings) == 3  # one line per failure, none after disabling
    assert all("Failing" in r.getMessage() and "disk on fire" in r.getMessage() for r in warnings)
    assert "disabling" in warnings[-1].getMessage()
    assert all(r.exc_info is None for r in warnings)


def test_success_resets_failure_streak(caplog):
    hub = TelemetryHub(max_failures=2)
    flaky = Flaky()
    hub.add_output(flaky)
    with caplog.at_level(logging.CRITICAL, logger="esper.nissa"):
        for epoch in range(10):
            hub.emit(_event(epoch))
    assert flaky.calls == 10
    assert hub.outputs == [flaky]


def test_close_is_idempotent_and_closes_disabled_outputs(caplog):
    failing, good, plain = Failing(), Recorder(), HandleOnly()
    with caplog.at_level(logging.CRITICAL, logger="esper.nissa"):
        with TelemetryHub(max_failures=1) as hub:
            for output in (failing, good, plain):
                hub.add_output(output)
            hub.emit(_event())
        hub.close()
    assert good.closed == 1
    assert failing.closed
    hub.emit(_event())  # ignored after close
    assert len(good.events) == 1
    with pytest.raises(RuntimeError):
        hub.add_output(Recorder())


def test_failing_close_does_not_escape(caplog):
    class BadClose(Recorder):
        def close(self) -> None:
            raise OSError("nope")

    hub = TelemetryHub()
    after = Recorder()
    hub.add_output(BadClose())
    hub.add_output(after)
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        hub.close()
    assert after.closed == 1
    assert any("nope" in r.getMessage() for r in caplog.records)


class Blocking(Recorder):
    """Blocks in handle until released, so the queue behind it fills up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def handle(self, event: TelemetryEvent) -> None:
        self.entered.set()
        assert self.release.wait(timeout=10)
        super().handle(event)


def test_threaded_output_delivers_in_order_and_closes_inner():
    inner = Recorder()
    threaded = ThreadedOutput(inner)
    events = [_event(i) for i in range(500)]
    for event in events:
        threaded.handle(event)
    threaded.close()
    assert inner.events == events
    assert inner.closed == 1
    assert threaded.dropped == 0


def test_threaded_output_drops_when_full_and_drains_on_close():
    inner = Blocking()
    threaded = ThreadedOutput(inner, max_queue=3)
    threaded.handle(_event(0))
    assert inner.entered.wait(timeout=5)  # worker holds event 0; the queue is empty
    start = time.perf_counter()
    for epoch in range(1, 11):
        threaded.handle(_event(epoch))
    assert time.perf_counter() - start < 1.0  # never blocked by the stuck output
    assert threaded.dropped == 7
    inner.release.set()
    threaded.close()
    assert [e.epoch for e in inner.events] == [0, 1, 2, 3]
    threaded.handle(_event(99))  # after close: dropped, not raised
    assert threaded.dropped == 8


def test_threaded_output_survives_failing_inner(caplog):
    with caplog.at_level(logging.WARNING, logger="esper.nissa"):
        failing = Failing()
        threaded = ThreadedOutput(failing, max_failures=2)
        for epoch in range(5):
            threaded.handle(_event(epoch))
        threaded.close()
    assert failing.calls == 2
    assert failing.closed


def test_threaded_output_behind_hub():
    inner = Recorder()
    with TelemetryHub() as hub:
        hub.add_output(ThreadedOutput(inner))
        for epoch in range(20):
            hub(_event(epoch))
    assert [e.epoch for e in inner.events] == list(range(20))
    assert inner.closed == 1
