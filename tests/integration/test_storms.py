"""The seed's storms, scaled down, against gunitune and against stock gevent settings.

Real PostgreSQL, real Gunicorn, real concurrent clients on 127.0.0.1. The stock
runs are here to prove that these tests can tell the difference.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from benchmarks.loadclient import RequestResult, run_storm
from benchmarks.server import GunicornProcess, stock_args
from tests.integration.conftest import GunicornFactory

IO_BODY = b"hello there!\n"
CPU_LOOP = 5_000_000  # about 0.1 s of CPU per request here
CPU_BODY = str(sum(range(CPU_LOOP))).encode()


def _bad(results: list[RequestResult]) -> list[RequestResult]:
    return [r for r in results if r.status != 200 or not r.body_ok]


def _events(server: GunicornProcess, name: str) -> list[dict[str, object]]:
    events = []
    for line in server.log_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            events.append(json.loads(line))
    return [e for e in events if e.get("event") == name]


def _await(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def test_io_storm_3000_all_valid_and_pressure_reported(gunicorn: GunicornFactory) -> None:
    server = gunicorn(config="python:gunitune.conf", env={"DEMO_IO_SECONDS": "0.1"})
    results = run_storm("127.0.0.1", server.port, "/io", 3000, expected_body=IO_BODY)
    bad = _bad(results)
    assert not bad, f"{len(bad)} bad of 3000, e.g. {bad[0]}"
    assert server.count("QueuePool limit") == 0
    escalations = [e for e in _events(server, "pool_pressure") if e["to_state"] != "ok"]
    assert escalations, "no pool pressure event during the storm"

    def back_to_ok() -> bool:
        return any(e["to_state"] == "ok" for e in _events(server, "pool_pressure"))

    _await(back_to_ok, 30, "a pool_pressure event back to ok")


def test_cpu_storm_no_worker_killed_and_spread(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        env={"DEMO_CPU_LOOP": str(CPU_LOOP), "GUNITUNE_TIMEOUT": "10"},
    )
    workers = set(server.worker_pids())
    results = run_storm("127.0.0.1", server.port, "/cpu", 1000, expected_body=CPU_BODY)
    bad = _bad(results)
    assert not bad, f"{len(bad)} bad of 1000, e.g. {bad[0]}"
    assert server.count("WORKER TIMEOUT") == 0
    served_by = Counter(int(r.headers["x-served-by"]) for r in results)
    assert set(served_by) == workers, f"served by {served_by}, workers {workers}"
    # No worker hoards: each serves at least a fifth of its fair share.
    assert min(served_by.values()) >= 1000 / len(workers) / 5, served_by


def test_excess_requests_are_shed_with_503_and_retry_after(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        # A bound the user chose: what cannot start within 0.3 s is refused.
        env={"DEMO_IO_SECONDS": "1", "GUNITUNE_QUEUE_TIMEOUT": "0.3"},
    )
    results = run_storm("127.0.0.1", server.port, "/io", 300, expected_body=IO_BODY)
    statuses = Counter(r.status for r in results)
    assert set(statuses) == {200, 503}, statuses
    shed = [r for r in results if r.status == 503]
    assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
    # Refused quickly: queue timeout plus a little, not a pool timeout later.
    assert max(r.latency for r in shed) < 5, max(r.latency for r in shed)
    assert all(r.body_ok for r in results if r.status == 200)
    assert server.count("QueuePool limit") == 0
    assert any(e["to_state"] == "shedding" for e in _events(server, "pool_pressure"))


def test_stock_settings_fail_the_io_storm(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        args=stock_args(),
        env={"DEMO_GUNITUNE": "off", "DEMO_IO_SECONDS": "0.5", "DEMO_POOL_TIMEOUT": "2"},
    )
    results = run_storm("127.0.0.1", server.port, "/io", 1000, expected_body=IO_BODY, timeout=60)
    statuses = Counter(r.status for r in results)
    assert statuses[500] > 0, statuses
    assert server.count("QueuePool limit") > 0


# A storm that stock settings cannot survive: one worker hoards 100 requests of
# about 0.4 s CPU each, 40 s of work, and the arbiter's timeout is 5 s.
HOARD_LOOP = 20_000_000
HOARD_BODY = str(sum(range(HOARD_LOOP))).encode()


def test_stock_settings_fail_the_hoarding_cpu_storm(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        args=stock_args(timeout=5), env={"DEMO_GUNITUNE": "off", "DEMO_CPU_LOOP": str(HOARD_LOOP)}
    )
    results = run_storm("127.0.0.1", server.port, "/cpu", 100, expected_body=HOARD_BODY, timeout=90)
    assert server.count("WORKER TIMEOUT") >= 1
    assert _bad(results), "stock settings served the hoarded CPU storm cleanly"


def test_gunitune_survives_the_hoarding_cpu_storm(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        env={"DEMO_CPU_LOOP": str(HOARD_LOOP), "GUNITUNE_TIMEOUT": "5"},
    )
    results = run_storm("127.0.0.1", server.port, "/cpu", 100, expected_body=HOARD_BODY, timeout=90)
    bad = _bad(results)
    assert not bad, f"{len(bad)} bad of 100, e.g. {bad[0]}"
    assert server.count("WORKER TIMEOUT") == 0
