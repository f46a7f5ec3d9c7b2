"""One worker's limiter: database lanes, the CPU lane, and the proof of progress.

It enforces what :mod:`gunitune.core.lanes` decides, as a Netflix ``Limiter``
does for its ``Limit``: :meth:`Limiter.acquire` returns a :class:`Ticket` (the
``Listener`` a request holds), :meth:`Limiter.release` gives it back. One
instance per worker process, created once by the worker after its app loaded
(or by the extension itself outside a gunitune worker).

Requests wait here, in user space, not inside SQLAlchemy's QueuePool: there
are at most as many slots as the pool has connections, fewer while the
adaptive limit (:mod:`gunitune._adaptive_db`) finds the database's queries
slowed by each other. A request holds no
database slot while it waits for the CPU lane, and never holds one it did not
ask for. By default a request waits as long as it takes (as it would have in
the kernel's listen queue); ``GUNITUNE_QUEUE_TIMEOUT`` bounds the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gunitune._adaptive_db import AdaptiveDb
from gunitune._sync import Event, primitives
from gunitune.core.adaptive import PROBE_LONGEST, DatabaseLimit
from gunitune.core.lanes import CPU, DB_LANES, FAST, LANES, LaneScheduler, Waiter, db_shares
from gunitune.core.metrics import DB_UNAVAILABLE, QUEUE_TIMEOUT, SHUTTING_DOWN
from gunitune.core.resolve import Resolved

__all__ = ["ClientGone", "Limiter", "Moved", "Rejected", "Ticket"]


# Longest a CPU-bound request lets fast database requests in flight finish
# first: a few loop turns, enough for their round trips on a near database.
_FAST_FIRST_SECONDS = 0.01


class Rejected(Exception):
    """No slot within the queue timeout, the worker is shutting down, or the
    database was away for longer than the outage wait.

    ``code`` names the cause in a word (``queue_timeout``, ``shutting_down``,
    ``db_unavailable``) for the metrics' ``reason`` label; ``reason`` says it
    in a sentence.
    """

    def __init__(self, reason: str, waited: float, lane: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waited = waited
        self.lane = lane
        self.code = code

    @property
    def outage(self) -> bool:
        """Refused because the database is away."""
        return self.code == DB_UNAVAILABLE


class ClientGone(Exception):
    """The client closed its connection while its request was queued: do not serve it."""


class Moved(Exception):
    """The request's route changed lanes while it was queued: acquire again."""


@dataclass(slots=True)
class Ticket:
    """A granted admission; give it back with :meth:`Limiter.release`."""

    lane: str
    db: bool
    cpu: bool
    waited: float
    concurrent: int = 0  # database slots in use in this worker once it got its own


