"""Connection-pool pressure: classify pool snapshots and decide when to report.

Pure logic: no gevent, Flask, Gunicorn or SQLAlchemy imports and no clock
reads. Every method takes ``now`` (seconds on a monotonic clock) so tests can
drive time by hand; :mod:`gunitune.telemetry` feeds it real measurements.

The monitor turns a stream of pool snapshots into a handful of state
*transitions* worth logging: escalations are reported at once, de-escalations
only once the calmer state has held for ``calm_seconds``, and no two
transitions are closer than ``min_event_interval``. Per-request logging would
itself add load at exactly the moment the worker is overloaded.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from dataclasses import dataclass

from gunitune.core.errors import ConfigError

__all__ = ["PoolSnapshot", "PressureMonitor", "PressureState", "Transition", "WaitWindow"]

# Enough for ~1000 waits/s per worker over a 10 s window; beyond that the
# oldest samples go first, which only narrows the window, never the memory.
MAX_WAIT_SAMPLES = 10_000
# Shed counts are coalesced into this many buckets per window: exact totals in
# bounded memory, at the price of expiring in steps of window/100.
_SHED_BUCKETS_PER_WINDOW = 100


class PressureState(str, enum.Enum):
    """How hard the pool is pressed, least to most severe.

    Members are ``str`` so they log as plain words; compare severity with
    :attr:`severity`, never with ``<`` (that would compare the strings).
    """

    OK = "ok"
    PRESSURED = "pressured"
    SATURATED = "saturated"
    SHEDDING = "shedding"

    @property
    def severity(self) -> int:
        """0 for OK up to 3 for SHEDDING."""
        return _SEVERITY[self]


_SEVERITY = {state: rank for rank, state in enumerate(PressureState)}


@dataclass(frozen=True)
class PoolSnapshot:
    """Connection counts of the pool(s) at one instant.

    ``capacity`` is ``pool_size + max_overflow`` summed over engines, or 0
    when unknown or unbounded (NullPool, ``max_overflow=-1``): a snapshot with
    unknown capacity is never classified SATURATED. ``overflow_in_use`` counts
    checked-out connections beyond ``pool_size``. ``waiters`` is the number of
    requests queued in gunitune's admission queue.
    """

    capacity: int
    pool_size: int
    checked_out: int
    overflow_in_use: int
    waiters: int

    def __post_init__(self) -> None:
        for name in ("capacity", "pool_size", "checked_out", "overflow_in_use", "waiters"):
            if getattr(self, name) < 0:
                raise ValueError(f"PoolSnapshot.{name}={getattr(self, name)} must be >= 0")


@dataclass(frozen=True)
class Transition:
    """A change of reported pressure state, with the numbers worth logging.

    Wait percentiles are in seconds; ``connections_opened`` and
    ``invalidated`` are totals since the monitor was created.
    """

    from_state: PressureState
    to_state: PressureState
    at: float
    checked_out: int
    capacity: int
    overflow_in_use: int
    waiters: int
    wait_p50: float
    wait_p99: float
    sheds_in_window: int
    connections_opened: int
    invalidated: int

    @property
    def is_escalation(self) -> bool:
        """True when moving toward SHEDDING, False when calming down."""
        return self.to_state.severity > self.from_state.severity


class WaitWindow:
    """Wait-time samples of the last ``window_seconds``, for percentiles.

    Memory is bounded by :data:`MAX_WAIT_SAMPLES`; samples must be added with
    non-decreasing ``now`` (a monotonic clock guarantees it).
    """

    def __init__(self, window_seconds: float, max_samples: int = MAX_WAIT_SAMPLES) -> None:
        if not window_seconds > 0:
            raise ConfigError(f"window_seconds={window_seconds!r} is invalid: expected > 0")
        self.window_seconds = float(window_seconds)
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, seconds: float, now: float) -> None:
        """Record one wait of ``seconds`` (negative values count as 0)."""
        self._samples.append((now, max(0.0, float(seconds))))
        self._expire(now)

    def count(self, now: float) -> int:
        """Number of samples still inside the window."""
        self._expire(now)
        return len(self._samples)

    def percentile(self, q: int, now: float) -> float:
        """The ``q``-th percentile (a whole number in 0-100) of waits in the
        window; 0.0 if none. Linear interpolation, as numpy's default.
        """
        if q not in range(101):
            raise ValueError(f"percentile q={q!r} must be a whole number between 0 and 100")
        self._expire(now)
        if not self._samples:
            return 0.0
        values = [value for _, value in self._samples]
        # statistics.quantiles (inclusive) is numpy's linear method, kept by
        # the stdlib; it gives only the 99 inner cut points and, before 3.13,
        # refuses a single value, so the ends and a lone value are done here.
        if q == 0 or len(values) == 1:
            return min(values)
        if q == 100:
            return max(values)
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_seconds
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()


class _EventCounter:
    """Count of events in the last ``window_seconds``, in bounded memory."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._resolution = window_seconds / _SHED_BUCKETS_PER_WINDOW
        self._buckets: deque[list[float]] = deque()  # [bucket start, count]
        self.total = 0
        self.last_at: float | None = None

    def add(self, now: float) -> None:
        self.total += 1
        self.last_at = now if self.last_at is None else max(self.last_at, now)
        if self._buckets and now - self._buckets[-1][0] < self._resolution:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([now, 1])
        self._expire(now)

    def in_window(self, now: float) -> int:
        self._expire(now)
        return int(sum(count for _, count in self._buckets))

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_seconds
        while self._buckets and self._buckets[0][0] <= cutoff:
            self._buckets.popleft()


