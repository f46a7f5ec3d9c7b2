"""Lanes: one worker's slots shared by routes of different speeds.

Pure scheduling, in the spirit of Netflix concurrency-limits' partitioned
limiter, with a queue instead of an immediate rejection:

* Each lane has a **share** of the slots. A lane whose requests hold fewer
  slots than its share is served first when a slot frees, so a fast query
  waits for one slot to free, never behind the whole queue of a slow route.
* Shares are **soft**: while slots are free anyone takes one (borrowing), so a
  storm on one lane still uses the whole pool.
* Within a lane, **FIFO with no barging**: a freed slot is handed to the
  chosen waiter before it even wakes, so a newcomer never takes it first
  (gevent's ``Semaphore`` lets a newcomer take a freed slot ahead of a waiter).

No clock, no gevent: the adapter (:mod:`gunitune.limiter`) wakes the waiters
this module picks, and measures the time.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CPU", "DB_LANES", "EXEMPT", "FAST", "LANES", "SLOW", "LaneScheduler", "Waiter", "db_shares",
]

EXEMPT = "exempt"  # no database slot, no queue: health checks, routes without a database
FAST = "fast"  # short database work: served ahead of slow work
SLOW = "slow"  # long database work
CPU = "cpu"  # CPU-bound: the CPU lane, one (or a few) at a time per worker
LANES = (EXEMPT, FAST, SLOW, CPU)
DB_LANES = (FAST, SLOW)

_sequence = itertools.count()


@dataclass(eq=False)
class Waiter:
    """One queued request. ``token`` is the adapter's wake-up handle (an event)."""

    lane: str
    route: str = ""
    token: Any = None
    granted: bool = False  # a slot was handed to it: whoever ends the wait must give it back
    refused: bool = False  # the scheduler stopped serving queued requests (worker shutdown)
    outage: bool = False  # refused because it waited too long for a database that is away
    since: float = 0.0  # when it started waiting (the adapter's clock)
    moved: bool = False  # its route changed lanes: queue again in the new one
    seq: int = field(default_factory=lambda: next(_sequence))


