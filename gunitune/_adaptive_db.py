"""The adaptive database limit applied to one worker's database lanes.

:class:`gunitune.core.adaptive.DatabaseLimit` decides (pure, no clock);
:class:`AdaptiveDb` feeds it each request's sample with the worker's clock,
applies the limit it returns to the lanes' scheduler, wakes the waiters the new
room admits, and logs the change. It shares the limiter's lock: the scheduler
is the limiter's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog

from gunitune.core.adaptive import DatabaseLimit, Sample
from gunitune.core.lanes import LaneScheduler

__all__ = ["AdaptiveDb"]

log = structlog.get_logger("gunitune")
# A changing limit is logged at most this often per worker: a storm moves it on
# many requests a second.
_LOG_SECONDS = 1.0


class AdaptiveDb:
    """One worker's :class:`DatabaseLimit`, enforced on ``scheduler``."""

    def __init__(
        self,
        limit: DatabaseLimit,
        scheduler: LaneScheduler,
        lock: Any,
        clock: Callable[[], float],
    ) -> None:
        self.limit = limit
        self._scheduler = scheduler
        self._lock = lock
        self._clock = clock
        self._logged = (float("-inf"), scheduler.limit)

    def learn(self, lane: str, concurrent: int, route: str, hold: float, dropped: bool) -> None:
        """One request of ``route`` held a connection ``hold`` seconds (its slot still held)."""

        def sample(limit: DatabaseLimit, now: float) -> int:
            seen = max(concurrent, self._scheduler.used)
            probing = limit.probe is not None
            new = limit.on_sample(Sample(route, hold, seen, now, dropped))
            if limit.probe is not None and not probing:
                # The probed route's lane is served first while the limit is 1:
                # else a steady stream of fast queries could take every turn and
                # the probe would end with no lone request of its route.
                self._scheduler.preferred = lane
            return new

        self._apply(sample)

    def tick(self) -> None:
        """A slot came back without a sample: an expired probe may end."""
        if self.limit.probe is not None:
            self._apply(DatabaseLimit.tick)

    def snapshot(self) -> dict[str, Any]:
        """What the limit learned, for stats (under the lock: routes may be added)."""
        with self._lock:
            return self.limit.snapshot()

    def _apply(self, step: Callable[[DatabaseLimit, float], int]) -> None:
        now = self._clock()
        with self._lock:
            limit = step(self.limit, now)
            if self.limit.probe is None:
                self._scheduler.preferred = None
            granted = self._scheduler.set_limit(limit) if limit != self._scheduler.limit else []
        for waiter in granted:
            waiter.token.set()
        self._log(limit, now)

    def _log(self, limit: int, now: float) -> None:
        logged_at, logged = self._logged
        if limit == logged or now - logged_at < _LOG_SECONDS:
            return
        self._logged = (now, limit)
        log.info(
            "db_limit",
            limit=limit,
            was=logged,
            ceiling=self.limit.ceiling,
            probing=self.limit.probe is not None,
            waiting=self._scheduler.waiting(),
            pid=os.getpid(),
        )
