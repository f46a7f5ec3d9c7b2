"""Admission: request slots, the CPU lane, rejection, counters (threading semaphores)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from gunitune.admission import Admission, Rejected, Semaphore, Ticket

SHORT = 0.05  # a real queue timeout short enough for tests that must time out


class FakeClock:
    """A clock the test (or a fake semaphore) moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    """A callable that counts its calls (heartbeat, yield)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class ScriptedSemaphore:
    """A semaphore whose acquire returns what the test says, moving the clock as if it waited."""

    def __init__(self, clock: FakeClock, grant: bool, waits: float = 0.0) -> None:
        self.clock = clock
        self.grant = grant
        self.waits = waits
        self.timeouts: list[float | None] = []
        self.released = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        self.clock.now += self.waits
        return self.grant

    def release(self) -> None:
        self.released += 1


def scripted(slots: ScriptedSemaphore, lane: ScriptedSemaphore) -> Callable[[int], Semaphore]:
    """A factory handing out ``slots`` first (capacity), then ``lane`` (cpu_concurrency)."""
    made = iter([slots, lane])
    return lambda size: next(made)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (set by another thread) without a fixed sleep."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.001)


def make(
    capacity: int = 2,
    *,
    cpu_concurrency: int = 1,
    queue_timeout: float = SHORT,
    clock: Callable[[], float] = time.monotonic,
    heartbeat: Callable[[], None] | None = None,
    yield_to_loop: Callable[[], None] | None = None,
) -> Admission:
    return Admission(
        capacity,
        cpu_concurrency=cpu_concurrency,
        queue_timeout=queue_timeout,
        semaphore_factory=threading.BoundedSemaphore,
        clock=clock,
        yield_to_loop=yield_to_loop or Counter(),
        heartbeat=heartbeat,
    )


def test_capacity_respected_then_rejected() -> None:
    admission = make(capacity=2)
    first = admission.admit()
    admission.admit()
    with pytest.raises(Rejected) as info:
        admission.admit()
    assert info.value.reason == "no request slot free"
    assert str(info.value) == "no request slot free"
    assert info.value.waited >= SHORT * 0.9  # it did wait the queue timeout
    stats = admission.stats()
    assert (stats["in_flight"], stats["admitted"], stats["rejected"], stats["waiting"]) == (
        2,
        2,
        1,
        0,
    )
    admission.release(first)
    admission.admit()  # the released slot is usable again
    assert admission.stats()["in_flight"] == 2


def test_waiter_is_admitted_when_a_slot_frees() -> None:
    admission = make(capacity=1, queue_timeout=10.0)
    held = admission.admit()
    got: list[Ticket] = []
    waiter = threading.Thread(target=lambda: got.append(admission.admit()))
    waiter.start()
    wait_until(lambda: admission.waiting == 1)
    assert admission.stats()["waiting"] == 1
    admission.release(held)
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert len(got) == 1
    assert admission.stats()["waiting"] == 0
    assert admission.stats()["in_flight"] == 1
    assert admission.rejected == 0


def test_rejection_with_refusing_semaphore_reports_wait() -> None:
    clock = FakeClock()
    slots = ScriptedSemaphore(clock, grant=False, waits=2.5)
    lane = ScriptedSemaphore(clock, grant=True)
    admission = Admission(
        4,
        queue_timeout=2.5,
        semaphore_factory=scripted(slots, lane),
        clock=clock,
        yield_to_loop=Counter(),
    )
    with pytest.raises(Rejected) as info:
        admission.admit(cpu_bound=True)
    assert slots.timeouts == [2.5]
    assert lane.timeouts == []  # never reached the lane
    assert info.value.waited == pytest.approx(2.5)
    assert admission.stats()["rejected"] == 1
    assert admission.stats()["in_flight"] == 0
    assert slots.released == 0


def test_ticket_times_come_from_the_clock() -> None:
    clock = FakeClock(50.0)
    slots = ScriptedSemaphore(clock, grant=True, waits=0.75)
    lane = ScriptedSemaphore(clock, grant=True)
    admission = Admission(
        4,
        queue_timeout=5.0,
        semaphore_factory=scripted(slots, lane),
        clock=clock,
        yield_to_loop=Counter(),
    )
    ticket = admission.admit()
    assert ticket.cpu_lane is False
    assert ticket.waited == pytest.approx(0.75)
    assert ticket.admitted_at == pytest.approx(50.75)


def test_io_request_skips_the_lane_heartbeat_and_yield() -> None:
    beats, yields = Counter(), Counter()
    admission = make(heartbeat=beats, yield_to_loop=yields)
    ticket = admission.admit()
    assert ticket.cpu_lane is False
    admission.release(ticket)
    assert (beats.calls, yields.calls) == (0, 0)
    assert admission.stats()["cpu_running"] == 0


def test_cpu_lane_calls_heartbeat_and_yield() -> None:
    beats, yields = Counter(), Counter()
    admission = make(capacity=3, heartbeat=beats, yield_to_loop=yields)
    ticket = admission.admit(cpu_bound=True)
    assert ticket.cpu_lane is True
    assert (beats.calls, yields.calls) == (1, 1)
    stats = admission.stats()
    assert (stats["cpu_running"], stats["cpu_waiting"], stats["in_flight"]) == (1, 0, 1)
    admission.release(ticket)
    assert beats.calls == 2  # finishing CPU work is progress too
    assert yields.calls == 1
    assert (admission.cpu_running, admission.in_flight) == (0, 0)


def test_cpu_lane_without_heartbeat() -> None:
    yields = Counter()
    admission = make(yield_to_loop=yields, heartbeat=None)
    admission.release(admission.admit(cpu_bound=True))
    assert yields.calls == 1


def test_yield_happens_after_the_lane_is_held() -> None:
    admission: Admission
    seen: list[int] = []

    def yield_to_loop() -> None:
        seen.append(admission.cpu_running)

    admission = make(yield_to_loop=yield_to_loop)
    admission.admit(cpu_bound=True)
    assert seen == [1]


def test_lane_timeout_releases_the_slot() -> None:
    beats = Counter()
    admission = make(capacity=3, cpu_concurrency=1, heartbeat=beats)
    admission.admit(cpu_bound=True)  # holds the lane and one slot
    with pytest.raises(Rejected) as info:
        admission.admit(cpu_bound=True)
    assert info.value.reason == "CPU lane busy"
    stats = admission.stats()
    assert (stats["in_flight"], stats["cpu_running"], stats["cpu_waiting"]) == (1, 1, 0)
    assert stats["rejected"] == 1
    assert beats.calls == 1  # the refused request did not beat
    # The refused request's slot came back: two more IO requests fit, a third does not.
    admission.admit()
    admission.admit()
    with pytest.raises(Rejected, match="no request slot free"):
        admission.admit()


def test_lane_waits_only_for_what_is_left_of_the_queue_timeout() -> None:
    clock = FakeClock()
    slots = ScriptedSemaphore(clock, grant=True, waits=0.3)
    lane = ScriptedSemaphore(clock, grant=False, waits=0.7)
    admission = Admission(
        4,
        queue_timeout=1.0,
        semaphore_factory=scripted(slots, lane),
        clock=clock,
        yield_to_loop=Counter(),
    )
    with pytest.raises(Rejected) as info:
        admission.admit(cpu_bound=True)
    assert lane.timeouts == [pytest.approx(0.7)]
    assert info.value.waited == pytest.approx(1.0)
    assert slots.released == 1
    assert lane.released == 0


def test_lane_timeout_never_negative() -> None:
    clock = FakeClock()
    slots = ScriptedSemaphore(clock, grant=True, waits=2.0)  # already past the deadline
    lane = ScriptedSemaphore(clock, grant=True)
    admission = Admission(
        4,
        queue_timeout=1.0,
        semaphore_factory=scripted(slots, lane),
        clock=clock,
        yield_to_loop=Counter(),
    )
    admission.admit(cpu_bound=True)
    assert lane.timeouts == [0.0]


def test_cpu_waiting_counted_while_queued_for_the_lane() -> None:
    admission = make(capacity=3, cpu_concurrency=1, queue_timeout=10.0)
    held = admission.admit(cpu_bound=True)
    got: list[Ticket] = []
    waiter = threading.Thread(target=lambda: got.append(admission.admit(cpu_bound=True)))
    waiter.start()
    wait_until(lambda: admission.cpu_waiting == 1)
    assert admission.stats()["in_flight"] == 1  # the waiter holds a slot, not yet in flight
    admission.release(held)
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert [t.cpu_lane for t in got] == [True]
    assert (admission.cpu_waiting, admission.cpu_running, admission.in_flight) == (0, 1, 1)


def test_cpu_concurrency_two_runs_two_at_once() -> None:
    admission = make(capacity=5, cpu_concurrency=2)
    admission.admit(cpu_bound=True)
    admission.admit(cpu_bound=True)
    assert admission.cpu_running == 2
    with pytest.raises(Rejected, match="CPU lane busy"):
        admission.admit(cpu_bound=True)
    admission.admit()  # IO requests still pass
    assert admission.in_flight == 3


def test_stats_keys_and_values() -> None:
    admission = make(capacity=4, cpu_concurrency=2, queue_timeout=1.5)
    assert admission.stats() == {
        "capacity": 4,
        "in_flight": 0,
        "waiting": 0,
        "cpu_concurrency": 2,
        "cpu_running": 0,
        "cpu_waiting": 0,
        "admitted": 0,
        "rejected": 0,
        "queue_timeout": 1.5,
        "lane_timeout": 1.5,
    }
    admission.release(admission.admit())
    assert admission.stats()["admitted"] == 1
    assert admission.stats()["in_flight"] == 0


@pytest.mark.parametrize(
    ("capacity", "cpu_concurrency", "message"),
    [(0, 1, "capacity=0 is invalid"), (1, 0, "cpu_concurrency=0 is invalid")],
)
def test_invalid_construction(capacity: int, cpu_concurrency: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(capacity=capacity, cpu_concurrency=cpu_concurrency)


def test_double_release_is_caught_by_a_bounded_semaphore() -> None:
    admission = make(capacity=1)
    ticket = admission.admit()
    admission.release(ticket)
    with pytest.raises(ValueError):
        admission.release(ticket)


class Boom(Exception):
    """Raised by a failing heartbeat or yield (a gevent Timeout/GreenletExit in real life)."""


def _raise() -> None:
    raise Boom


def test_failing_yield_after_lane_acquired_gives_everything_back() -> None:
    admission = make(capacity=1, cpu_concurrency=1, yield_to_loop=_raise)
    with pytest.raises(Boom):
        admission.admit(cpu_bound=True)
    assert admission.stats()["cpu_running"] == 0
    admission.admit()  # the slot is free again


def test_failing_heartbeat_on_release_still_frees_the_slot() -> None:
    beats = Counter()
    admission = make(capacity=1, heartbeat=beats)
    ticket = admission.admit(cpu_bound=True)
    admission.heartbeat = _raise
    with pytest.raises(Boom):
        admission.release(ticket)
    assert admission.stats()["in_flight"] == 0
    admission.admit()


def test_lane_waits_up_to_its_own_timeout_not_the_queue_timeout() -> None:
    """A CPU-bound request queued behind others is slow, not refused."""
    import threading

    admission = Admission(
        2,
        cpu_concurrency=1,
        queue_timeout=0.05,
        lane_timeout=5.0,
        semaphore_factory=threading.BoundedSemaphore,
        yield_to_loop=lambda: None,
    )
    first = admission.admit(cpu_bound=True)
    granted = threading.Event()

    def second() -> None:
        admission.release(admission.admit(cpu_bound=True))
        granted.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    # Past the queue timeout the second request is still waiting, not refused.
    assert not granted.wait(0.2)
    assert admission.rejected == 0
    admission.release(first)
    assert granted.wait(5)
    waiter.join(5)
    assert admission.rejected == 0