class LaneScheduler:
    """``limit`` slots over ``shares`` (lane name to fraction); queues per lane.

    Every lane named in ``shares`` exists; its guaranteed part is
    ``max(1, floor(share * limit))`` (at most ``limit``). Not thread-safe:
    callers serialize (gevent does, as none of these methods yields).
    """

    def __init__(self, limit: int, shares: Mapping[str, float]) -> None:
        if not shares:
            raise ValueError("shares is empty: name at least one lane")
        for lane, share in shares.items():
            if not 0 < share <= 1:
                raise ValueError(
                    f"share of lane {lane!r}={share!r} is invalid: expected 0 < share <= 1"
                )
        self._shares = dict(shares)
        self._queues: dict[str, deque[Waiter]] = {lane: deque() for lane in shares}
        self._in_use = dict.fromkeys(shares, 0)
        self._guaranteed: dict[str, int] = {}
        self.preferred: str | None = None  # a lane served first whatever its share
        self.held = False  # no slot is handed out: the database is away
        self.limit = 0
        self.set_limit(limit)

    @property
    def lanes(self) -> tuple[str, ...]:
        """The lanes, in the order they were declared (the tie-break order)."""
        return tuple(self._shares)

    @property
    def used(self) -> int:
        """Slots handed out."""
        return sum(self._in_use.values())

    def in_use(self, lane: str) -> int:
        """Slots held by ``lane``."""
        return self._in_use[lane]

    def waiting(self, lane: str | None = None) -> int:
        """Queued requests in ``lane`` (all lanes when ``None``)."""
        if lane is not None:
            return len(self._queues[lane])
        return sum(len(q) for q in self._queues.values())

    def guaranteed(self, lane: str) -> int:
        """Slots ``lane`` gets ahead of lanes over their share."""
        return self._guaranteed[lane]

    def set_limit(self, limit: int) -> list[Waiter]:
        """Change the number of slots; return the waiters granted the new room."""
        if limit < 1:
            raise ValueError(f"limit={limit} is invalid: expected an integer >= 1")
        self.limit = limit
        self._guaranteed = {
            lane: min(limit, max(1, math.floor(share * limit)))
            for lane, share in self._shares.items()
        }
        granted: list[Waiter] = []
        while self.used < self.limit and not self.held:
            waiter = self._pick()
            if waiter is None:
                break
            self._grant(waiter)
            granted.append(waiter)
        return granted

    def try_acquire(self, lane: str) -> bool:
        """Take a slot at once if one is free; False means: queue with :meth:`enqueue`.

        A slot is free only when nobody waits (a release hands it over), so
        taking it never jumps the queue.
        """
        if self.used < self.limit and not self.held:
            self._in_use[lane] += 1
            return True
        return False

    def enqueue(self, waiter: Waiter) -> None:
        """Queue ``waiter`` at the back of its lane."""
        self._queues[waiter.lane].append(waiter)

    def release(self, lane: str) -> Waiter | None:
        """Give back a slot of ``lane``; return the waiter it was handed to, if any."""
        self._in_use[lane] -= 1
        if self.used >= self.limit or self.held:
            return None  # the limit shrank, or the lanes are held: not handed over
        waiter = self._pick()
        if waiter is not None:
            self._grant(waiter)
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """Take a waiter that gave up out of its queue (no-op once granted)."""
        if waiter.granted:
            return
        queue = self._queues[waiter.lane]
        with contextlib.suppress(ValueError):
            queue.remove(waiter)

    def take_route(self, route: str, keep: str | None = None) -> list[Waiter]:
        """Take the queued requests of ``route`` out of every queue but ``keep``'s.

        Used when a route's lane changes: its waiters queue again in the new
        lane (those already in it keep their place). Arrival order is kept.
        """
        taken: list[Waiter] = []
        for lane, queue in self._queues.items():
            if lane != keep and any(w.route == route for w in queue):
                taken.extend(w for w in queue if w.route == route)
                self._queues[lane] = deque(w for w in queue if w.route != route)
        taken.sort(key=lambda w: w.seq)
        return taken

    def hold(self, held: bool) -> list[Waiter]:
        """Stop handing out slots (``True``), or go on (``False``: return the waiters granted)."""
        self.held = held
        return [] if held else self.set_limit(self.limit)

    def refuse_since(self, cutoff: float) -> list[Waiter]:
        """Take out every waiter queued at or before ``cutoff`` (an outage lasted too long)."""
        refused: list[Waiter] = []
        for lane, queue in self._queues.items():
            if queue and queue[0].since <= cutoff:
                refused.extend(w for w in queue if w.since <= cutoff)
                self._queues[lane] = deque(w for w in queue if w.since > cutoff)
        for waiter in refused:
            waiter.refused = waiter.outage = True
        return refused

    def refuse_all(self) -> list[Waiter]:
        """Empty every queue (a worker shutting down); return the waiters to wake."""
        refused: list[Waiter] = []
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                waiter.refused = True
                refused.append(waiter)
        return refused

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per lane: slots in use, guaranteed slots, queued requests."""
        return {
            lane: {
                "in_use": self._in_use[lane],
                "guaranteed": self._guaranteed[lane],
                "waiting": len(self._queues[lane]),
            }
            for lane in self._shares
        }

    def _pick(self) -> Waiter | None:
        """The next waiter: the preferred lane's (a probe's) first, then a lane below its
        guarantee, else the least served lane."""
        if self.preferred is not None and self._queues[self.preferred]:
            return self._queues[self.preferred].popleft()
        candidates = [lane for lane in self._shares if self._queues[lane]]
        if not candidates:
            return None
        lane = min(candidates, key=self._served_ratio)
        return self._queues[lane].popleft()

    def _served_ratio(self, lane: str) -> tuple[bool, float]:
        # Lanes under their guarantee sort first (False < True); within each
        # group, the lane using the smallest part of its share goes first.
        used, guaranteed = self._in_use[lane], self._guaranteed[lane]
        return used >= guaranteed, used / guaranteed

    def _grant(self, waiter: Waiter) -> None:
        waiter.granted = True
        self._in_use[waiter.lane] += 1


def db_shares(fast_share: float) -> dict[str, float]:
    """The database lanes' shares: ``fast_share`` to the fast lane, the rest to the slow one."""
    if not 0 < fast_share < 1:
        raise ValueError(f"fast_share={fast_share!r} is invalid: expected 0 < fast_share < 1")
    return {FAST: fast_share, SLOW: 1.0 - fast_share}
