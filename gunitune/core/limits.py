"""What a worker learns about its routes, and which lane each one takes.

Pure functions of their samples, in the spirit of Netflix concurrency-limits:
no clock, no threads, no gevent. The adapters feed samples and enforce the lanes.

A route's lane follows from three measurements:

* whether its requests check out a database connection at all (routes that
  never do, health checks for instance, need no slot and never queue);
* the share of its own wall time spent on its greenlet's CPU (CPU-bound routes
  go through the CPU lane, so they cannot starve the event loop);
* how long a request takes alone (fast database work is served ahead of slow).

An unknown route takes the fast lane: it may need a connection, and if it is
slow its first finished request says so and its queued requests move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gunitune.core.lanes import CPU, EXEMPT, FAST, SLOW

__all__ = ["RouteProfile", "RouteProfiles", "retry_after_seconds"]

# Consecutive requests without a database checkout before a route counts as one
# that needs no slot: one request may skip the database by chance (a cache hit).
NO_DB_STREAK = 3
# Every request of a route is measured until this many samples, then at most
# one per SAMPLE_INTERVAL seconds: the switch tracer is the costliest part of
# the hot path, and a busy route needs no more than ten samples a second.
WARMUP_SAMPLES = 8
SAMPLE_INTERVAL = 0.1
# A sample this many seconds after the previous one weighs 63 % (1 - 1/e): the
# averages follow a route whose cost changed within seconds however rarely it
# is sampled, and frequent samples still weigh at least ``smoothing`` each.
DECAY_SECONDS = 2.0
# A slow route sends one request at a time ahead, in the fast lane, to be
# measured: while warming up, then every SCOUT_SECONDS. Without it, a fast
# route measured slow once (its first request met a storm) would queue behind
# the storm, and never be measured again before the storm ends.
SCOUT_SECONDS = 2.0


@dataclass
class RouteProfile:
    """Smoothed measurements of one route, and the lane they put it in."""

    cpu_ratio: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    samples: int = 0
    seen: int = 0
    no_db_streak: int = 0
    measured_at: float = float("-inf")
    added_at: float | None = None
    scouting: bool = False  # one of its requests runs ahead in the fast lane, measured
    scouted_at: float = float("-inf")
    lane: str = FAST  # where its requests go: exempt, fast, slow or cpu
    db_lane: str = FAST  # the database lane it needs (exempt: none), after the CPU lane if any

    def add(
        self, cpu_seconds: float, wall_seconds: float, smoothing: float, now: float | None = None
    ) -> None:
        """Fold one measured request (ended at ``now``) into the time-decayed averages."""
        ratio = min(1.0, cpu_seconds / wall_seconds) if wall_seconds > 0 else 0.0
        if self.samples == 0:
            self.cpu_ratio, self.cpu_seconds, self.wall_seconds = ratio, cpu_seconds, wall_seconds
        else:
            weight = smoothing
            if now is not None and self.added_at is not None:
                elapsed = max(0.0, now - self.added_at)
                weight = max(smoothing, 1.0 - math.exp(-elapsed / DECAY_SECONDS))
            self.cpu_ratio += weight * (ratio - self.cpu_ratio)
            self.cpu_seconds += weight * (cpu_seconds - self.cpu_seconds)
            self.wall_seconds += weight * (wall_seconds - self.wall_seconds)
        self.samples += 1
        if now is not None:
            self.added_at = now


@dataclass
class RouteProfiles:
    """Per-route measurements and lanes.

    ``threshold``: CPU share of wall time above which a route is CPU-bound;
    short requests (under ``min_cpu_seconds``) never are: a 2 ms handler cannot
    starve anything, and the CPU lane would only add a wait. ``fast_seconds``:
    database routes whose requests take at most this long are fast.
    """

    threshold: float = 0.5
    fast_seconds: float = 0.1
    min_cpu_seconds: float = 0.02
    smoothing: float = 0.3
    routes: dict[str, RouteProfile] = field(default_factory=dict)

    def get(self, route: str) -> RouteProfile:
        """The profile of ``route``, created (fast lane) on first sight."""
        profile = self.routes.get(route)
        if profile is None:
            profile = self.routes[route] = RouteProfile()
        return profile

    def longest_wall(self) -> float:
        """The slowest route's usual wall time (seconds; 0 before any measurement)."""
        return max((p.wall_seconds for p in self.routes.values() if p.samples), default=0.0)

    def should_measure(self, profile: RouteProfile, now: float) -> bool:
        """Measure this request (at ``now``)? Always while warming up, then every
        ``SAMPLE_INTERVAL`` seconds."""
        profile.seen += 1
        if profile.samples >= WARMUP_SAMPLES and now - profile.measured_at < SAMPLE_INTERVAL:
            return False
        profile.measured_at = now
        return True

    def lanes_for(self, profile: RouteProfile) -> tuple[str, bool]:
        """(database lane, through the CPU lane?) for the next request of a route.

        A route never measured yet sends its first request to the fast lane
        and the others, while that one runs, to the slow lane: a storm on a
        new route must not fill the fast lane before its first request says
        how slow it is.
        """
        if profile.samples == 0 and profile.seen > 1:
            return SLOW, False
        return profile.db_lane, profile.lane == CPU

    def take_scout(self, profile: RouteProfile, now: float) -> bool:
        """Send this request of a slow route ahead, in the fast lane, to be measured?

        One at a time per route: while it warms up, then every ``SCOUT_SECONDS``.
        Give it back with :meth:`scout_done`.
        """
        if profile.lane != SLOW or profile.scouting:
            return False
        if profile.samples >= WARMUP_SAMPLES and now - profile.scouted_at < SCOUT_SECONDS:
            return False
        profile.scouting = True
        profile.scouted_at = now
        return True

    @staticmethod
    def scout_done(profile: RouteProfile) -> None:
        """The scout of ``profile`` finished (or never ran): the next may go."""
        profile.scouting = False

    def add(
        self,
        route: str,
        cpu_seconds: float,
        wall_seconds: float,
        used_db: bool,
        now: float | None = None,
    ) -> str:
        """Record one measured request of ``route`` (ended at ``now``); return its lane."""
        profile = self.get(route)
        profile.add(cpu_seconds, wall_seconds, self.smoothing, now)
        profile.no_db_streak = 0 if used_db else profile.no_db_streak + 1
        self.classify(profile)
        return profile.lane

    def saw_database(self, route: str) -> str:
        """A request of ``route`` checked out a connection; return its lane (maybe new)."""
        profile = self.get(route)
        profile.no_db_streak = 0
        self.classify(profile)
        return profile.lane

    def classify(self, profile: RouteProfile) -> None:
        """Set the lanes the measurements put a route in."""
        if profile.samples == 0:
            profile.lane = profile.db_lane = FAST
            return
        if profile.no_db_streak >= NO_DB_STREAK:
            profile.db_lane = EXEMPT
        else:
            # Hysteresis: a route enters the fast lane at half the bound it
            # leaves it at, so one near the bound does not flap (each move
            # sends its queued requests to the back of the other lane).
            bound = self.fast_seconds if profile.db_lane == FAST else self.fast_seconds / 2
            profile.db_lane = FAST if profile.wall_seconds <= bound else SLOW
        cpu_bound = (
            profile.cpu_ratio > self.threshold and profile.cpu_seconds >= self.min_cpu_seconds
        )
        profile.lane = CPU if cpu_bound else profile.db_lane

    def snapshot(self) -> dict[str, dict[str, float | int | str]]:
        """The profiles as plain data, for stats."""
        return {
            route: {
                "lane": p.lane,
                "cpu_ratio": round(p.cpu_ratio, 3),
                "cpu_ms": round(p.cpu_seconds * 1000, 2),
                "wall_ms": round(p.wall_seconds * 1000, 2),
                "samples": p.samples,
                "requests": p.seen,
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
