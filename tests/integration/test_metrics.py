"""Prometheus metrics of every worker, from one scrape: real Gunicorn, PostgreSQL, clients."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.loadclient import RequestResult, request_once, run_storm
from benchmarks.server import GunicornProcess
from tests.integration.conftest import GunicornFactory

IO_BODY = b"hello there!\n"
HOST = "127.0.0.1"
TOKEN = "metrics-s3cret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
Samples = list[tuple[str, dict[str, str], float]]


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, body, worker pid) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode(), response.headers["X-Served-By"]
    finally:
        conn.close()


def _scrape(port: int, headers: dict[str, str] | None = None) -> tuple[Samples, str]:
    status, body, pid = _get(port, "/metrics", headers)
    assert status == 200, body
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]
    return samples, pid


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value for n, lab, value in samples
        if n == name and all(lab.get(k) == v for k, v in labels.items())
    )  # fmt: skip


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _metrics_dir(server: GunicornProcess) -> Path:
    # The master logs with structlog's default console renderer.
    found = re.search(r"metrics_dir .*path=(\S+)", server.log_text())
    if found:
        return Path(found.group(1))
    raise AssertionError(f"no metrics_dir event in the log:\n{server.log_tail()}")


def _ok(results: list[RequestResult]) -> None:
    bad = [r for r in results if r.status != 200 or not r.body_ok]
    assert not bad, f"{len(bad)} bad of {len(results)}, e.g. {bad[0]}"


def test_one_scrape_counts_every_request_of_every_worker(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        env={
            "GUNITUNE_WORKERS": "2",
            "GUNITUNE_METRICS_PATH": "/metrics",
            "DEMO_IO_SECONDS": "0.05",
        },
        probe_path="/hello",
    )
    directory = _metrics_dir(server)
    assert directory.is_dir() and directory.name.startswith("gunitune-metrics-")
    # The readiness probe's requests came first: count from here.
    before = _total(_scrape(server.port)[0], "gunitune_requests_total", route="/hello")
    io = run_storm(HOST, server.port, "/io", 400, expected_body=IO_BODY)
    hello = run_storm(HOST, server.port, "/hello", 200, expected_body=IO_BODY)
    _ok(io + hello)
    assert len({r.served_by for r in io + hello}) == 2, "the storm did not reach both workers"
    # Each scrape is answered by one worker and must count every worker's requests.
    answered_by: set[str] = set()
    totals = set()
    # Scrapes eight at a time: an idle server's sequential requests may all be
    # accepted by the same worker, concurrent ones spread (the accept balance).
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            for samples, pid in pool.map(lambda _: _scrape(server.port), range(8)):
                answered_by.add(pid)
                io_count = _total(samples, "gunitune_requests_total", route="/io")
                assert io_count == 400, (pid, io_count)
                ok = _total(samples, "gunitune_requests_total", route="/io", outcome="ok")
                assert ok == 400
                # Every /io request queued for a slot; /hello did until learned database-free.
                assert 400 <= _total(samples, "gunitune_queue_wait_seconds_count") <= 600
                hello_count = _total(samples, "gunitune_requests_total", route="/hello")
                assert hello_count - before == 200, (pid, hello_count, before)
                totals.add(_total(samples, "gunitune_requests_total"))
            if len(answered_by) == 2 and len(totals) == 1:
                break
    assert len(answered_by) == 2, f"80 scrapes, all answered by {answered_by}"
    assert len(totals) == 1, f"scrapes disagree: {totals}"  # scrapes are not counted
    assert _total(samples, "gunitune_requests_total", route="/metrics") == 0

    def both_workers_publish() -> bool:
        cpu = [lab for n, lab, _ in _scrape(server.port)[0] if n == "gunitune_worker_cpu_ratio"]
        return {lab["pid"] for lab in cpu} == {str(p) for p in server.worker_pids()}

    _await(both_workers_publish, 10, "a CPU ratio from each worker")
    samples, _ = _scrape(server.port)
    limits = {lab["lane"]: v for n, lab, v in samples if n == "gunitune_limit"}
    assert set(limits) == {"fast", "slow", "cpu"} and all(v >= 2 for v in limits.values()), limits
    assert _total(samples, "gunitune_in_flight") == 0  # the storm is over

    # Forwarded by a proxy on this host: refused, like the stats endpoint.
    status, body, _ = _get(server.port, "/metrics", {"X-Forwarded-For": "203.0.113.7"})
    assert status == 403 and "loopback clients only" in body, (status, body)

    server.stop()
    assert not directory.exists(), "the master left its metrics directory behind"


def test_metrics_are_off_by_default(gunicorn: GunicornFactory) -> None:
    env = {"GUNITUNE_WORKERS": "1", "DEMO_IO_SECONDS": "0"}
    server = gunicorn(config="python:gunitune.conf", env=env, probe_path="/hello")
    status, _, _ = _get(server.port, "/metrics")
    assert status == 404
    assert server.count("metrics_dir") == 0
    assert "PROMETHEUS_MULTIPROC_DIR" not in psutil.Process(server.worker_pids()[0]).environ()


def test_recycled_workers_keep_their_counts_and_leave_no_gauges(
    gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"a previous run's file")
    server = gunicorn(
        config="python:gunitune.conf",
        args=["--max-requests", "60"],
        env={
            "GUNITUNE_WORKERS": "2",
            "GUNITUNE_METRICS_PATH": "/metrics",
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "DEMO_IO_SECONDS": "0.01",
            "GUNITUNE_STATS_TOKEN": TOKEN,
        },
        probe_path="/hello",
    )
    assert _metrics_dir(server) == directory
    # With a token, a forwarded request passes with it and only with it.
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert _get(server.port, "/metrics", forwarded)[0] == 403
    assert _get(server.port, "/metrics", {**forwarded, **BEARER})[0] == 200
    assert not (directory / "counter_999999.db").exists(), "stale file not cleaned at start"
    first = _scrape(server.port, BEARER)[0]
    before = _total(first, "gunitune_requests_total")
    waits_before = _total(first, "gunitune_queue_wait_seconds_count")
    served_by: set[int] = set()
    done = 0
    for _ in range(8):  # 400 requests: each worker is recycled a few times
        results = asyncio.run(_round(server.port, 50))
        _ok(results)
        served_by |= {r.served_by for r in results if r.served_by is not None}
        done += len(results)
        # Exactly what was answered, never less (a lost file) nor more (counted twice).
        samples = _scrape(server.port, BEARER)[0]
        total = _total(samples, "gunitune_requests_total")
        assert total - before == done, (total, before, done)
        waits = _total(samples, "gunitune_queue_wait_seconds_count")
        assert waits - waits_before == done, (waits, waits_before, done)
    dead = {pid for pid in served_by if not psutil.pid_exists(pid)}
    assert len(dead) >= 2, f"no worker was recycled: served by {served_by}"

    def dead_files() -> list[str]:
        return [f.name for f in directory.iterdir() if any(f"_{p}.db" in f.name for p in dead)]

    _await(lambda: not dead_files(), 10, "the dead workers' files to be dropped or folded")
    assert (directory / "counter_archive.db").exists()
    assert (directory / "histogram_archive.db").exists()
    samples = _scrape(server.port, BEARER)[0]
    assert _total(samples, "gunitune_requests_total") - before == done
    assert _total(samples, "gunitune_queue_wait_seconds_count") - waits_before == done
    live = {int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("gauge_*.db")}
    assert live <= set(server.worker_pids()), (live, server.worker_pids())
    assert os.listdir(directory)  # the user's directory is theirs: left in place


async def _round(port: int, n: int) -> list[RequestResult]:
    return list(
        await asyncio.gather(
            *(request_once(HOST, port, "/io", i, expected_body=IO_BODY) for i in range(n))
        )
    )
