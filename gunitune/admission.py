"""Admission control of one worker: slots sized to the pool, and the CPU lane.

Requests wait here, not inside SQLAlchemy's QueuePool. Measured on the seed's
setup: when many requests wait in the pool, overflow connections closed on
return are not reopened for the waiters (15 live connections decay to 5) and
throughput falls to 0.67-0.82 of the limit; a request that waits past the
pool's timeout becomes a 500. Here a request waits for a slot at most
``queue_timeout`` (below the pool's timeout) and is otherwise refused, cleanly.

CPU-bound requests also pass the CPU lane, ``cpu_concurrency`` at a time, and
give the event loop a turn before they start, so accepts, IO results and the
heartbeat are not starved by a queue of CPU work. A request waiting in the lane
holds no database connection and was accepted by a gate that sized the worker's
CPU work, so it waits its turn up to ``lane_timeout`` (the heartbeat timeout by
default), not the pool-derived ``queue_timeout``: with a burst of 2-second
requests the fifteenth waits 28 s, and refusing it would turn slow into failed.

The semaphores, the clock and the yield are injected: gevent's in a worker,
plain threading ones in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Admission", "Rejected", "Semaphore", "Ticket"]


class Semaphore(Protocol):
    """What admission needs of a semaphore (gevent's and threading's both fit)."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...


class Rejected(Exception):
    """No slot within the queue timeout; carries what the 503 needs."""

    def __init__(self, reason: str, waited: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waited = waited


@dataclass
class Ticket:
    """A granted admission; give it back with :meth:`Admission.release`."""

    cpu_lane: bool
    waited: float
    admitted_at: float


def _gevent_semaphore(size: int) -> Semaphore:
    from gevent.lock import BoundedSemaphore

    semaphore: Semaphore = BoundedSemaphore(size)
    return semaphore


def _gevent_yield() -> None:
    import gevent

    # A timed sleep, not sleep(0): sleep(0) resumes us from the callback queue
    # without the loop polling IO or running timers in between.
    gevent.sleep(0.001)


class Admission:
    """Slots for requests in flight (``capacity``) plus the CPU lane (``cpu_concurrency``)."""

    def __init__(
        self,
        capacity: int,
        *,
        cpu_concurrency: int = 1,
        queue_timeout: float = 15.0,
        lane_timeout: float | None = None,
        semaphore_factory: Callable[[int], Semaphore] = _gevent_semaphore,
        clock: Callable[[], float] = time.monotonic,
        yield_to_loop: Callable[[], None] = _gevent_yield,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} is invalid: expected an integer >= 1")
        if cpu_concurrency < 1:
            raise ValueError(
                f"cpu_concurrency={cpu_concurrency} is invalid: expected an integer >= 1"
            )
        self.capacity = capacity
        self.cpu_concurrency = cpu_concurrency
        self.queue_timeout = queue_timeout
        self.lane_timeout = queue_timeout if lane_timeout is None else lane_timeout
        self._slots = semaphore_factory(capacity)
        self._lane = semaphore_factory(cpu_concurrency)
        self._clock = clock
        self._yield = yield_to_loop
        self.heartbeat = heartbeat
        self.in_flight = 0
        self.waiting = 0
        self.cpu_running = 0
        self.cpu_waiting = 0
        self.admitted = 0
        self.rejected = 0

    def admit(self, *, cpu_bound: bool = False) -> Ticket:
        """Wait for a slot (and the CPU lane if ``cpu_bound``); raise :class:`Rejected`."""
        start = self._clock()
        deadline = start + max(self.queue_timeout, self.lane_timeout)
        self.waiting += 1
        try:
            got = self._slots.acquire(timeout=self.queue_timeout)
        finally:
            self.waiting -= 1
        if not got:
            self.rejected += 1
            raise Rejected("no request slot free", self._clock() - start)
        if cpu_bound:
            self.cpu_waiting += 1
            try:
                got = self._lane.acquire(timeout=max(0.0, deadline - self._clock()))
            except BaseException:
                # Interrupted while waiting (a request deadline, GreenletExit):
                # the slot taken above has no ticket yet to give it back.
                self._slots.release()
                raise
            finally:
                self.cpu_waiting -= 1
            if not got:
                self._slots.release()
                self.rejected += 1
                raise Rejected("CPU lane busy", self._clock() - start)
            self.cpu_running += 1
            try:
                if self.heartbeat is not None:
                    self.heartbeat()
                self._yield()
            except BaseException:
                # No ticket exists yet, so nobody else could give these back.
                self.cpu_running -= 1
                self._lane.release()
                self._slots.release()
                raise
        self.in_flight += 1
        self.admitted += 1
        now = self._clock()
        return Ticket(cpu_lane=cpu_bound, waited=now - start, admitted_at=now)

    def release(self, ticket: Ticket) -> None:
        """Give the slot (and the lane) back."""
        try:
            if ticket.cpu_lane:
                self.cpu_running -= 1
                self._lane.release()
        finally:
            self.in_flight -= 1
            self._slots.release()
        if ticket.cpu_lane and self.heartbeat is not None:
            self.heartbeat()

    def stats(self) -> dict[str, int | float]:
        """Counters for :meth:`gunitune.GuniTune.stats`."""
        return {
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "cpu_concurrency": self.cpu_concurrency,
            "cpu_running": self.cpu_running,
            "cpu_waiting": self.cpu_waiting,
            "admitted": self.admitted,
            "rejected": self.rejected,
            "queue_timeout": self.queue_timeout,
            "lane_timeout": self.lane_timeout,
        }
