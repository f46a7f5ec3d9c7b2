"""The fault benchmark's figures (:mod:`benchmarks.faults`): pure functions of request
results, instants and server logs, unit-tested on fixed inputs.

Times in a scenario are seconds since its load started (``t0``). Definitions
(also in docs/benchmarks/faults.md):

* **outcome** of a request: ``200`` (status 200, expected body), ``503+RA`` (503
  with a Retry-After header), ``503`` (without one), ``500``, ``other`` (any other
  status, or a 200 with a wrong body), ``reset`` (the connection was reset, closed
  or cut before a complete response), ``timeout`` (no answer within the client's
  timeout), ``refused`` or ``error`` (any other client error).
* **time to full service** after the database returns at ``back``: the least
  ``d >= 0`` such that every database request *finishing* after ``back + d`` is a
  ``200``. It is 0 when no request fails after ``back``, and None (never) when the
  last database request to finish is not a ``200``: service was not back when the
  run ended. The DB probe (``/fast`` every ``probe_interval``) keeps requests
  finishing for ``recovery_window`` s after ``back``, so the figure does not depend
  on the storm still running then.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.figures import latency_figures
from benchmarks.loadclient import RequestResult

__all__ = [
    "OUTCOMES",
    "answered_within",
    "counts",
    "full_service",
    "log_figures",
    "outcome",
    "probe_figures",
    "target",
]

OUTCOMES = ("200", "503+RA", "503", "500", "other", "reset", "timeout", "refused", "error")
_CUT = ("reset", "closed", "incomplete")
_TRACEBACK = "Traceback (most recent call last)"
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Timeout)\w*)\b(.*)$")


def outcome(r: RequestResult) -> str:
    """The request's outcome, one of :data:`OUTCOMES`."""
    if r.error is not None:
        if r.error in _CUT:
            return "reset"
        return r.error if r.error in ("timeout", "refused") else "error"
    if r.status == 200:
        return "200" if r.body_ok else "other"
    if r.status == 503:
        return "503+RA" if r.headers.get("retry-after", "").strip() else "503"
    return "500" if r.status == 500 else "other"


def counts(results: Sequence[RequestResult]) -> dict[str, Any]:
    """Every outcome's count (zeros included), the share of 200s, error kinds, latency."""
    by = Counter(outcome(r) for r in results)
    figures: dict[str, Any] = {"requests": len(results), **{k: by[k] for k in OUTCOMES}}
    figures["ok_share"] = by["200"] / len(results) if results else None
    figures["error_kinds"] = dict(sorted(Counter(r.error for r in results if r.error).items()))
    figures["other_statuses"] = dict(sorted(Counter(
        str(r.status) for r in results if outcome(r) == "other").items()))  # fmt: skip
    figures["latency"] = latency_figures([r.latency for r in results])
    return figures


def full_service(results: Iterable[RequestResult], t0: float, back: float) -> float | None:
    """Seconds after ``back`` (seconds since ``t0``) from which every database request
    that finishes is a 200; None when the last one to finish is not (module doc)."""
    done = sorted((r.finished - t0, outcome(r) == "200") for r in results)
    if not done or not done[-1][1]:
        return None
    failed_after = [t for t, ok in done if not ok and t > back]
    return max(failed_after) - back if failed_after else 0.0


def answered_within(
    results: Iterable[RequestResult], t0: float, start: float, end: float
) -> dict[str, Any]:
    """Requests open during ``[start, end]`` (seconds since ``t0``): how long each took
    to be answered, counted from ``max(its start, start)``, and with what outcome."""
    waits: list[float] = []
    outcomes: Counter[str] = Counter()
    for r in results:
        began, finished = r.started - t0, r.finished - t0
        if finished >= start and began <= end:
            waits.append(finished - max(began, start))
            outcomes[outcome(r)] += 1
    return {"requests": len(waits), "outcomes": dict(outcomes),
            "max_wait": max(waits) if waits else None,
            "wait": latency_figures(waits)}  # fmt: skip


def probe_figures(results: Sequence[RequestResult], t0: float) -> dict[str, Any]:
    """A probe's outcomes, latency and series ``[t since t0, latency, outcome]``."""
    return {
        **counts(results),
        "series": [[round(r.started - t0, 3), round(r.latency, 4), outcome(r)] for r in results],
    }


def _exception_names(text: str) -> list[str]:
    """The exception line closing each traceback in ``text`` (its first 160 chars)."""
    names, inside = [], False
    for line in text.splitlines():
        if _TRACEBACK in line:
            inside = True
        elif inside and not line.startswith((" ", "\t")):
            m = _EXC_LINE.match(line.strip())
            if m:
                names.append(line.strip()[:160])
                inside = False
    return names


def log_figures(text: str, pids_before: Sequence[int], pids_after: Sequence[int]) -> dict[str, Any]:
    """What the server log and the worker pids say: tracebacks, worker deaths, timeouts."""
    excs = _exception_names(text)
    gone = sorted(set(pids_before) - set(pids_after))
    return {
        # Flask logs "Exception on <path> [GET]" once per unhandled exception (a 500);
        # a chained exception prints several tracebacks for that one error.
        "tracebacks": len(re.findall(r"Exception on \S+ \[[A-Z]+\]", text)),
        "traceback_blocks": text.count(_TRACEBACK),
        "exceptions": dict(Counter(e.split(":", 1)[0] for e in excs).most_common(5)),
        "first_exception": excs[0] if excs else None,
        "worker_boots": text.count("Booting worker"),
        "worker_timeouts": text.count("WORKER TIMEOUT"),
        "workers_exited": len(re.findall(r"Worker \(pid:\d+\) (?:exited|was sent)", text)),
        "workers_before": list(pids_before),
        "workers_after": list(pids_after),
        "workers_gone": gone,
    }


def target(name: str, wanted: str, value: Any, ok: bool | None) -> dict[str, Any]:
    """One row of a scenario's target table; ``ok`` None: could not be measured."""
    return {"target": name, "wanted": wanted, "value": value,
            "result": "n/a" if ok is None else "pass" if ok else "FAIL"}  # fmt: skip
