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
  request during a **probe**: steady overload cannot make it drift up and the
  limit climb (Vegas #165, PR #134, Envoy's minRTT drift);
* a probe rejects nothing (Envoy's minRTT window sheds): the limit drops to
  the floor for a short window, the others wait in the queue. Probes start
  just after multiples of a period of the monotonic clock, which every process
  of the host shares, so the workers probe together and a lone request is not
  slowed by the other workers' queries; a probe that confirms the baseline
  skips twice as many periods before the next;
* near its target the limit grows by ``1 / limit`` per sample (about one per
  round trip), as each sample describes the concurrency of one round trip
  ago; by one per sample when a request that ran with the whole limit saw no
  queue; it shrinks straight to where the estimate puts it;
* the limit rises only while at least half of it is used: it leaves the floor
  within a few round trips after overload ends (go-concurrency-limits #117),
  and does not creep up while the app idles;
* a sample granted at a concurrency above the current limit cannot lower it
  again (no overshoot);
* jitter is not queueing: only a hold below a third of the baseline lowers a
  measured baseline outside a probe (the route got cheaper).

No clock and no gevent: samples carry the adapter's time.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALPHA", "BETA", "DatabaseLimit", "Sample"]

ALPHA = 1.5  # fewer of our queries waiting inside the database than this: grow
BETA = 3.0  # more than this: shrink
DROP_BACKOFF = 0.75  # a failed or timed-out query: limit x this
DOUBT_RATIO = 1.5  # a route slower than this x its baseline may have a stale baseline
CHANGE_RATIO = 2.0  # ...and twice as slow as when last confirmed: probe at the next period
FIRST_GUESS_PERIOD = 1.0  # a baseline guessed under load is probed within a second
PROBE_PERIOD = 5.0  # a doubtful baseline, every period at most
PROBE_MOST_SKIPPED = 8  # a baseline confirmed again and again: every 8 periods
PROBE_START_WINDOW = 0.25  # a probe may start this long after its period's start
PROBE_CONFIRMS = 1.5  # a lone hold within this factor of the baseline confirms it
PROBE_SHORTEST = 0.25  # a probe lasts at least this many seconds...
PROBE_LONGEST = 5.0  # ...and at most this many (a first guess: the drain is unknown)
# A doubtful baseline's probe, at most: holds slowed by the event loop (a CPU
# storm ending), not by the database, would make the drain look long, and the
# whole worker waits meanwhile.
DOUBT_PROBE_LONGEST = 1.5
CHEAPER = 1 / 3  # a hold below this x a measured baseline lowers it at once
RECENT_SECONDS = 10.0  # routes seen this recently count for a probe's drain time
SIGNIFICANT = 0.1  # a route whose holds are below this x the longest recent one is not probed
_SMOOTHING = 0.3
_WEIGHT_DECAY = 0.9  # per sample: the queue estimate covers the last ten or so


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
    seen_at: float
    recent: float  # recent holds, smoothed: how long one takes to drain
    ratio: float = 1.0  # recent hold / baseline, smoothed
    confirmed_ratio: float = 1.0  # the ratio when a probe last confirmed the baseline
    skip: int = 1  # probe on every skip-th period
    shrinks: bool = False  # its samples pushed the limit down, and none let it grow since


@dataclass(slots=True)
class _Probe:
    route: str
    restore: float  # the limit before the probe, given back after it
    until: float
    baseline: float
    first_guess: bool
    ratio: float  # the route's ratio before the probe
    lone_holds: list[float] = field(default_factory=list)  # the route's, during the probe


@dataclass
class DatabaseLimit:
    """One worker's database concurrency limit, between ``floor`` and ``ceiling``.

    Starts at the ceiling (the pool): nothing is limited until a sample says so.
    """

    ceiling: int
    floor: int = 1
    probe_longest: float = PROBE_LONGEST  # below a queue timeout: a probe queues requests
    probe: _Probe | None = field(default=None, init=False)
    probes: int = field(default=0, init=False)
    drops: int = field(default=0, init=False)
    _level: float = field(default=0.0, init=False)
    _held: float = field(default=0.0, init=False)  # recent holds, decayed sum
    _alone: float = field(default=0.0, init=False)  # their routes' baselines, same weights
    _baselines: dict[str, _Baseline] = field(default_factory=dict, init=False)
    _last_probe_slot: tuple[float, int] = field(default=(0.0, -1), init=False)

    def __post_init__(self) -> None:
        if self.floor < 1 or self.ceiling < self.floor:
            raise ValueError(
                f"floor={self.floor}, ceiling={self.ceiling} are invalid: "
                "expected 1 <= floor <= ceiling"
            )
        self._level = float(self.ceiling)

    @property
    def limit(self) -> int:
        """The limit to enforce now (the floor while probing)."""
        if self.probe is not None:
            return self.floor
        return max(self.floor, min(self.ceiling, math.floor(self._level)))

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
            # From the level the limit has outside a probe, not the probe's floor.
            level = self.probe.restore if self.probe is not None else self._level
            self._level = max(float(self.floor), math.floor(math.floor(level) * DROP_BACKOFF))
            if self.probe is not None:
                self.probe.restore = self._level
            return self.limit
        if sample.hold <= 0:
            return self.limit
        known = self._learn(sample)
        if self.probe is not None:
            self._follow_probe(sample)
            return self.limit
        known.ratio += _SMOOTHING * (sample.hold / known.seconds - known.ratio)
        # Weighted by hold time: the queue inside the database is made of
        # database time. A 2 ms query slowed to 20 ms by the event loop's lag
        # (not by the database) hardly moves it beside 500 ms queries.
        self._held = self._held * _WEIGHT_DECAY + sample.hold
        self._alone = self._alone * _WEIGHT_DECAY + known.seconds
        ratio = self._held / self._alone
        limit = self.limit
        queued = limit * (1.0 - 1.0 / ratio)
        if queued > BETA and sample.concurrent <= limit:
            # Straight to where the estimate puts it: the queries that ran
            # unqueued (limit / ratio) plus BETA; later samples refine it.
            target = math.ceil(limit / ratio + BETA)
            self._level = max(float(self.floor), min(self._level - 1, target))
            known.shrinks = known.ratio > 1.0 + BETA / limit
        elif queued < ALPHA and 2 * sample.concurrent >= limit:
            # A whole slot when a request that ran with the whole limit saw no
            # queue; else a slot per round trip: a sample tells about the
            # concurrency it started with, which later raises have not reached.
            clear = queued < ALPHA / 2 and sample.concurrent >= limit
            step = 1.0 if clear else 1.0 / limit
            self._level = min(float(self.ceiling), self._level + step)
            known.shrinks = False  # what pushed it down has passed: no reason to probe
        if self._needs_probe(sample, known):
            self._start_probe(sample, known)
        return self.limit

    def _learn(self, sample: Sample) -> _Baseline:
        known = self._baselines.get(sample.route)
        if known is None:
            # A first guess even when alone in this worker: the other workers
            # may keep the database busy. Only a probe measures a lone cost.
            known = _Baseline(sample.hold, False, sample.now, sample.hold)
            self._baselines[sample.route] = known
            return known
        cheaper = sample.hold < known.seconds * CHEAPER
        if sample.hold < known.seconds and (not known.lone or cheaper):
            # Any lower hold beats a guess made under load; a measured baseline
            # only follows a clearly cheaper route (jitter is not queueing).
            known.seconds = sample.hold
        known.seen_at = sample.now
        known.recent += _SMOOTHING * (sample.hold - known.recent)
        return known

    def tick(self, now: float) -> int:
        """Time passed with no sample (a slot given back unused): end an expired probe."""
        if self.probe is not None and now >= self.probe.until:
            self._end_probe()
        return self.limit

    def _recent_holds(self, now: float) -> list[float]:
        return [b.recent for b in self._baselines.values() if now - b.seen_at <= RECENT_SECONDS]

    def _needs_probe(self, sample: Sample, known: _Baseline) -> bool:
        if sample.concurrent < self.limit or self.limit <= self.floor:
            return False  # not saturated: lone requests come by themselves
        if known.recent < SIGNIFICANT * max(self._recent_holds(sample.now)):
            return False  # too short to matter beside the others: a probe would cost more
        if known.lone:
            if known.ratio <= DOUBT_RATIO and not known.shrinks:
                return False
            if known.ratio > CHANGE_RATIO * known.confirmed_ratio:
                known.skip = 1  # slower than when last confirmed: look again soon
        period = PROBE_PERIOD if known.lone else FIRST_GUESS_PERIOD
        slot = math.floor(sample.now / period)
        return (
            sample.now - slot * period < PROBE_START_WINDOW
            and (period, slot) != self._last_probe_slot
            and (not known.lone or slot % known.skip == 0)
        )

    def _start_probe(self, sample: Sample, known: _Baseline) -> None:
        self.probes += 1
        period = PROBE_PERIOD if known.lone else FIRST_GUESS_PERIOD
        slot = math.floor(sample.now / period)
        self._last_probe_slot = (period, slot)
        # Long enough to drain the queries in flight (the slowest recent route)
        # and run one alone; ending at the same time in every worker, as the
        # probes started together: one worker refilling the database while
        # another measures would slow the other's lone request.
        longest = max(self._recent_holds(sample.now))
        cap = self.probe_longest if not known.lone else min(self.probe_longest, DOUBT_PROBE_LONGEST)
        window = min(cap, max(PROBE_SHORTEST, 2 * longest + known.recent))
        self.probe = _Probe(
            sample.route,
            self._level,
            # Counted from the latest start: a late starter still gets its window.
            slot * period + PROBE_START_WINDOW + window,
            known.seconds,
            first_guess=not known.lone,
            ratio=known.ratio,
        )

    def _follow_probe(self, sample: Sample) -> None:
        probe = self.probe
        assert probe is not None
        if sample.route == probe.route and sample.concurrent <= 1:
            probe.lone_holds.append(sample.hold)
            if probe.first_guess and sample.hold * PROBE_CONFIRMS >= probe.baseline:
                # As slow alone as under load: nothing was queued (an IO-bound
                # route). Ending now spares the pool the rest of the window.
                self._end_probe()
                return
        if sample.now >= probe.until:
            self._end_probe()

    def _end_probe(self) -> None:
        probe = self.probe
        assert probe is not None
        self.probe = None
        self._level = max(float(self.floor), min(float(self.ceiling), probe.restore))
        known = self._baselines.get(probe.route)
        if known is None or not probe.lone_holds:
            return  # no lone request made it within the window: try again later
        # The median, not the shortest: a route whose holds vary (a remote
        # call, a lock) would otherwise look queued at its typical hold.
        alone = statistics.median(probe.lone_holds)
        confirmed = not probe.first_guess and (
            probe.baseline / PROBE_CONFIRMS <= alone <= probe.baseline * PROBE_CONFIRMS
        )
        if confirmed:
            known.skip = min(PROBE_MOST_SKIPPED, 2 * known.skip)
            known.confirmed_ratio = probe.ratio
        else:
            known.skip = 1
        # The only place a measured baseline may rise: lone holds during a
        # probe, the other workers probing at the same moment. A limit set
        # against a baseline too low by some factor is raised by that factor.
        grown = alone / known.seconds
        if grown > 1 and not probe.first_guess and not confirmed:
            self._level = min(float(self.ceiling), self._level * grown)
        known.ratio = max(1.0, known.ratio / grown)
        known.seconds = alone
        known.shrinks = False
        known.lone = True

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
