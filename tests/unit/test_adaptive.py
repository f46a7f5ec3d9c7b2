"""Unit tests of the adaptive database limit, each guard against the upstream report it answers.

No clock and no sleep: every sample carries its own ``now``, and :func:`simulate` steps a
database (seeded, deterministic) shared by workers that each have their own limit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from gunitune.core.adaptive import (
    BETA,
    DOUBT_PROBE_LONGEST,
    DROP_BACKOFF,
    PROBE_LONGEST,
    PROBE_PERIOD,
    PROBE_START_WINDOW,
    DatabaseLimit,
    Sample,
)

Cost = Callable[[float, str], float]  # (now, route) -> seconds of work


@dataclass(slots=True)
class _Query:
    worker: int
    route: str
    left: float  # seconds of work still to do
    start: float
    granted: int  # this worker's slots in use when it got its own


@dataclass(frozen=True, slots=True)
class Point:
    now: float
    worker: int
    limit: int  # after the sample
    baseline: float  # of the sample's route, after the sample
    probed: bool  # a probe of this worker has ended


@dataclass(frozen=True, slots=True)
class Run:
    mean_active: float  # queries inside the database, averaged over time
    points: list[Point]  # one per sample, in order

    def limits(self, since: float = 0.0) -> list[int]:
        return [p.limit for p in self.points if p.now >= since]


def simulate(
    limits: Sequence[DatabaseLimit],
    seconds: float,
    cost: Cost,
    *,
    cores: float | None = None,
    routes: Sequence[str] = ("/r",),
    samples: int | None = None,
    seed: int = 1,
    dt: float = 0.001,
) -> Run:
    """A storm on one database shared by ``len(limits)`` workers, stepped every ``dt``.

    Each worker keeps as many queries inside as its limit allows. A query needs
    ``cost(now, route)`` seconds (x U(0.95, 1.05)); with ``cores`` the database shares them
    among the queries inside (processor sharing: hold = cost x max(1, in_flight / cores)),
    without it a query is IO-bound (hold = cost at any concurrency).
    """
    rnd = random.Random(seed)
    used = [0] * len(limits)
    active: list[_Query] = []
    points: list[Point] = []
    now = area = 0.0
    while now < seconds and (samples is None or len(points) < samples):
        for w, lim in enumerate(limits):
            while used[w] < lim.limit:
                used[w] += 1
                route = rnd.choice(routes)
                work = cost(now, route) * rnd.uniform(0.95, 1.05)
                active.append(_Query(w, route, work, now, used[w]))
        area += len(active) * dt
        rate = 1.0 if cores is None else min(1.0, cores / max(1, len(active)))
        now += dt
        running: list[_Query] = []
        for q in active:
            q.left -= rate * dt
            if q.left > 0:
                running.append(q)
                continue
            lim = limits[q.worker]  # the sample counts the slot it still holds, then frees it
            lim.on_sample(Sample(q.route, now - q.start, max(q.granted, used[q.worker]), now))
            used[q.worker] -= 1
            probed = lim.probes > (lim.probe is not None)
            points.append(Point(now, q.worker, lim.limit, lim.baseline(q.route) or 0.0, probed))
        active = running
    return Run(area / now, points)


def constant(seconds: float) -> Cost:
    return lambda now, route: seconds


def lone(limit: DatabaseLimit, route: str, hold: float, now: float = 0.0) -> int:
    """Teach ``limit`` what ``route`` costs alone, as a worker does: a first guess
    under load (``now`` at a period's start) starts a probe, a lone request ends it."""
    limit.on_sample(Sample(route, hold, limit.limit, now))
    assert limit.probe is not None, "no probe: pick a now at a period's start"
    return limit.on_sample(Sample(route, hold, 1, now + 0.01))


def test_drops_lower_the_limit_to_the_floor() -> None:
    """Netflix/concurrency-limits#176: Gradient2 ignored didDrop."""
    limit = DatabaseLimit(ceiling=20, floor=2)
    first = limit.on_sample(Sample("/r", 0.01, 20, 0.0, dropped=True))
    assert first == math.floor(20 * DROP_BACKOFF) < 20
    seen = [limit.on_sample(Sample("/r", 0.01, 20, i / 100, dropped=True)) for i in range(1, 20)]
    assert seen == sorted(seen, reverse=True)
    assert limit.limit == 2 and limit.drops == 20


def test_constant_timeout_hold_never_grows_the_limit() -> None:
    """Netflix/concurrency-limits#137: a stable timeout RTT grew Gradient2 to its maximum."""
    limit = DatabaseLimit(ceiling=10)
    seen = [
        limit.on_sample(Sample("/r", 5.0, limit.limit, i / 5, dropped=True)) for i in range(999)
    ]
    assert max(seen) < limit.ceiling and limit.limit == limit.floor
    assert limit.baseline("/r") is None  # a timeout's hold is never a cost


def steady_overload() -> tuple[list[Point], int, int]:
    capacity = 16  # the database's knee, a few slots below the pool
    ceiling = capacity + 3 * math.ceil(BETA)
    run = simulate([DatabaseLimit(ceiling)], 1e3, constant(0.02), cores=capacity, samples=10_000)
    return run.points[:10_000], ceiling, capacity


def test_steady_modest_overload_does_not_make_the_limit_climb() -> None:
    """Netflix/concurrency-limits PR #134: under modest overload the limit rose indefinitely.

    The halves' means are compared with half a slot of slack: the limit moves a slot a
    sample (see the next test), and a climb is many slots.
    """
    points, ceiling, capacity = steady_overload()
    first = sum(p.limit for p in points[:5000]) / 5000
    last = sum(p.limit for p in points[5000:]) / 5000
    assert len(points) == 10_000
    assert last <= capacity + BETA < ceiling and last <= first + 0.5


def test_steady_overload_holds_the_limit_near_the_knee() -> None:
    """Netflix/concurrency-limits PR #134: the limit stays bounded below the ceiling."""
    points, ceiling, capacity = steady_overload()
    last = sorted(p.limit for p in points[5000:] if p.limit > 1)  # not probing
    within = [lim for lim in last if capacity - 2 <= lim <= capacity + BETA + 1]
    assert len(within) >= 0.9 * len(last) and max(last) < ceiling


def storm_on_two_cores(seed: int, seconds: float) -> Run:
    """3 workers, each with a pool of 10, on a 2-core database; a query costs 25 ms alone."""
    return simulate(
        [DatabaseLimit(10) for _ in range(3)], seconds, constant(0.025), cores=2, seed=seed
    )


def test_sustained_load_keeps_the_database_queue_short() -> None:
    """Envoy's minRTT drift: a drifting baseline lets the queue inside the database grow."""
    for seed in (1, 7):
        assert storm_on_two_cores(seed, 60.0).mean_active <= 0.5 * 3 * 10


def test_baseline_does_not_drift_up_under_sustained_load() -> None:
    """Netflix/concurrency-limits#165: VegasLimit's rtt_noload grows too large."""
    for seed in range(1, 11):
        points = storm_on_two_cores(seed, 40.0).points
        # Once probed, a baseline stays near the cost of a query alone, with no upward trend.
        assert all(p.baseline <= 2 * 0.025 for p in points if p.probed), seed
        early = max(p.baseline for p in points if p.probed and 5 <= p.now < 10)
        late = max(p.baseline for p in points if p.now >= 30)
        assert late <= early * 1.05, seed


def test_first_guess_baseline_is_within_twice_the_cost() -> None:
    """Netflix/concurrency-limits#165: the no-load baseline must be measured without load."""
    for seed in range(1, 11):
        run = storm_on_two_cores(seed, PROBE_PERIOD)  # before any doubt probe
        assert max(p.baseline for p in run.points if p.probed) <= 2 * 0.025, seed


def test_confirmed_probes_back_off() -> None:
    """Envoy's minRTT recalculation every interval costs throughput every interval."""
    limits = [DatabaseLimit(10) for _ in range(3)]
    simulate(limits, 60.0, constant(0.025), cores=2)
    assert max(lim.probes for lim in limits) <= 60 / 10 + 1


def test_limit_leaves_the_floor_after_overload_and_does_not_creep_when_app_limited() -> None:
    """platinummonkey/go-concurrency-limits#117: Vegas stuck at 1 after heavy load ended."""
    limit = DatabaseLimit(ceiling=20)
    lone(limit, "/r", 0.01)
    for i in range(1, 100):  # overload: every query times out
        limit.on_sample(Sample("/r", 5.0, limit.limit, i / 100, dropped=True))
    assert limit.limit == limit.floor
    now = over = 1.0
    demand, left = 4, math.inf  # light load: at most 4 requests at once
    while now < over + 60:
        now += 0.05
        limit.on_sample(Sample("/r", 0.01, min(limit.limit, demand), now))
        left = min(left, now) if limit.limit > limit.floor else left
    assert left - over < 30
    assert limit.limit == 2 * demand + 1 < limit.ceiling  # grows only while half of it is used


def test_probe_lowers_the_limit_for_a_bounded_time_and_restores_it() -> None:
    """Envoy's minRTT window rejects requests with 503s; a probe here only makes them wait."""
    limit = DatabaseLimit(ceiling=10)
    lone(limit, "/slow", 2.0, now=1.0)
    start = PROBE_PERIOD  # probes start on the period's multiples
    limit.on_sample(Sample("/slow", 8.0, 10, start))  # saturated at 4x its baseline
    assert limit.probe is not None and limit.snapshot()["probing"] == "/slow"
    restore, until = limit.probe.restore, limit.probe.until
    assert limit.limit == limit.floor < restore
    assert until <= start + PROBE_START_WINDOW + PROBE_LONGEST
    now = start
    while now + 0.1 < until:  # the worst case: no request ever runs alone
        now += 0.1
        assert limit.on_sample(Sample("/slow", 8.0, 3, now)) == limit.floor
    assert limit.tick(until - 0.001) == limit.floor
    assert limit.tick(until) == restore
    assert limit.floor >= 1  # the adapter always admits one: the API never rejects


def test_io_bound_route_keeps_the_ceiling() -> None:
    """pg_sleep-like holds do not grow with concurrency: the pool is the limit."""
    limit = DatabaseLimit(ceiling=15)
    run = simulate([limit], 20.0, constant(0.05))
    assert limit.probes == 1  # the first guess, made under load
    assert set(run.limits(since=1.0)) == {15} and run.mean_active >= 0.95 * 15


def test_jittery_io_bound_route_keeps_the_ceiling() -> None:
    """Netflix/concurrency-limits PR #16 made Vegas' alpha/beta scale with the limit."""
    jitter = random.Random(7)
    run = simulate([DatabaseLimit(15)], 30.0, lambda now, r: 0.1 * jitter.uniform(0.6, 1.4))
    assert run.mean_active >= 0.8 * 15


def test_route_cost_change_io_bound() -> None:
    """A route's cost changes 10x: a rise is found by a probe, a fall at once."""
    up = [DatabaseLimit(15) for _ in range(3)]
    run = simulate(up, 25.0, lambda now, route: 0.05 if now < 7.0 else 0.5)
    assert min(run.limits(since=7.0)) < 15  # the rise was felt...
    assert set(run.limits(since=17.0)) == {15}  # ...and settled within 10 s
    assert all(0.45 <= (lim.baseline("/r") or 0.0) <= 0.55 for lim in up)
    down = [DatabaseLimit(15) for _ in range(3)]
    run = simulate(down, 8.0, lambda now, route: 0.5 if now < 7.0 else 0.05)
    assert max(p.baseline for p in run.points if p.now >= 7.2) <= 0.05 * 1.05 + 0.002
    limit = DatabaseLimit(15)
    lone(limit, "/r", 0.5)
    limit.on_sample(Sample("/r", 0.05, 15, 1.0))  # under load: a lower hold is still proof
    assert limit.baseline("/r") == 0.05


def test_no_overshoot_and_no_rise_when_app_limited() -> None:
    """A sample granted above the limit says nothing of it; a half-idle limit does not grow."""
    limit = DatabaseLimit(ceiling=40)
    lone(limit, "/r", 0.1)
    before = limit.on_sample(Sample("/r", 0.1, 40, 1.0, dropped=True))
    assert limit.on_sample(Sample("/r", 0.125, 40, 1.1)) == before  # granted at 40: stale
    after = limit.on_sample(Sample("/r", 0.125, before, 1.2))  # granted at the limit: queued
    assert after < before
    grow = DatabaseLimit(ceiling=40)
    lone(grow, "/r", 0.1)
    level = grow.on_sample(Sample("/r", 0.1, 40, 1.0, dropped=True))
    for i in range(100):  # app-limited: under half of the limit in use, however long
        assert grow.on_sample(Sample("/r", 0.1, (level - 1) // 2, 1.3 + i / 1000)) == level
    # Half used and no queue: it grows, a slot per round trip (1 / limit per sample)...
    assert grow.on_sample(Sample("/r", 0.1, (level + 1) // 2, 1.4)) == level
    # ...and a whole slot when the request ran with the whole limit.
    assert grow.on_sample(Sample("/r", 0.1, level, 1.5)) == level + 1


def test_per_route_baselines() -> None:
    """platinummonkey/go-concurrency-limits#117: one RTT baseline for a 10 ms-2 s mix."""
    limit = DatabaseLimit(ceiling=15)
    lone(limit, "/fast", 0.005)
    lone(limit, "/slow", 0.5, now=1.0)
    for i in range(2000):
        route, hold = ("/fast", 0.005) if i % 2 else ("/slow", 0.5)
        limit.on_sample(Sample(route, hold * (1.0 + (i % 5) / 100), limit.limit, i / 100))
        assert limit.limit == 15
    assert limit.probes == 2  # the two that measured each route alone
    assert limit.snapshot()["baseline_ms"] == {"/fast": 5.0, "/slow": 500.0}


def test_fast_and_slow_routes_under_a_storm_keep_the_pool() -> None:
    """platinummonkey/go-concurrency-limits#117, when the storm starts before any lone request."""
    limit = DatabaseLimit(ceiling=15)
    costs = {"/fast": 0.02, "/slow": 0.5}
    run = simulate([limit], 20.0, lambda now, route: costs[route], routes=tuple(costs))
    assert limit.probes <= 4 and run.mean_active >= 0.8 * 15


@pytest.mark.parametrize(("ceiling", "floor"), [(5, 0), (3, 4), (0, 1)])
def test_constructor_rejects_bad_bounds(ceiling: int, floor: int) -> None:
    """Bounds that cannot hold a limit: the message names both."""
    with pytest.raises(ValueError, match=f"floor={floor}, ceiling={ceiling}"):
        DatabaseLimit(ceiling=ceiling, floor=floor)


def test_a_probe_lasts_no_longer_than_probe_longest() -> None:
    """A probe queues requests: with a queue timeout, the worker keeps it shorter."""
    limit = DatabaseLimit(ceiling=10, probe_longest=0.3)
    lone(limit, "/r", 1.0)
    limit.on_sample(Sample("/r", 10.0, 10, PROBE_PERIOD))  # doubtful: probed
    assert limit.probe is not None
    assert limit.probe.until == pytest.approx(PROBE_PERIOD + PROBE_START_WINDOW + 0.3)


def test_a_drop_during_a_probe_backs_off_from_the_level_before_it() -> None:
    """Not from the probe's floor: one failed query does not leave the limit at 1."""
    limit = DatabaseLimit(ceiling=20)
    lone(limit, "/r", 0.1)
    limit.on_sample(Sample("/r", 0.4, 20, PROBE_PERIOD))
    assert limit.probe is not None and limit.limit == limit.floor
    restore = math.floor(limit.probe.restore)
    limit.on_sample(Sample("/r", 0.4, 1, PROBE_PERIOD + 0.01, dropped=True))
    limit.tick(PROBE_PERIOD + PROBE_LONGEST)
    assert limit.limit == math.floor(restore * DROP_BACKOFF)


def test_a_first_sample_alone_in_its_worker_is_still_a_guess() -> None:
    """Other workers may keep the database busy: only a probe measures a lone cost."""
    limit = DatabaseLimit(ceiling=10)
    limit.on_sample(Sample("/r", 0.3, 1, 0.5))
    limit.on_sample(Sample("/r", 0.3, 10, 1.0))  # saturated at a period's start
    assert limit.probe is not None and limit.probe.first_guess


def test_snapshot_shape() -> None:
    """Plain data for the stats view, baselines in milliseconds per route."""
    limit = DatabaseLimit(ceiling=8)
    lone(limit, "/a", 0.0123)
    lone(limit, "/b", 1.5, now=1.0)
    limit.on_sample(Sample("/a", 1.0, 8, 1.0, dropped=True))
    snap = limit.snapshot()
    assert set(snap) == {"limit", "ceiling", "floor", "probing", "probes", "drops", "baseline_ms"}
    assert (snap["limit"], snap["ceiling"], snap["floor"], snap["drops"]) == (6, 8, 1, 1)
    assert snap["probing"] is None and snap["probes"] == 2
    assert snap["baseline_ms"] == {"/a": 12.3, "/b": 1500.0}


def test_an_expired_probe_ends_without_a_sample() -> None:
    """Slots given back unused (requests that never queried) still let a probe end on time."""
    limit = DatabaseLimit(ceiling=10)
    assert limit.on_sample(Sample("/r", 0.5, 10, 1.0)) == limit.floor  # a first guess: probed
    assert limit.tick(1.1) == limit.floor
    assert limit.tick(1.0 + PROBE_LONGEST) == 10
    assert limit.probe is None


def test_a_doubt_probe_is_short_even_when_holds_look_long() -> None:
    """Holds slowed by the event loop (a CPU storm ending) must not stretch it to seconds."""
    limit = DatabaseLimit(ceiling=10)
    lone(limit, "/r", 0.2)
    for i in range(5):  # holds of 3 s: a drain estimate of seconds
        limit.on_sample(Sample("/r", 3.0, 10, 2.0 + i / 10))
    limit.on_sample(Sample("/r", 3.0, limit.limit, PROBE_PERIOD))
    assert limit.probe is not None
    assert limit.probe.until <= PROBE_PERIOD + PROBE_START_WINDOW + DOUBT_PROBE_LONGEST
