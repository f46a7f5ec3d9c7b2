"""The adaptive scenarios' figures: active queries, lane limits over time, settle times, checks.

Pure functions of samples, request results and run documents, like
:mod:`benchmarks.lane_figures`: no process, no socket, so the report can be
redrawn from ``result.json`` and the figures checked on fixed inputs.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from benchmarks.figures import percentile

__all__ = [
    "LIMIT_LANES",
    "active_figures",
    "checks",
    "knee_checks",
    "limit_series",
    "parse_stats",
    "per_second",
    "settle_time",
    "steady_level",
    "switch_checks",
    "switch_figures",
]

LIMIT_LANES = ("fast", "slow", "cpu")
# What each lane's limit falls back to while the library has no per-lane limit:
# the database lanes share the worker's DB limit, the CPU lane has its concurrency.
_FALLBACK = {"fast": "db_limit", "slow": "db_limit", "cpu": "cpu_concurrency"}
BAND = 0.2  # switch: settled = rolling 1-s throughput within ±20 % of the steady level
STEP = 0.1  # switch: the rolling throughput is evaluated every 0.1 s
SETTLE_TARGET = 10.0  # switch: seconds allowed to settle after each switch


def _int(value: Any) -> int | None:
    # JSON booleans are ints in Python: a flag must not pass for a limit.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(value: Any) -> Mapping[str, Any]:
    # A key missing or of another type in the stats answer reads as empty.
    return value if isinstance(value, Mapping) else {}


def parse_stats(doc: Mapping[str, Any], route: str | None = None) -> dict[str, Any]:
    """One worker's stats document reduced to its pid, lane limits and ``route``'s lane.

    ``limiter.lanes.<lane>.limit`` when present; otherwise (a library without
    per-lane limits) ``limiter.db_limit`` for fast/slow and ``limiter.cpu_concurrency``
    for cpu, with ``source`` saying which. Missing keys give None.
    """
    limiter = _map(doc.get("limiter"))
    lanes = _map(limiter.get("lanes"))
    parsed: dict[str, Any] = {"pid": _int(doc.get("pid"))}
    fallback = False
    for lane in LIMIT_LANES:
        value = _int(_map(lanes.get(lane)).get("limit"))
        if value is None:
            fallback = True
            value = _int(limiter.get(_FALLBACK[lane]))
        parsed[lane] = value
    parsed["source"] = "fallback" if fallback else "lanes"
    profile = _map(_map(doc.get("routes")).get(route)) if route is not None else {}
    route_lane = profile.get("lane")
    parsed["lane"] = route_lane if isinstance(route_lane, str) else None
    return parsed


def limit_series(samples: Sequence[tuple[float, Mapping[str, Any]]], t0: float) -> dict[str, Any]:
    """Per worker pid, columns of ``t`` (seconds since ``t0``), each lane's limit and the lane.

    ``samples`` are ``(monotonic time, parse_stats(...))``; a sample without a pid
    (a broken answer) is dropped. ``sources`` counts samples per limit source.
    """
    workers: dict[str, dict[str, list[Any]]] = {}
    sources: Counter[str] = Counter()
    for t, s in sorted(samples, key=lambda item: item[0]):
        if s.get("pid") is None:
            continue
        sources[s["source"]] += 1
        cols = workers.setdefault(str(s["pid"]), {k: [] for k in ("t", *LIMIT_LANES, "lane")})
        cols["t"].append(round(t - t0, 3))
        for key in (*LIMIT_LANES, "lane"):
            cols[key].append(s.get(key))
    return {"workers": workers, "sources": dict(sources), "samples": sum(sources.values())}


def active_figures(samples: Sequence[tuple[float, int]], t0: float, end: float) -> dict[str, Any]:
    """Mean, p95 and max of the active-query samples taken in ``[t0, end]``, plus all of them.

    ``series`` keeps every sample (``[seconds since t0, count]``), before and after
    the storm too, for the plot; the figures are the storm's only.
    """
    during = [n for t, n in samples if t0 <= t <= end]
    return {
        "mean": statistics.fmean(during) if during else None,
        "p95": percentile(during, 95) if during else None,
        "max": max(during) if during else None,
        "samples": len(during),
        "series": [[round(t - t0, 3), n] for t, n in samples],
    }


def per_second(times: Sequence[float], seconds: float) -> list[int]:
    """Completions in each second ``[i, i + 1)`` of ``[0, seconds)``; ``times`` since the start."""
    bins = [0] * max(0, math.ceil(seconds))
    for t in times:
        if 0 <= t < len(bins):
            bins[int(t)] += 1
    return bins


def steady_level(times: Sequence[float], start: float, end: float) -> float | None:
    """Median per-second throughput over the second half of the phase ``[start, end)``."""
    half = start + (end - start) / 2
    n = max(1, math.floor(end - half))
    ordered = sorted(times)
    counts = [
        bisect_right(ordered, half + i + 1) - bisect_right(ordered, half + i) for i in range(n)
    ]
    return float(statistics.median(counts)) if end > start else None


def settle_time(
    times: Sequence[float], switch: float, end: float, steady: float | None, band: float = BAND
) -> float | None:
    """Seconds from ``switch`` until the rolling 1-s throughput enters and then stays
    within ``±band`` of ``steady`` until ``end``; None if it never does (or no steady level).

    The rolling throughput at ``t`` counts the completions in ``(t - 1, t]``, at
    every ``STEP`` from the switch on: just after it, the window still holds
    the previous phase's completions, which is part of settling.
    """
    if not steady:
        return None
    ordered = sorted(times)
    steps = int((end - switch) / STEP + 1e-9)
    settled: float | None = None
    for k in range(steps + 1):
        t = switch + k * STEP
        rate = bisect_right(ordered, t) - bisect_right(ordered, t - 1.0)
        if abs(rate - steady) <= band * steady:
            settled = t - switch if settled is None else settled
        else:
            settled = None
    return None if settled is None else round(settled, 3)


def switch_figures(
    results: Sequence[tuple[float, float, bool]],
    phases: Sequence[tuple[str, float, float]],
    clients: int | None = None,
) -> dict[str, Any]:
    """Per-second throughput, and each phase's requests, steady level and settle time.

    ``results``: ``(started, finished, valid)`` per request, seconds since the load
    started; ``phases``: ``(kind, start, end)`` in order. A request belongs to the
    phase it was sent in; throughput counts valid completions whenever they land.
    The first phase's settle time is from a standing start, the others' from a switch.
    ``drain``: ``clients`` requests of the old kind are in flight at a switch and
    finish at the old rate, so settling takes at least ``clients / previous steady``
    seconds whatever the server does.
    """
    done = sorted(f for _s, f, ok in results if ok)
    figures: list[dict[str, Any]] = []
    for kind, start, end in phases:
        sent = [ok for s, _f, ok in results if start <= s < end]
        steady = steady_level(done, start, end)
        figures.append({
            "kind": kind, "start": start, "end": end, "requests": len(sent),
            "valid": sum(sent), "steady": steady, "settle": settle_time(done, start, end, steady),
        })  # fmt: skip
        before = figures[-2]["steady"] if len(figures) > 1 else None
        figures[-1]["drain"] = clients / before if clients and before else None
    last = max([phases[-1][2] if phases else 0.0, *done[-1:]])
    return {"phases": figures, "per_second": per_second(done, last)}


def _check(text: str, value: float | None, target: float, at_most: bool) -> dict[str, Any]:
    ok = value is not None and (value <= target if at_most else value >= target)
    return {"check": text, "value": value, "target": target, "pass": ok}


def _ratio(tuned: float | None, base: float | None) -> float | None:
    return tuned / base if tuned is not None and base else None


def knee_checks(runs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for knee, gunitune against hand-tuned ([] without both runs)."""
    base, tuned = runs.get("hand-tuned"), runs.get("gunitune")
    if not base or not tuned or base.get("skipped") or tuned.get("skipped"):
        return []

    def fast_p99(run: Mapping[str, Any]) -> float | None:
        p99: float | None = run.get("probes", {}).get("/fast", {}).get("p99")
        return p99

    return [
        _check("throughput >= 0.95 x hand-tuned",
               _ratio(tuned["storm"]["throughput"], base["storm"]["throughput"]), 0.95, False),
        _check("mean active queries <= 0.5 x hand-tuned",
               _ratio(tuned["active_queries"]["mean"], base["active_queries"]["mean"]), 0.5, True),
        _check("/fast p99 <= 0.5 x hand-tuned",
               _ratio(fast_p99(tuned), fast_p99(base)), 0.5, True),
    ]  # fmt: skip


