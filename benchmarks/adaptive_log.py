"""Every gunitune worker's database limit and route lanes over time, from the server's log.

The stats view only shows the worker that answered a poll, and the balance sends
most polls to the least loaded one: the other workers' limits are sampled rarely
and look stale. Each worker logs its own changes instead, as JSON lines among
Gunicorn's plain-text ones:

* ``db_limit``: ``limit``, ``was`` (the last logged limit), ``ceiling``,
  ``probing``, ``pid``, ``timestamp``; on a change, at most once a second per
  worker (a change within that second shows up with the next line, if any).
* ``route_lane``: ``route``, ``lane``, ``was``, ``pid``, ``timestamp``.
* ``worker_ready``: ``pid``, ``timestamp``: a worker that boots during the load
  starts its line there.

Timestamps are ISO 8601 UTC; the run's ``load_wall_start`` (``time.time()`` at
the load's start) turns them into seconds since the load started. Pure
functions of the log's text, read at report time, like the other figures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "EVENTS",
    "lane_steps",
    "limit_steps",
    "log_time",
    "parse_events",
    "read_events",
    "run_log_series",
]

EVENTS = frozenset({"db_limit", "route_lane", "worker_ready"})
Steps = dict[str, dict[str, list[Any]]]  # pid -> {"t": [...], "value": [...], "probing": [...]}
# Whole seconds apart from the fraction: Python 3.10's fromisoformat takes neither
# "Z" nor a fraction of other than 3 or 6 digits.
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def log_time(stamp: Any) -> float | None:
    """``time.time()`` of an ISO 8601 timestamp (no zone: UTC); None if it is not one."""
    match = _ISO.fullmatch(stamp) if isinstance(stamp, str) else None
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(whole + zone).timestamp() + float(fraction or 0)


def parse_events(lines: Iterable[str], names: frozenset[str] = EVENTS) -> list[dict[str, Any]]:
    """The JSON objects among ``lines`` whose ``event`` is one of ``names``, in order.

    Other lines (Gunicorn's own, plain text; a line cut short) are skipped.
    """
    found = []
    for line in lines:
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") in names:
            found.append(doc)
    return found


def read_events(path: str | Path, names: frozenset[str] = EVENTS) -> list[dict[str, Any]]:
    """:func:`parse_events` of a log file; [] if it cannot be read."""
    try:
        with open(path, errors="replace") as log:
            return parse_events(log, names)
    except OSError:
        return []


def _timed(
    events: Iterable[Mapping[str, Any]], name: str, wall_start: float, **match: Any
) -> dict[str, list[tuple[float, Mapping[str, Any]]]]:
    # Per pid, (seconds since the load start, event) of the events called ``name``
    # whose fields equal ``match``, in time order; events without a pid or time dropped.
    by_pid: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
    for e in events:
        pid, when = _int(e.get("pid")), log_time(e.get("timestamp"))
        if e.get("event") != name or pid is None or when is None:
            continue
        if all(e.get(k) == v for k, v in match.items()):
            by_pid.setdefault(str(pid), []).append((when - wall_start, e))
    for timed in by_pid.values():
        timed.sort(key=lambda item: item[0])
    return by_pid


def _boots(events: Iterable[Mapping[str, Any]], wall_start: float) -> dict[str, float]:
    # When each worker became ready, in seconds since the load start (its last boot).
    return {pid: timed[-1][0] for pid, timed in _timed(events, "worker_ready", wall_start).items()}


def _steps(
    by_pid: Mapping[str, list[tuple[float, Mapping[str, Any]]]], key: str,
    before: tuple[str, ...], boots: Mapping[str, float],
) -> Steps:  # fmt: skip
    """Step columns per pid: the value at the start, then one row per event after it.

    The start is the load's (0), or the worker's boot if later. The value there
    is the last earlier event's ``key``, else the first event's first field of
    ``before`` that it has (what it changed from).
    """
    series: Steps = {}
    for pid, timed in sorted(by_pid.items()):
        start = max(0.0, boots.get(pid, 0.0))
        earlier = [e for t, e in timed if t <= start]
        later = [(t, e) for t, e in timed if t > start]
        if earlier:
            first, probing = earlier[-1].get(key), earlier[-1].get("probing") is True
        else:
            was = (later[0][1].get(k) for k in before)
            first, probing = next((v for v in was if v is not None), None), False
        cols: dict[str, list[Any]] = {"t": [round(start, 3)], "value": [first],
                                      "probing": [probing]}  # fmt: skip
        for t, e in later:
            cols["t"].append(round(t, 3))
            cols["value"].append(e.get(key))
            cols["probing"].append(e.get("probing") is True)
        series[pid] = cols
    return series


def limit_steps(events: Iterable[Mapping[str, Any]], wall_start: float) -> Steps:
    """Each worker's database limit from its ``db_limit`` events (``value``: the limit).

    From the load's start (or the worker's later boot) at the limit it had: the
    last earlier event's, else the first event's ``was`` (else its ``ceiling``).
    ``probing``: the event was logged while a probe ran.
    """
    events = list(events)
    return _steps(_timed(events, "db_limit", wall_start), "limit", ("was", "ceiling"),
                  _boots(events, wall_start))  # fmt: skip


def lane_steps(events: Iterable[Mapping[str, Any]], route: str, wall_start: float) -> Steps:
    """Each worker's lane for ``route`` from its ``route_lane`` events (``value``: the lane).

    Only workers that moved the route; the start is as in :func:`limit_steps`.
    """
    events = list(events)
    return _steps(_timed(events, "route_lane", wall_start, route=route), "lane", ("was",),
                  _boots(events, wall_start))  # fmt: skip


def run_log_series(run: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """A run's ``limits`` and ``lanes`` (of its route) per worker from its server log.

    Both empty without ``load_wall_start`` (a run from before it was recorded),
    without a readable log or without such events. ``run["log"]`` as stored, or,
    if that is gone, the file of that name in ``base / "logs"`` (a moved results
    directory). ``events``: the ``db_limit`` events read.
    """
    wall_start, log = run.get("load_wall_start"), run.get("log")
    if not isinstance(wall_start, (int, float)) or not isinstance(log, str):
        return {"limits": {}, "lanes": {}, "events": 0}
    path = Path(log)
    if not path.exists() and base is not None:
        path = base / "logs" / path.name
    events = read_events(path)
    route = run.get("path")
    return {
        "limits": limit_steps(events, wall_start),
        "lanes": lane_steps(events, route, wall_start) if isinstance(route, str) else {},
        "events": sum(e.get("event") == "db_limit" for e in events),
    }
