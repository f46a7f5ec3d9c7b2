"""Pure figure helpers for load-test results: percentiles and summaries."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.loadclient import RequestResult


def percentile(values: Iterable[float], q: int) -> float:
    """The ``q``-th percentile (a whole number in 0..100), numpy's linear method.

    Raises ValueError on an empty input or a ``q`` outside 0..100 or not whole.
    """
    data = list(values)
    if not data:
        raise ValueError("percentile of an empty sequence")
    if q not in range(101):
        raise ValueError(f"percentile q must be a whole number within [0, 100], got {q}")
    # statistics.quantiles (inclusive) is numpy's linear method, kept by the
    # stdlib; it returns only the 99 inner cut points and, before 3.13, refuses
    # a single value, so the ends and a lone value are answered here.
    if q == 0 or len(data) == 1:
        return float(min(data))
    if q == 100:
        return float(max(data))
    return statistics.quantiles(data, n=100, method="inclusive")[int(q) - 1]


def latency_figures(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of ``latencies`` in seconds (all None when empty)."""
    if not latencies:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    return {
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def summarize(results: Sequence[RequestResult]) -> dict[str, Any]:
    """Aggregate request results into a JSON-friendly dict.

    Keys: ``count``; ``ok`` (``body_ok`` results) and ``failed``; ``by_status``
    ({status: n}, responses only); ``by_error`` ({error: n}); ``p50``/``p90``/
    ``p99``/``max``/``mean`` latency in seconds over *all* results (failures
    included, since a reset after 30 s is as bad as a slow answer); ``ok_p50``/
    ``ok_p99``/``ok_max`` over the ok ones; ``first_done``/``last_done``: seconds
    from the earliest start to the first/last completion.
    """
    ok = [r for r in results if r.body_ok]
    summary: dict[str, Any] = {
        "count": len(results),
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "by_status": dict(
            sorted(Counter(r.status for r in results if r.status is not None).items())
        ),
        "by_error": dict(sorted(Counter(r.error for r in results if r.error is not None).items())),
    }
    summary.update(latency_figures([r.latency for r in results]))
    ok_figures = latency_figures([r.latency for r in ok])
    summary.update({f"ok_{k}": ok_figures[k] for k in ("p50", "p99", "max")})
    if results:
        t0 = min(r.started for r in results)
        summary["first_done"] = min(r.finished for r in results) - t0
        summary["last_done"] = max(r.finished for r in results) - t0
    else:
        summary["first_done"] = summary["last_done"] = None
    return summary
