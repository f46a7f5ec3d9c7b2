"""The adaptive benchmarks' per-worker series from a synthetic server log: JSON event
lines among Gunicorn's plain-text ones. Nothing here starts a process."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from benchmarks import adaptive_log as alog
from benchmarks.adaptive_plot import plot_adaptive
from benchmarks.adaptive_report import adaptive_sections

T0 = "2026-11-28T02:02:30Z"
START = datetime(2026, 11, 28, 2, 2, 30, tzinfo=timezone.utc).timestamp()


def _event(name: str, second: float, pid: Any, **fields: Any) -> str:
    stamp = f"2026-11-28T02:02:{30 + second:06.3f}Z"  # seconds since T0
    return json.dumps({**fields, "pid": pid, "event": name, "level": "info", "timestamp": stamp})


def _limit(second: float, pid: Any, limit: int, was: int, probing: bool = False) -> str:
    return _event("db_limit", second, pid, limit=limit, was=was, ceiling=10, probing=probing)


def _lane(second: float, pid: int, route: str, lane: str, was: str) -> str:
    return _event("route_lane", second, pid, route=route, lane=lane, db_lane=lane, was=was)


LOG = [
    "[2026-11-28 02:02:28 +0000] [4287] [INFO] Starting gunicorn 27.0.1",
    "2026-11-28 02:02:28 [info     ] postgres_budget_ok             needed=30",
    _event("worker_ready", -2.0, 11, db_slots=10),
    _limit(-1.0, 11, 8, 10),  # before the load: worker 11 starts it at 8
    "[2026-11-28 02:02:29 +0000] [4287] [INFO] Booting worker with pid: 12",
    _limit(1.5, 11, 1, 8, probing=True),
    '{"limit": 3, "was": 1, "pid": 11, "event": "db_lim',  # cut short
    _limit(2.5, 11, 4, 1),
    _limit(3.0, 12, 6, 10),  # no earlier line: worker 12 starts at its "was"
    _event("worker_ready", 5.0, 13, db_slots=10),  # booted during the load
    _limit(6.0, 13, 2, 10, probing=True),
    _limit(4.0, True, 5, 10),  # a flag is no pid
    _event("pool_pressure", 4.0, 11, to_state="saturated"),
    _lane(-0.5, 11, "/work", "slow", "fast"),
    _lane(7.0, 11, "/work", "cpu", "slow"),
    _lane(8.0, 12, "/work", "cpu", "fast"),
    _lane(8.5, 12, "/health", "exempt", "fast"),
    "[2026-11-28 02:02:40 +0000] [4287] [INFO] Handling signal: term",
]


@pytest.mark.parametrize(
    ("stamp", "offset"),
    [(T0, 0.0), ("2026-11-28T02:02:34.22Z", 4.22), ("2026-11-28T02:02:34.226079+00:00", 4.226079),
     ("2026-11-28T02:02:30.5", 0.5), ("2026-11-28T04:02:30+02:00", 0.0)],
)  # fmt: skip
def test_log_time(stamp: str, offset: float) -> None:
    assert alog.log_time(stamp) == pytest.approx(START + offset)


@pytest.mark.parametrize("stamp", ["2026-11-28 02:02:30", "yesterday", 1795831350, None])
def test_log_time_rejects(stamp: Any) -> None:
    assert alog.log_time(stamp) is None


def test_parse_events_skips_plain_and_broken_lines() -> None:
    events = alog.parse_events(LOG)
    assert [e["event"] for e in events].count("db_limit") == 6  # the flag pid one too
    assert {e["event"] for e in events} == set(alog.EVENTS)  # pool_pressure left out
    assert alog.parse_events(["[1, 2]", "{}", "not json"]) == []


def test_limit_steps() -> None:
    steps = alog.limit_steps(alog.parse_events(LOG), START)
    assert set(steps) == {"11", "12", "13"}
    assert steps["11"] == {"t": [0.0, 1.5, 2.5], "value": [8, 1, 4],
                           "probing": [False, True, False]}  # fmt: skip
    assert steps["12"] == {"t": [0.0, 3.0], "value": [10, 6], "probing": [False, False]}
    assert steps["13"] == {"t": [5.0, 6.0], "value": [10, 2], "probing": [False, True]}


def test_lane_steps_of_one_route() -> None:
    steps = alog.lane_steps(alog.parse_events(LOG), "/work", START)
    assert steps == {
        "11": {"t": [0.0, 7.0], "value": ["slow", "cpu"], "probing": [False, False]},
        "12": {"t": [0.0, 8.0], "value": ["fast", "cpu"], "probing": [False, False]},
    }
    assert alog.lane_steps(alog.parse_events(LOG), "/other", START) == {}


def _knee_run(log: Path, **extra: Any) -> dict[str, Any]:
    return {
        "scenario": "knee", "config": "gunitune", "path": "/work", "log": str(log),
        "storm": {"span": 10.0}, "active_queries": {"series": [[0.0, 1], [9.0, 2]]},
        "probes": {}, **extra,
    }  # fmt: skip


def test_run_log_series(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "gunitune-knee.log"
    log.write_text("\n".join(LOG) + "\n")
    series = alog.run_log_series(_knee_run(log, load_wall_start=START))
    assert series["events"] == 6
    assert set(series["limits"]) == {"11", "12", "13"} and set(series["lanes"]) == {"11", "12"}
    # A run from before load_wall_start was recorded has no log series: the stats remain.
    assert alog.run_log_series(_knee_run(log)) == {"limits": {}, "lanes": {}, "events": 0}
    # A results directory moved elsewhere: its logs are found next to the plot.
    moved = _knee_run(tmp_path / "gone" / log.name, load_wall_start=START)
    assert alog.run_log_series(moved)["events"] == 0
    assert alog.run_log_series(moved, tmp_path)["events"] == 6


def _limits_seen_cell(run: dict[str, Any]) -> str:
    base = {"requests": 1, "valid": 1, "throughput": 1.0, "limit": None, "ratio": None}
    doc = {
        **run,
        "storm": {**run["storm"], **base},
        "active_queries": {"mean": 1.0, "p95": 1.0, "max": 2},
        "server": {"worker_timeouts": 0},
    }
    lines = adaptive_sections({"runs": [doc]})
    return next(line for line in lines if line.startswith("| gunitune"))


def test_report_and_plot_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "gunitune-knee.log"
    log.write_text("\n".join(LOG) + "\n")
    run = _knee_run(log, load_wall_start=START)
    assert "database 1–10 (log)" in _limits_seen_cell(run)
    assert plot_adaptive({"runs": [run]}, tmp_path / "adaptive.png")
    assert (tmp_path / "adaptive.png").stat().st_size > 0
