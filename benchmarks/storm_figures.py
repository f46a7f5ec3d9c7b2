"""The storm benchmark's figures: limits, throughput, ratio, outcome counts, wrk output.

Pure functions of request results and numbers, kept apart from the code that
runs servers so they are unit-tested on fixed inputs (``tests/unit/test_bench_figures.py``).
Percentiles come from the harness (:mod:`benchmarks.figures`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.figures import latency_figures
from benchmarks.loadclient import RequestResult

__all__ = [
    "cpu_limit",
    "io_limit",
    "is_valid",
    "outcomes",
    "parse_wrk",
    "ratio",
    "request_figures",
    "throughput",
    "wrk_figures",
]


def io_limit(workers: int, connections_per_worker: int, io_seconds: float) -> float | None:
    """Requests/s when every DB connection the configuration allows sleeps ``io_seconds``.

    None when unbounded (an IO time of 0 or unlimited overflow, signalled as < 1 connection).
    """
    if io_seconds <= 0 or connections_per_worker < 1 or workers < 1:
        return None
    return workers * connections_per_worker / io_seconds


def cpu_limit(cores: int, cpu_seconds: float) -> float | None:
    """Requests/s when every usable core does nothing but one request after another."""
    return cores / cpu_seconds if cpu_seconds > 0 and cores > 0 else None


def throughput(valid: int, span: float | None) -> float:
    """Valid responses per second over ``span`` (storm start to last valid completion)."""
    return valid / span if valid and span and span > 0 else 0.0


def ratio(value: float, limit: float | None) -> float | None:
    """``value`` as a fraction of ``limit`` (None when there is no limit)."""
    return value / limit if limit else None


def is_valid(r: RequestResult) -> bool:
    """A complete response with status 200 and exactly the expected body."""
    return r.error is None and r.status == 200 and r.body_ok


def outcomes(results: Sequence[RequestResult]) -> dict[str, Any]:
    """Count valid responses, 503s, other (invalid) responses and connection errors.

    Valid means status 200 with the expected body. ``invalid`` maps a status (or
    ``"200 bad body"``) to a count; ``errors`` maps a client error kind to a count.
    """
    invalid: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    valid = shed = 0
    for r in results:
        if r.error is not None:
            errors[r.error] += 1
        elif is_valid(r):
            valid += 1
        elif r.status == 503:
            shed += 1
        else:
            invalid["200 bad body" if r.status == 200 else str(r.status)] += 1
    return {
        "valid": valid,
        "status_503": shed,
        "invalid": dict(sorted(invalid.items())),
        "errors": dict(sorted(errors.items())),
    }


def request_figures(results: Sequence[RequestResult], limit: float | None) -> dict[str, Any]:
    """Every client-side figure of one storm (or trickle), JSON-ready.

    Latency percentiles cover all requests, failures included (a reset after 30 s
    costs the user 30 s). ``valid_done``/``failed_done`` are completion times in
    seconds since the first request started, for the completions plot.
    """
    figures: dict[str, Any] = {"requests": len(results), **outcomes(results)}
    figures.update(latency_figures([r.latency for r in results]))
    t0 = min((r.started for r in results), default=0.0)
    done = sorted(r.finished - t0 for r in results if is_valid(r))
    failed = sorted(r.finished - t0 for r in results if not is_valid(r))
    span = done[-1] if done else None
    figures["span"] = span
    figures["throughput"] = throughput(len(done), span)
    figures["limit"] = limit
    figures["ratio"] = ratio(figures["throughput"], limit)
    figures["valid_done"] = [round(t, 4) for t in done]
    figures["failed_done"] = [round(t, 4) for t in failed]
    figures["latencies"] = sorted(round(r.latency, 4) for r in results)
    return figures


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, errors, req/s and latency (p50/p99/max, seconds) from ``wrk --latency``."""
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total or not rps:
        raise ValueError("wrk output has no 'N requests in' / 'Requests/sec' lines")
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    stats = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output)
    socket = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    kinds = ("connect", "read", "write", "timeout")
    errors = dict(zip(kinds, map(int, socket.groups()), strict=True)) if socket else {}
    requests = int(total.group(1))
    return {
        "requests": requests,
        "duration": _wrk_seconds(total.group(2)),
        "requests_per_s": float(rps.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": {k: v for k, v in errors.items() if v},
        "p50": _wrk_seconds(dist["50"]) if "50" in dist else None,
        "p99": _wrk_seconds(dist["99"]) if "99" in dist else None,
        "max": _wrk_seconds(stats.group(3)) if stats else None,
    }


def wrk_figures(wrk: dict[str, Any]) -> dict[str, Any]:
    """``parse_wrk`` output in the shape of :func:`request_figures` (no per-request data).

    wrk keeps connections alive and does not check bodies: valid = 2xx/3xx answers.
    """
    errors = dict(wrk["errors"])
    valid = max(0, wrk["requests"] - wrk["non_2xx"] - errors.get("read", 0))
    rate = valid / wrk["duration"] if wrk["duration"] > 0 else 0.0
    invalid = {"non-2xx": wrk["non_2xx"]} if wrk["non_2xx"] else {}
    return {
        "requests": wrk["requests"], "valid": valid, "status_503": 0, "invalid": invalid,
        "errors": errors, "p50": wrk["p50"], "p90": None, "p99": wrk["p99"], "max": wrk["max"],
        "mean": None, "span": wrk["duration"], "throughput": rate, "limit": None,
        "ratio": None, "tool": "wrk",
    }  # fmt: skip