def switch_checks(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for switch, for one configuration's run."""
    if run.get("skipped"):
        return []
    phases = run["switch"]["phases"]
    storm = run["storm"]
    checks = [
        _check(f"settle {a['kind']} -> {b['kind']} <= {SETTLE_TARGET:g} s",
               b["settle"], SETTLE_TARGET, True)
        for a, b in pairwise(phases)
    ]  # fmt: skip
    valid_pct = 100 * storm["valid"] / storm["requests"] if storm["requests"] else None
    checks.append(_check("100 % valid", valid_pct, 100.0, False))
    checks.append(_check("0 WORKER TIMEOUT", run["server"]["worker_timeouts"], 0, True))
    return checks


def checks(result: Mapping[str, Any]) -> dict[str, Any]:
    """Every adaptive scenario's checks in a result document: ``knee`` (gunitune against
    hand-tuned) and ``switch`` (per configuration); only the scenarios that ran."""
    runs = result.get("runs", [])
    found: dict[str, Any] = {}
    knee = {r["config"]: r for r in runs if r["scenario"] == "knee"}
    if knee:
        found["knee"] = knee_checks(knee)
    switch = {r["config"]: switch_checks(r) for r in runs if r["scenario"] == "switch"}
    if switch:
        found["switch"] = switch
    return found
