"""Pure figure helpers for load-test results: percentiles and summaries."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.loadclient import RequestResult


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default).

    Raises ValueError on an empty input or a ``q`` outside [0, 100].
    """
    data = sorted(values)
    if not data:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    pos = (len(data) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_figures(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of ``latencies`` in seconds (all None when empty)."""
    if not latencies:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    return {
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "mean": sum(latencies) / len(latencies),
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
