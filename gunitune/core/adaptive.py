"""How many database queries one worker runs at once: found at run time.

A pure limit in the spirit of Netflix concurrency-limits' ``VegasLimit``: fed
one :class:`Sample` per request (how long it held a database connection, how
many this worker held meanwhile, whether its database work failed), it keeps
the number of this worker's queries *waiting inside the database* between
``ALPHA`` and ``BETA``. Past the database's knee more concurrency only makes
each query slower; below it an IO-bound query (``pg_sleep``, a lock wait, a
remote call) keeps the whole pool.

The estimate: ``queued = limit * (1 - baseline / hold)``, with ``baseline``
what a request of the same route costs alone. Routes differ by orders of
magnitude, so the baseline is kept **per route**. Vegas, Gradient2 and Envoy's
gradient controller share failure modes their users reported; each has a
guard here (and a unit test):

* drops and timeouts lower the limit (Netflix #176: Gradient2 ignored them);
  a timed-out query's constant hold is a drop, never a baseline (#137);
* the baseline never rises from a sample taken under load, only from a lone
  request (this worker holding one connection): steady overload cannot make
  it drift up and the limit climb (Vegas #165, PR #134, Envoy's minRTT drift);
* a lone request is found by a **probe**, not by rejecting: the limit drops
  to the floor until one request of the doubtful route has run alone; the
  others wait in the queue, none gets a 503 (Envoy's minRTT window sheds);
  a probe that confirms the baseline waits twice as long before the next;
* the limit rises on every good sample while at least half of it is used,
  so it leaves the floor within a few round trips after overload ends
  (go-concurrency-limits #117), and does not creep up while the app idles;
* a sample granted at a concurrency above the current limit says nothing
  about the current limit: it cannot lower it again (no overshoot).

No clock and no gevent: samples carry the adapter's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALPHA", "BETA", "DatabaseLimit", "Sample"]

ALPHA = 1.0  # fewer of our queries waiting inside the database than this: grow
BETA = 2.0  # more than this: shrink
DROP_BACKOFF = 0.75  # a failed or timed-out query: limit x this
DOUBT_RATIO = 1.5  # a route slower than this x its baseline may have a stale baseline
# Probes of doubtful baselines start on multiples of PROBE_PERIOD of the
# monotonic clock, which every process of the host shares: the workers probe
# together, so a lone request is not slowed by the other workers' queries.
PROBE_PERIOD = 5.0
PROBE_CONFIRMS = 1.5  # a lone hold within this factor of the baseline confirms it
PROBE_SHORTEST = 0.25  # a probe lasts at least this many seconds...
PROBE_LONGEST = 5.0  # ...and at most this many


@dataclass(frozen=True, slots=True)
class Sample:
    """One request that used the database.

    ``concurrent``: the most database slots this worker had in use (this
    request's included) when the request got its slot or gave it back.
    """

    route: str
    hold: float
    concurrent: int
    now: float
    dropped: bool = False


@dataclass(slots=True)
class _Baseline:
    seconds: float
    lone: bool  # measured on a lone request (else: a first guess under load)
    ratio: float = 1.0  # recent hold / baseline, smoothed


@dataclass(slots=True)
class _Probe:
    route: str
    restore: int  # the limit before the probe, given back after it
    until: float
    baseline: float
    first_guess: bool  # the baseline was guessed under load: the first lone hold ends it
    best: float = math.inf  # shortest lone hold of the route seen during the probe


@dataclass
class DatabaseLimit:
    """One worker's database concurrency limit, between ``floor`` and ``ceiling``.

    Starts at the ceiling (the pool): nothing is limited until a sample says so.
    """

    ceiling: int
    floor: int = 1
    limit: int = field(init=False)
    probe: _Probe | None = field(default=None, init=False)
    probes: int = field(default=0, init=False)
    drops: int = field(default=0, init=False)
    _baselines: dict[str, _Baseline] = field(default_factory=dict, init=False)
    _last_probe_slot: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        if self.floor < 1 or self.ceiling < self.floor:
            raise ValueError(
                f"floor={self.floor}, ceiling={self.ceiling} are invalid: "
                "expected 1 <= floor <= ceiling"
            )
        self.limit = self.ceiling

    def set_ceiling(self, ceiling: int) -> int:
        """A new pool size: the limit stays within it."""
        self.ceiling = max(self.floor, ceiling)
        self.limit = min(self.limit, self.ceiling)
        return self.limit

    def baseline(self, route: str) -> float | None:
        """What a lone request of ``route`` costs, as far as known."""
        known = self._baselines.get(route)
        return None if known is None else known.seconds

    def on_sample(self, sample: Sample) -> int:
        """Learn from one request; return the limit to enforce from now on."""
        if sample.dropped:
            # A failed or timed-out query says the database is in trouble, and
            # its hold (a timeout's constant length) says nothing of its cost.
            self.drops += 1
            self.limit = max(self.floor, math.floor(self.limit * DROP_BACKOFF))
            return self.limit
        if sample.hold <= 0:
            return self.limit
        lone = sample.concurrent <= 1
        known = self._baselines.get(sample.route)
        if known is None:
            known = self._baselines[sample.route] = _Baseline(sample.hold, lone)
        elif sample.hold < known.seconds:
            known.seconds = sample.hold  # a lower hold is proof, at any concurrency
        if self.probe is not None:
            self._follow_probe(sample, known, lone)
            return self.limit
        ratio = sample.hold / known.seconds
        known.ratio += 0.3 * (ratio - known.ratio)
        queued = self.limit * (1.0 - 1.0 / ratio)
        if queued > BETA and sample.concurrent <= self.limit:
            self.limit = max(self.floor, self.limit - 1)
        elif queued < ALPHA and 2 * sample.concurrent >= self.limit:
            self.limit = min(self.ceiling, self.limit + 1)
        if self._needs_probe(sample, known):
            self._start_probe(sample, known)
        return self.limit

    def _needs_probe(self, sample: Sample, known: _Baseline) -> bool:
        if sample.concurrent < self.limit or self.limit <= self.floor:
            return False  # not saturated: lone requests come by themselves
        if not known.lone:
            return True  # a first guess made under load: probe at once
        slot = math.floor(sample.now / PROBE_PERIOD)
        return known.ratio > DOUBT_RATIO and slot != self._last_probe_slot

    def _start_probe(self, sample: Sample, known: _Baseline) -> None:
        self.probes += 1
        self._last_probe_slot = math.floor(sample.now / PROBE_PERIOD)
        # Long enough to drain this worker's queries and run one alone, at
        # the route's recent cost (which may be far above its baseline).
        window = min(PROBE_LONGEST, max(PROBE_SHORTEST, 3 * known.seconds * max(1.0, known.ratio)))
        self.probe = _Probe(
            sample.route, self.limit, sample.now + window, known.seconds, first_guess=not known.lone
        )
        self.limit = self.floor

    def _follow_probe(self, sample: Sample, known: _Baseline, lone: bool) -> None:
        probe = self.probe
        assert probe is not None
        if lone and sample.route == probe.route:
            probe.best = min(probe.best, sample.hold)
            if probe.first_guess:
                self._end_probe(known)  # any lone hold beats a guess made under load
                return
        if sample.now >= probe.until:
            self._end_probe(known if sample.route == probe.route else None)

    def _end_probe(self, known: _Baseline | None) -> None:
        probe = self.probe
        assert probe is not None
        self.probe = None
        self.limit = max(self.floor, min(self.ceiling, probe.restore))
        known = self._baselines.get(probe.route) if known is None else known
        if known is None or probe.best == math.inf:
            return  # no lone request made it within the window: try again later
        # The only place a baseline may rise: the best lone hold of a probe, the
        # other workers probing at the same moment. Steady load cannot make it
        # drift; a lone hold close to the baseline confirms it instead.
        if probe.first_guess or probe.best > probe.baseline * PROBE_CONFIRMS:
            known.seconds = probe.best
        known.lone = True
        known.ratio = 1.0

    def snapshot(self) -> dict[str, Any]:
        """The limit and what it learned, as plain data for stats."""
        return {
            "limit": self.limit,
            "ceiling": self.ceiling,
            "floor": self.floor,
            "probing": None if self.probe is None else self.probe.route,
            "probes": self.probes,
            "drops": self.drops,
            "baseline_ms": {
                route: round(b.seconds * 1000, 2) for route, b in self._baselines.items()
            },
        }
