"""The fault benchmark's pure figures (benchmarks/fault_figures.py) and its command line."""

from __future__ import annotations

import pytest

from benchmarks import fault_figures as ff
from benchmarks.fault_scenarios import QUICK, FaultSettings
from benchmarks.faults import parse_args
from benchmarks.loadclient import RequestResult


def _r(
    start: float, end: float, status: int | None = 200, error: str | None = None,
    retry_after: str | None = None, ok: bool | None = None,
) -> RequestResult:  # fmt: skip
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    body_ok = status == 200 if ok is None else ok
    return RequestResult(0, "/io", status=None if error else status, error=error,
                         started=100 + start, finished=100 + end, headers=headers,
                         body_ok=body_ok and error is None)  # fmt: skip


def test_outcome_sorts_every_kind() -> None:
    cases = {
        "200": _r(0, 1),
        "503+RA": _r(0, 1, 503, retry_after="2"),
        "503": _r(0, 1, 503),
        "500": _r(0, 1, 500),
        "other": _r(0, 1, 200, ok=False),
        "reset": _r(0, 1, error="closed"),
        "timeout": _r(0, 1, error="timeout"),
        "refused": _r(0, 1, error="refused"),
        "error": _r(0, 1, error="oserror:EMFILE"),
    }
    assert {k: ff.outcome(r) for k, r in cases.items()} == {k: k for k in cases}
    assert ff.outcome(_r(0, 1, 404)) == "other"
    assert ff.outcome(_r(0, 1, error="incomplete")) == "reset"
    c = ff.counts(list(cases.values()))
    assert c["requests"] == 9 and c["200"] == 1 and c["ok_share"] == pytest.approx(1 / 9)
    assert c["other_statuses"] == {"200": 1}
    assert c["error_kinds"] == {"closed": 1, "oserror:EMFILE": 1, "refused": 1, "timeout": 1}


def test_full_service_is_the_last_failure_after_the_return() -> None:
    back = 10.0
    # A failure before the return does not count; the last one after it does.
    results = [_r(0, 8, 500), _r(9, 11.5, 500), _r(9, 12.25, 503, retry_after="1"),
               _r(12, 12.5), _r(13, 13.1)]  # fmt: skip
    assert ff.full_service(results, 100, back) == pytest.approx(2.25)
    assert ff.full_service([_r(0, 8, 500), _r(11, 11.2)], 100, back) == 0.0
    # The last request to finish failed: service never came back within the run.
    assert ff.full_service([_r(11, 11.2), _r(11, 12, error="timeout")], 100, back) is None
    assert ff.full_service([], 100, back) is None


def test_answered_within_counts_from_the_drop_start() -> None:
    results = [_r(0, 1), _r(0, 9, 503, retry_after="1"), _r(6, 8), _r(20, 21)]
    w = ff.answered_within(results, 100, 5.0, 15.0)
    assert w["requests"] == 2 and w["outcomes"] == {"503+RA": 1, "200": 1}
    assert w["max_wait"] == pytest.approx(4.0)  # 9 - 5: waited since the drop, not since 0


_LOG = """[2026-01-01 00:00:00 +0000] [10] [INFO] Booting worker with pid: 11
[2026-01-01 00:00:01,000] ERROR in app: Exception on /io [GET]
Traceback (most recent call last):
  File "x.py", line 1, in f
psycopg2.OperationalError: server closed the connection unexpectedly

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "y.py", line 2, in g
sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) server closed
[2026-01-01 00:00:02 +0000] [10] [ERROR] Worker (pid:11) exited with code 1
[2026-01-01 00:00:02 +0000] [10] [INFO] Booting worker with pid: 12
"""


def test_log_figures_count_500s_once_and_worker_deaths() -> None:
    f = ff.log_figures(_LOG, [11, 13], [12, 13])
    assert f["tracebacks"] == 1 and f["traceback_blocks"] == 2
    assert f["first_exception"] == "psycopg2.OperationalError: server closed the connection " \
                                   "unexpectedly"  # fmt: skip
    assert f["exceptions"] == {"psycopg2.OperationalError": 1, "sqlalchemy.exc.OperationalError": 1}
    assert (f["worker_boots"], f["workers_exited"], f["workers_gone"]) == (2, 1, [11])


def test_target_rows() -> None:
    assert ff.target("x", "0", 0, True)["result"] == "pass"
    assert ff.target("x", "0", 3, False)["result"] == "FAIL"
    assert ff.target("x", "0", None, None)["result"] == "n/a"


def test_cli_defaults_quick_and_overrides() -> None:
    o = parse_args([])
    assert o.settings == FaultSettings() and o.scenarios == ("restart", "cold", "blackhole",
                                                             "reload")  # fmt: skip
    o = parse_args(["--quick", "--scenario", "cold,restart", "--fault", "proxy", "--outage", "1"])
    assert o.scenarios == ("restart", "cold")
    assert o.settings.requests == QUICK.requests and o.settings.quick
    assert (o.settings.fault, o.settings.outage) == ("proxy", 1.0)
    with pytest.raises(SystemExit):
        parse_args(["--scenario", "meteor"])
    with pytest.raises(SystemExit):
        parse_args(["--requests", "0"])