class Limiter:
    """Database lanes (shares of the pool) and the CPU lane of one worker."""

    def __init__(
        self,
        resolved: Resolved,
        *,
        heartbeat: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        event_factory: Callable[[], Event] | None = None,
        yield_to_loop: Callable[[], None] | None = None,
    ) -> None:
        settings = resolved.settings
        self.resolved = resolved
        self.queue_timeout: float | None = settings.queue_timeout
        self.db = LaneScheduler(resolved.db_capacity, db_shares(settings.fast_share))
        self.cpu = LaneScheduler(settings.cpu_concurrency, {CPU: 1.0})
        event, yielder, lock = primitives()
        self._event = event_factory or event
        self._yield = yield_to_loop or yielder
        self._lock = lock
        self._clock = clock
        # The lanes share one database, so one limit governs them all: a
        # limit per lane would see the other lane's queries as noise.
        self.adaptive: AdaptiveDb | None = None
        if settings.adaptive == "on":
            # A probe queues requests: with a queue timeout it stays well inside it.
            longest = PROBE_LONGEST if self.queue_timeout is None else self.queue_timeout / 4
            limit = DatabaseLimit(resolved.db_capacity, probe_longest=min(PROBE_LONGEST, longest))
            self.adaptive = AdaptiveDb(limit, self.db, self._lock, self._clock)
        self._heartbeat = heartbeat
        # The arbiter only needs a touch well within its timeout; a touch per
        # request is a syscall on the hot path.
        self._beat_every = max(0.05, min(1.0, resolved.heartbeat_timeout / 10))
        self._last_beat = float("-inf")
        self.refusing = False
        self.fast_in_flight = 0  # fast-lane requests running that are not CPU-bound
        self.counts: dict[str, dict[str, int]] = {
            lane: {"admitted": 0, "rejected": 0, "client_gone": 0} for lane in LANES
        }
        self.gate_stats: Callable[[], dict[str, Any]] | None = None

    def acquire(
        self,
        lane: str,
        *,
        cpu: bool = False,
        route: str = "",
        client_gone: Callable[[], bool] | None = None,
    ) -> Ticket:
        """Wait for the CPU lane (if ``cpu``), then a slot of ``lane`` (if a database lane).

        Raises :class:`Rejected`, :class:`ClientGone` or :class:`Moved`.
        """
        start = self._clock()
        deadline = None if self.queue_timeout is None else start + self.queue_timeout
        db = lane in DB_LANES
        if cpu:
            self._wait(self.cpu, CPU, route, start, deadline, client_gone)
            try:
                self.progress()
                self._yield()
                # Fast database work in flight goes first: each of its round
                # trips would otherwise wait for a whole CPU-bound request.
                # Bounded, so a steady stream of fast requests cannot starve it.
                until = self._clock() + _FAST_FIRST_SECONDS
                while self.fast_in_flight and self._clock() < until:
                    self._yield()
            except BaseException:
                self._give_back(self.cpu, CPU)
                raise
        if db:
            try:
                self._wait(self.db, lane, route, start, deadline, client_gone)
            except BaseException:
                if cpu:
                    self._give_back(self.cpu, CPU)
                raise
        with self._lock:
            self.counts[CPU if cpu else lane]["admitted"] += 1
            if lane == FAST and not cpu:
                self.fast_in_flight += 1
            concurrent = self.db.used if db else 0
        return Ticket(lane, db, cpu, self._clock() - start, concurrent)

    def learn(self, ticket: Ticket, route: str, hold: float, dropped: bool) -> None:
        """Feed the database limit one request that held a connection ``hold`` seconds.

        Call before :meth:`release` (the sample counts the slot it still holds).
        ``dropped``: its database work failed for the database's sake.
        """
        if self.adaptive is not None and ticket.db:
            self.adaptive.learn(ticket.lane, ticket.concurrent, route, hold, dropped)

    def release(self, ticket: Ticket) -> None:
        """Give the slots of ``ticket`` back, each to the next waiter chosen for it."""
        if ticket.lane == FAST and not ticket.cpu:
            with self._lock:
                self.fast_in_flight -= 1
        try:
            if ticket.db:
                self._give_back(self.db, ticket.lane)
                if self.adaptive is not None:
                    # A slot held without a query teaches nothing, but the time
                    # it took may end a probe, which otherwise waits for samples.
                    self.adaptive.tick()
        finally:
            if ticket.cpu:
                self._give_back(self.cpu, CPU)
                self.progress()

    def reroute(self, route: str, db_lane: str, cpu: bool) -> int:
        """Wake the queued requests of ``route`` so they queue again in its new lanes."""
        moved = 0
        # A route that became CPU-bound leaves the database queues too: its
        # requests must pass the CPU lane first.
        db_keep = None if cpu else db_lane
        for scheduler, keep in ((self.db, db_keep), (self.cpu, CPU if cpu else None)):
            with self._lock:
                waiters = scheduler.take_route(route, keep)
            for waiter in waiters:
                waiter.moved = True
                waiter.token.set()
            moved += len(waiters)
        return moved

    def hold_db(self, held: bool) -> None:
        """Hold the database lanes (the database is away) or let them go on."""
        with self._lock:
            granted = self.db.hold(held)
        for waiter in granted:
            waiter.token.set()

    def refuse_db_waiting(self, cutoff: float) -> int:
        """503 for the database requests queued since ``cutoff`` or earlier (an outage)."""
        with self._lock:
            waiters = self.db.refuse_since(cutoff)
        for waiter in waiters:
            waiter.token.set()
        return len(waiters)

    def refuse_waiting(self) -> int:
        """Worker shutdown: every queued request, and every later one, gets a 503."""
        self.refusing = True
        with self._lock:
            waiters = self.db.refuse_all() + self.cpu.refuse_all()
        for waiter in waiters:
            waiter.token.set()
        return len(waiters)

    def progress(self) -> None:
        """Tell the arbiter the worker is alive, at most once per ``_beat_every`` seconds."""
        if self._heartbeat is None:
            return
        now = self._clock()
        if now - self._last_beat >= self._beat_every:
            self._last_beat = now
            self._heartbeat()

    def waiting(self) -> int:
        """Requests queued in any lane."""
        return self.db.waiting() + self.cpu.waiting()

    def stats(self) -> dict[str, Any]:
        """Per-lane slots, queues and counters."""
        db = self.db.snapshot()
        cpu = self.cpu.snapshot()[CPU]
        lanes: dict[str, Any] = {}
        for lane in LANES:
            figures: dict[str, Any] = dict(self.counts[lane])
            if lane in db:
                figures.update(db[lane], limit=self.db.limit)
            elif lane == CPU:
                figures.update(cpu, limit=self.cpu.limit)
            lanes[lane] = figures
        stats: dict[str, Any] = {
            "db_limit": self.db.limit,
            "adaptive": None if self.adaptive is None else self.adaptive.snapshot(),
            "db_in_use": self.db.used,
            "db_capacity_source": self.resolved.capacity_source,
            "cpu_concurrency": self.cpu.limit,
            "queue_timeout": self.queue_timeout,
            "refusing": self.refusing,
            "lanes": lanes,
        }
        if self.gate_stats is not None:
            stats["gate"] = self.gate_stats()
        return stats

    def _wait(
        self,
        scheduler: LaneScheduler,
        lane: str,
        route: str,
        start: float,
        deadline: float | None,
        client_gone: Callable[[], bool] | None,
    ) -> None:
        with self._lock:
            if self.refusing:
                self.counts[lane]["rejected"] += 1
                raise Rejected("the worker is shutting down", 0.0, lane, SHUTTING_DOWN)
            if scheduler.try_acquire(lane):
                return
            waiter = Waiter(lane, route, self._event(), since=start)
            scheduler.enqueue(waiter)
        try:
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            waiter.token.wait(timeout)
        except BaseException:
            # Interrupted (GreenletExit, a deadline): a slot handed over meanwhile
            # has no ticket yet, so nobody else could give it back.
            self._abandon(scheduler, waiter)
            raise
        if waiter.granted:
            try:
                gone = client_gone is not None and client_gone()
            except BaseException:
                self._give_back(scheduler, waiter.lane)
                raise
            if gone:
                self._give_back(scheduler, waiter.lane)
                self.counts[lane]["client_gone"] += 1
                raise ClientGone(route)
            return
        self._abandon(scheduler, waiter)
        if waiter.moved:
            raise Moved(route)
        self.counts[lane]["rejected"] += 1
        if waiter.outage:
            reason, code = "the database is unavailable", DB_UNAVAILABLE
        elif waiter.refused:
            reason, code = "the worker is shutting down", SHUTTING_DOWN
        else:
            reason, code = "no slot free within GUNITUNE_QUEUE_TIMEOUT", QUEUE_TIMEOUT
        raise Rejected(reason, self._clock() - start, lane, code)

    def _abandon(self, scheduler: LaneScheduler, waiter: Waiter) -> None:
        # Under the lock: with threads, a release may hand this waiter a slot
        # between the check and the cancel, and that slot would be lost.
        with self._lock:
            if not waiter.granted:
                scheduler.cancel(waiter)
                return
        self._give_back(scheduler, waiter.lane)

    def _give_back(self, scheduler: LaneScheduler, lane: str) -> None:
        with self._lock:
            waiter = scheduler.release(lane)
        if waiter is not None:
            waiter.token.set()
