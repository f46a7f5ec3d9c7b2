"""Limit algorithms: how much work one worker should take on, from what it measured.

Pure functions of their samples, in the spirit of Netflix concurrency-limits:
no clock, no threads, no gevent. The adapters (:mod:`gunitune.worker`,
:mod:`gunitune.flask_ext`) feed samples and enforce the numbers.

Two numbers matter per worker:

* the **accept window**, the connections a worker holds at once. IO-bound work
  may fill the SQLAlchemy pool (``pool_size + max_overflow``); CPU-bound work
  should not be hoarded: a worker holding N requests of t CPU-seconds answers
  the last one N*t later while other workers may idle, and its heartbeat starves.
  So the window shrinks to what the worker finishes within ``cpu_budget`` seconds,
  and whatever it does not accept waits in the kernel backlog for any idle worker.
* the **route class**: whether a route spends most of its wall time on the CPU
  of its own greenlet (CPU-bound, goes through the CPU lane) or waiting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AcceptWindow", "RouteProfile", "RouteProfiles", "retry_after_seconds"]


@dataclass
class AcceptWindow:
    """Adaptive accept window of one worker.

    ``capacity`` is the IO ceiling (the pool's connections); ``floor`` the
    smallest window (the CPU lane's concurrency: a worker must always be able
    to take the work it can run right now). ``cpu_budget`` is the CPU work, in
    seconds, the worker may hold ahead of itself. The CPU cost per request is an
    exponentially weighted average, so one slow request does not close the window.
    """

    capacity: int
    floor: int = 1
    cpu_budget: float = 3.0
    smoothing: float = 0.3
    cpu_per_request: float = 0.0
    samples: int = 0
    window: int = field(init=False)
    _wanted_floor: int = field(init=False, repr=False)
    _listeners: list[Callable[[int, int], None]] = field(
        init=False, repr=False, default_factory=list
    )

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity={self.capacity} is invalid: expected an integer >= 1")
        if self.floor < 1:
            raise ValueError(f"floor={self.floor} is invalid: expected an integer >= 1")
        if not self.cpu_budget > 0:
            raise ValueError(f"cpu_budget={self.cpu_budget} is invalid: expected a number > 0")
        self._wanted_floor = self.floor
        self.floor = min(self.floor, self.capacity)
        # Start open: the IO-safe ceiling is what the hand-tuned fix uses, and the
        # first CPU-bound sample closes the window within one request.
        self.window = self.capacity

    def on_sample(self, cpu_seconds: float, wall_seconds: float) -> int:
        """Record one finished request's own CPU time; return the new window."""
        del wall_seconds  # the window depends on CPU cost; wall time is the IO's business
        cpu = max(0.0, cpu_seconds)
        if self.samples == 0:
            self.cpu_per_request = cpu
        else:
            self.cpu_per_request += self.smoothing * (cpu - self.cpu_per_request)
        self.samples += 1
        return self._set(self.target())

    def target(self) -> int:
        """The window for the current CPU estimate."""
        if self.cpu_per_request <= 0:
            return self.capacity
        affordable = math.floor(self.cpu_budget / self.cpu_per_request)
        return max(self.floor, min(self.capacity, affordable))

    def resize(self, capacity: int) -> int:
        """Follow a new IO ceiling (the app's real pool); return the new window."""
        if capacity < 1:
            raise ValueError(f"capacity={capacity} is invalid: expected an integer >= 1")
        self.capacity = capacity
        self.floor = min(self._wanted_floor, capacity)
        return self._set(self.target())

    def configure(self, *, floor: int | None = None, cpu_budget: float | None = None) -> int:
        """Change the floor or the CPU budget (settings known only once the app loads)."""
        if floor is not None:
            if floor < 1:
                raise ValueError(f"floor={floor} is invalid: expected an integer >= 1")
            self._wanted_floor = floor
            self.floor = min(floor, self.capacity)
        if cpu_budget is not None:
            if not cpu_budget > 0:
                raise ValueError(f"cpu_budget={cpu_budget} is invalid: expected a number > 0")
            self.cpu_budget = cpu_budget
        return self._set(self.target())

    def subscribe(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(old, new)`` whenever the window changes.

        The accept gate needs it: a window that grows while every connection
        stays open must re-arm accept, as no connection leaving will.
        """
        self._listeners.append(listener)

    def _set(self, new: int) -> int:
        old, self.window = self.window, new
        if new != old:
            for listener in self._listeners:
                listener(old, new)
        return new


@dataclass
class RouteProfile:
    """Smoothed share of wall time a route spends on its own greenlet's CPU."""

    cpu_ratio: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    samples: int = 0

    def add(self, cpu_seconds: float, wall_seconds: float, smoothing: float) -> None:
        """Fold one request into the averages."""
        ratio = min(1.0, cpu_seconds / wall_seconds) if wall_seconds > 0 else 0.0
        if self.samples == 0:
            self.cpu_ratio, self.cpu_seconds, self.wall_seconds = ratio, cpu_seconds, wall_seconds
        else:
            self.cpu_ratio += smoothing * (ratio - self.cpu_ratio)
            self.cpu_seconds += smoothing * (cpu_seconds - self.cpu_seconds)
            self.wall_seconds += smoothing * (wall_seconds - self.wall_seconds)
        self.samples += 1


@dataclass
class RouteProfiles:
    """Per-route classification: CPU-bound when the smoothed CPU ratio passes ``threshold``.

    Short requests are never CPU-bound however busy they are: a 2 ms handler
    cannot starve anything, and sending it through the CPU lane only adds a wait.
    """

    threshold: float = 0.5
    min_cpu_seconds: float = 0.02
    smoothing: float = 0.3
    routes: dict[str, RouteProfile] = field(default_factory=dict)

    def add(self, route: str, cpu_seconds: float, wall_seconds: float) -> RouteProfile:
        """Record one finished request of ``route``."""
        profile = self.routes.setdefault(route, RouteProfile())
        profile.add(cpu_seconds, wall_seconds, self.smoothing)
        return profile

    def is_cpu_bound(self, route: str) -> bool:
        """What the measurements say so far; unknown routes are not CPU-bound."""
        profile = self.routes.get(route)
        if profile is None:
            return False
        return profile.cpu_ratio > self.threshold and profile.cpu_seconds >= self.min_cpu_seconds

    def snapshot(self) -> dict[str, dict[str, float | int | bool]]:
        """The profiles as plain data, for stats."""
        return {
            route: {
                "cpu_ratio": round(p.cpu_ratio, 3),
                "cpu_ms": round(p.cpu_seconds * 1000, 2),
                "wall_ms": round(p.wall_seconds * 1000, 2),
                "samples": p.samples,
                "cpu_bound": self.is_cpu_bound(route),
            }
            for route, p in self.routes.items()
        }


def retry_after_seconds(
    waiting: int, capacity: int, seconds_per_request: float, *, low: int = 1, high: int = 60
) -> int:
    """Seconds after which a shed client has a fair chance: the queue ahead of it, drained.

    ``waiting`` requests ahead, ``capacity`` served at once, each taking about
    ``seconds_per_request``; clamped to ``[low, high]``.
    """
    if capacity < 1:
        return high
    drain = (waiting / capacity) * max(0.0, seconds_per_request)
    return max(low, min(high, math.ceil(drain)))
