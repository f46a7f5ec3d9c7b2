"""SQLAlchemy adapter for pool-pressure telemetry.

:class:`PoolTelemetry` listens to the engines' pool events, builds
:class:`~gunitune.core.pressure.PoolSnapshot` objects from the pools' public
counters, feeds them to a :class:`~gunitune.core.pressure.PressureMonitor` and
logs each reported transition as one structlog event ``"pool_pressure"``:
``warning`` when pressure rises, ``info`` when it falls. Never one per request.

Pool classes other than :class:`~sqlalchemy.pool.QueuePool` (NullPool,
StaticPool, SingletonThreadPool, AssertionPool) expose no size or overflow
counters. For those, ``checked_out`` comes from our own checkout/checkin
event counts, ``pool_size`` and ``overflow_in_use`` are 0, and capacity is
unknown; a QueuePool with ``max_overflow=-1`` (or ``pool_size=0``) is
unbounded, so its capacity is unknown too. If any engine's capacity is
unknown, the summed capacity is reported as 0 ("unknown"), which the monitor
never classifies as SATURATED: a partial sum would claim saturation that is
not there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool, QueuePool

from gunitune.core.pressure import PoolSnapshot, PressureMonitor, Transition
from gunitune.database_url import masked

__all__ = ["EventLogger", "PoolTelemetry"]

EVENT_NAME = "pool_pressure"


class EventLogger(Protocol):
    """The part of a structlog bound logger that :class:`PoolTelemetry` uses."""

    def info(self, event: str, **kw: Any) -> Any:
        """Log at info level."""

    def warning(self, event: str, **kw: Any) -> Any:
        """Log at warning level."""


class PoolTelemetry:
    """Pool pressure telemetry for one Gunicorn worker.

    Registers pool event listeners on construction; call :meth:`detach` to
    remove them. Call :meth:`observe` from the admission path and from a
    periodic timer (the timer is what reports the return to OK after a storm
    when no request arrives). Safe to call from several threads or greenlets.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        monitor: PressureMonitor,
        logger: EventLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engines = tuple(engines)
        self.monitor = monitor
        self._log: EventLogger = logger if logger is not None else structlog.get_logger("gunitune")
        self._clock = clock
        # The monitor is not thread-safe and the periodic timer races with
        # request handlers; the lock is never held while logging, because a
        # log write may yield to another greenlet.
        self._lock = threading.Lock()
        # Fallback checked-out counts for pools without checkedout(), keyed
        # by engine index (an engine's pool object changes on dispose()).
        self._checked_out = [0] * len(self.engines)
        self._databases = [
            masked(e.url) for e in self.engines
        ]
        # (pool, event name, listener). We keep the pool we listened on: after
        # engine.dispose() the new pool shares its listeners, but SQLAlchemy
        # only removes them through the original target.
        self._registrations: list[tuple[Pool, str, Callable[..., None]]] = []
        for index, engine in enumerate(self.engines):
            self._attach(index, engine.pool)

    def _attach(self, index: int, pool: Pool) -> None:
        def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
            self._locked(self.monitor.record_connect)

        def on_invalidate(dbapi_connection: Any, connection_record: Any, exc: Any) -> None:
            self._locked(self.monitor.record_invalidate)

        def on_checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
            with self._lock:
                self._checked_out[index] += 1

        def on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
            with self._lock:
                # Clamped: a checkout that failed after its event fired may
                # still produce a checkin.
                self._checked_out[index] = max(0, self._checked_out[index] - 1)

        listeners: tuple[tuple[str, Callable[..., None]], ...] = (
            ("connect", on_connect),
            ("invalidate", on_invalidate),
            ("soft_invalidate", on_invalidate),
            ("checkout", on_checkout),
            ("checkin", on_checkin),
        )
        for name, fn in listeners:
            event.listen(pool, name, fn)
            self._registrations.append((pool, name, fn))

    def _locked(self, record: Callable[[float], None]) -> None:
        now = self._clock()
        with self._lock:
            record(now)

    def detach(self) -> None:
        """Remove every pool listener this object registered. Idempotent."""
        registrations, self._registrations = self._registrations, []
        for pool, name, fn in registrations:
            if event.contains(pool, name, fn):
                event.remove(pool, name, fn)

    def snapshot(self, waiters: int) -> PoolSnapshot:
        """Current connection counts summed over all engines.

        ``waiters`` is the length of gunitune's admission queue, which the
        pools cannot know.
        """
        capacity = pool_size = checked_out = overflow_in_use = 0
        capacity_known = True
        for index, engine in enumerate(self.engines):
            pool = engine.pool
            if isinstance(pool, QueuePool):
                size = pool.size()
                out = pool.checkedout()
                pool_size += size
                checked_out += out
                overflow_in_use += max(0, out - size)
                limit = _queue_pool_capacity(pool)
                if limit is None:
                    capacity_known = False
                else:
                    capacity += limit
            else:
                checked_out += self._checked_out[index]
                capacity_known = False
        return PoolSnapshot(
            capacity=capacity if capacity_known else 0,
            pool_size=pool_size,
            checked_out=checked_out,
            overflow_in_use=overflow_in_use,
            waiters=max(0, waiters),
        )

    def observe(self, waiters: int) -> Transition | None:
        """Snapshot the pools, update the monitor, log any transition.

        Returns the transition that was logged, if any (for tests and callers
        that want to react to it).
        """
        snap = self.snapshot(waiters)
        now = self._clock()
        with self._lock:
            transition = self.monitor.observe(snap, now)
        if transition is not None:
            self._emit(transition)
        return transition

    def record_wait(self, seconds: float) -> None:
        """Record how long a request waited for an admission slot."""
        self._locked(lambda now: self.monitor.record_wait(seconds, now))

    def record_shed(self) -> None:
        """Record one request shed with a 503."""
        self._locked(self.monitor.record_shed)

    def stats(self) -> dict[str, int | float | str]:
        """The monitor's counters as of now (see ``PressureMonitor.stats``)."""
        now = self._clock()
        with self._lock:
            return self.monitor.stats(now)

    def _emit(self, transition: Transition) -> None:
        fields: dict[str, Any] = {
            "from_state": transition.from_state.value,
            "to_state": transition.to_state.value,
            "checked_out": transition.checked_out,
            "capacity": transition.capacity,
            "overflow_in_use": transition.overflow_in_use,
            "waiters": transition.waiters,
            "wait_p50_ms": round(transition.wait_p50 * 1000, 3),
            "wait_p99_ms": round(transition.wait_p99 * 1000, 3),
            "sheds_in_window": transition.sheds_in_window,
            "connections_opened": transition.connections_opened,
            "connections_invalidated": transition.invalidated,
            "databases": list(self._databases),
        }
        if transition.is_escalation:
            self._log.warning(EVENT_NAME, **fields)
        else:
            self._log.info(EVENT_NAME, **fields)


def _queue_pool_capacity(pool: QueuePool) -> int | None:
    """``pool_size + max_overflow``, or None when overflow is unbounded.

    SQLAlchemy has no public getter for max_overflow; ``_max_overflow`` has
    been stable since 0.x and is what ``recreate()`` itself reads.
    """
    max_overflow = getattr(pool, "_max_overflow", None)
    if not isinstance(max_overflow, int) or max_overflow < 0:
        return None
    return pool.size() + max_overflow