class PressureMonitor:
    """Classify pool snapshots and report state transitions sparingly.

    Not thread-safe: the caller serialises calls (the adapter holds a lock).
    """

    def __init__(
        self,
        window_seconds: float = 10.0,
        min_event_interval: float = 1.0,
        calm_seconds: float = 2.0,
    ) -> None:
        if not min_event_interval >= 0:
            raise ConfigError(
                f"min_event_interval={min_event_interval!r} is invalid: expected >= 0"
            )
        if not calm_seconds >= 0:
            raise ConfigError(f"calm_seconds={calm_seconds!r} is invalid: expected >= 0")
        self.window_seconds = float(window_seconds)
        self.min_event_interval = float(min_event_interval)
        self.calm_seconds = float(calm_seconds)
        self._waits = WaitWindow(window_seconds)
        self._sheds = _EventCounter(self.window_seconds)
        self._connections_opened = 0
        self._invalidated = 0
        self._state = PressureState.OK
        self._last_event_at: float | None = None
        self._transitions = 0
        self._snapshot = PoolSnapshot(0, 0, 0, 0, 0)
        # For each pool-derived level L: when the current unbroken run of
        # snapshots classified <= L began. De-escalating to L needs that run
        # (and the absence of sheds) to have lasted calm_seconds.
        self._calm_since: dict[PressureState, float] = {}

    @property
    def state(self) -> PressureState:
        """The last reported state (what the last transition moved to)."""
        return self._state

    def record_wait(self, seconds: float, now: float) -> None:
        """Record how long one request waited for an admission slot."""
        self._waits.add(seconds, now)

    def record_shed(self, now: float) -> None:
        """Record one request rejected (503) for lack of a slot."""
        self._sheds.add(now)

    def record_connect(self, now: float) -> None:
        """Record one new DBAPI connection opened by the pool."""
        self._connections_opened += 1

    def record_invalidate(self, now: float) -> None:
        """Record one connection invalidated (hard or soft)."""
        self._invalidated += 1

    def classify(self, snapshot: PoolSnapshot, now: float) -> PressureState:
        """The instantaneous state of ``snapshot``, before any hysteresis."""
        if self._shed_recently(now):
            return PressureState.SHEDDING
        return self._pool_level(snapshot)

    def observe(self, snapshot: PoolSnapshot, now: float) -> Transition | None:
        """Take a snapshot; return the transition to report, if any.

        Call this on every admission decision and from a periodic timer: the
        timer is what lets the return to OK be reported after a storm even
        when no further request arrives.
        """
        self._snapshot = snapshot
        level = self._pool_level(snapshot)
        for candidate in (PressureState.OK, PressureState.PRESSURED, PressureState.SATURATED):
            if level.severity <= candidate.severity:
                self._calm_since.setdefault(candidate, now)
            else:
                self._calm_since.pop(candidate, None)

        current = self.classify(snapshot, now)
        if current.severity > self._state.severity:
            target: PressureState | None = current
        else:
            target = self._calmer_target(now)
        if target is None or target is self._state:
            return None
        if self._last_event_at is not None and now - self._last_event_at < self.min_event_interval:
            # Suppressed, not queued: the next observe after the interval
            # re-evaluates, so the latest state wins.
            return None
        transition = Transition(
            from_state=self._state,
            to_state=target,
            at=now,
            checked_out=snapshot.checked_out,
            capacity=snapshot.capacity,
            overflow_in_use=snapshot.overflow_in_use,
            waiters=snapshot.waiters,
            wait_p50=self._waits.percentile(50, now),
            wait_p99=self._waits.percentile(99, now),
            sheds_in_window=self._sheds.in_window(now),
            connections_opened=self._connections_opened,
            invalidated=self._invalidated,
        )
        self._state = target
        self._last_event_at = now
        self._transitions += 1
        return transition

    def stats(self, now: float) -> dict[str, int | float | str]:
        """Counters for a health endpoint or a periodic log line."""
        snap = self._snapshot
        return {
            "state": self._state.value,
            "checked_out": snap.checked_out,
            "capacity": snap.capacity,
            "pool_size": snap.pool_size,
            "overflow_in_use": snap.overflow_in_use,
            "waiters": snap.waiters,
            "wait_p50_ms": round(self._waits.percentile(50, now) * 1000, 3),
            "wait_p99_ms": round(self._waits.percentile(99, now) * 1000, 3),
            "waits_in_window": self._waits.count(now),
            "sheds_total": self._sheds.total,
            "sheds_in_window": self._sheds.in_window(now),
            "connections_opened": self._connections_opened,
            "connections_invalidated": self._invalidated,
            "transitions": self._transitions,
        }

    def _shed_recently(self, now: float) -> bool:
        last = self._sheds.last_at
        # `now <= last` keeps a shed visible at its own instant even with
        # calm_seconds=0, so SHEDDING is always reported at least once.
        return last is not None and (now - last < self.calm_seconds or now <= last)

    @staticmethod
    def _pool_level(snapshot: PoolSnapshot) -> PressureState:
        if snapshot.capacity > 0 and snapshot.checked_out >= snapshot.capacity and snapshot.waiters:
            return PressureState.SATURATED
        if snapshot.overflow_in_use > 0 or snapshot.waiters > 0:
            return PressureState.PRESSURED
        return PressureState.OK

    def _calmer_target(self, now: float) -> PressureState | None:
        """The calmest level below the current state that has held calm_seconds."""
        last_shed = self._sheds.last_at
        for level in PressureState:
            if level.severity >= self._state.severity:
                return None
            since = self._calm_since.get(level)
            if since is None:
                continue
            # Leaving SHEDDING is measured from the last shed, so the calm
            # period is not served twice (once in classify, once here).
            if last_shed is not None:
                since = max(since, last_shed)
            if now - since >= self.calm_seconds:
                return level
        return None
