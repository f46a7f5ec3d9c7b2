"""The lanes scenarios' figures: probes, connect times, per-worker spread, memory, wrk rounds.

Pure functions of request results and numbers, unit-tested on fixed inputs
(``tests/unit/test_bench_lanes.py``), like :mod:`benchmarks.storm_figures`, whose
outcome counts they reuse.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.figures import latency_figures
from benchmarks.loadclient import RequestResult
from benchmarks.storm_figures import is_valid, outcomes

__all__ = [
    "connect_figures",
    "failure_kinds",
    "max_spread",
    "memory_figures",
    "probe_figures",
    "worker_completions",
    "wrk_comparison",
]


def failure_kinds(results: Sequence[RequestResult]) -> dict[str, int]:
    """Every request that is not valid, by kind: error kinds, ``503``, ``500``, ``200 bad body``."""
    counts = outcomes(results)
    kinds: Counter[str] = Counter(counts["errors"])
    kinds.update(counts["invalid"])
    if counts["status_503"]:
        kinds["503"] += counts["status_503"]
    return dict(sorted(kinds.items()))


def connect_figures(results: Sequence[RequestResult]) -> dict[str, Any]:
    """p50/p99/max of the TCP connect time over the requests that connected.

    ``never_connected`` counts the others (refused, or still waiting for the
    handshake when the run ended): their wait is in the latency figures, not here.
    """
    times = [t for t in (r.connect_time for r in results) if t is not None]
    lat = latency_figures(times)
    return {
        "connect_p50": lat["p50"],
        "connect_p99": lat["p99"],
        "connect_max": lat["max"],
        "connected": len(times),
        "never_connected": len(results) - len(times),
        "connect_times": sorted(round(t, 4) for t in times),
    }


def probe_figures(results: Sequence[RequestResult], t0: float) -> dict[str, Any]:
    """One probe route's count, failures and latency, plus its latency over time.

    ``series`` is ``[seconds since t0 (the storm's start), latency, valid]`` per
    request, for the plot; latencies cover failures too, as everywhere else.
    """
    kinds = failure_kinds(results)
    figures: dict[str, Any] = {
        "requests": len(results),
        "valid": sum(1 for r in results if is_valid(r)),
        "failures": sum(kinds.values()),
        "failure_kinds": kinds,
    }
    lat = latency_figures([r.latency for r in results])
    figures.update({k: lat[k] for k in ("p50", "p99", "max")})
    figures["series"] = [
        [round(r.started - t0, 4), round(r.latency, 4), is_valid(r)]
        for r in sorted(results, key=lambda r: r.started)
    ]
    return figures


def worker_completions(
    results: Iterable[RequestResult], workers: Iterable[int] = ()
) -> dict[int, int]:
    """Valid responses per worker pid (``X-Served-By``); ``workers`` listed even at 0.

    A worker that answered nothing is the worst imbalance there is, so the pids
    known from the server count even when no response names them.
    """
    counts: Counter[int] = Counter({pid: 0 for pid in workers})
    counts.update(r.served_by for r in results if is_valid(r) and r.served_by is not None)
    return dict(sorted(counts.items()))


def max_spread(counts: Mapping[int, int]) -> float | None:
    """Largest ``|completions - mean| / mean`` over the workers (0 = perfectly even).

    None with no worker or no completion at all (no mean to compare with).
    """
    if not counts:
        return None
    mean = statistics.fmean(counts.values())
    if mean <= 0:
        return None
    return max(abs(n - mean) for n in counts.values()) / mean


def memory_figures(
    samples: Mapping[int, Mapping[str, int]], requests: int, workers: int
) -> dict[str, Any]:
    """Per-worker idle and peak RSS and the RSS cost of one held connection.

    ``samples`` maps a worker pid to ``idle_rss``/``peak_rss`` (bytes) and
    ``idle_fds``/``peak_fds``. Connections held = peak fds - idle fds (each client
    connection is one fd; the worker's extra DB connections count too); when that
    is 0 or unknown, ``requests / workers`` stands in. Both peaks are per-worker
    maxima of samples that need not coincide: the per-connection figure is an estimate.
    """
    fallback = requests / workers if workers > 0 else None
    per_worker: dict[str, Any] = {}
    for pid, s in sorted(samples.items()):
        held = max(0, s.get("peak_fds", 0) - s.get("idle_fds", 0))
        grown = s["peak_rss"] - s["idle_rss"]
        divisor = held or fallback
        per_worker[str(pid)] = {
            "idle_rss": s["idle_rss"],
            "peak_rss": s["peak_rss"],
            "held": held,
            "held_source": "fds" if held else "requests/workers",
            "rss_per_connection": grown / divisor if divisor else None,
        }
    peaks = [w["peak_rss"] for w in per_worker.values()]
    costs = [w["rss_per_connection"] for w in per_worker.values()
             if w["rss_per_connection"] is not None]  # fmt: skip
    return {
        "workers": per_worker,
        "max_peak_rss": max(peaks) if peaks else None,
        "median_rss_per_connection": statistics.median(costs) if costs else None,
    }


def wrk_comparison(rounds: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Median requests/s per configuration and gunitune's median / hand-tuned's median."""
    medians = {name: statistics.median(rps) for name, rps in rounds.items() if rps}
    base, tuned = medians.get("hand-tuned"), medians.get("gunitune")
    return {
        "median_rps": medians,
        "ratio": tuned / base if base and tuned is not None else None,
    }
