"""The adaptive database limit with real parts: PostgreSQL's own count of active queries.

A storm of a query that burns PostgreSQL's CPU: past a few at once, more only
slow each other down, and the adaptive limit keeps fewer running than the pool
allows (compared with ``GUNITUNE_ADAPTIVE=off`` in the same test). A storm of an
IO-bound query keeps the whole pool busy. Real PostgreSQL, real Gunicorn
processes, real concurrent clients on 127.0.0.1; no wall-clock assertion.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import urllib.request
from typing import Any

from benchmarks.loadclient import RequestResult, request_once
from benchmarks.postgres import PostgresCluster
from tests.integration.conftest import GunicornFactory

HOST = "127.0.0.1"
WORKERS, POOL_SIZE, MAX_OVERFLOW = 2, 4, 6
CEILING = WORKERS * (POOL_SIZE + MAX_OVERFLOW)
ACTIVE = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class ActiveQueries(threading.Thread):
    """Counts PostgreSQL's active queries every 50 ms until stopped."""

    def __init__(self, cluster: PostgresCluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        conn = self.cluster.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.done.wait(0.05):
                    cur.execute(ACTIVE)
                    self.samples.append((time.monotonic(), int(cur.fetchone()[0])))
        finally:
            conn.close()

    def mean(self, start: float, end: float) -> float:
        return statistics.fmean(n for t, n in self.samples if start <= t <= end)


def _storm(port: int, path: str, n: int, body: bytes) -> list[RequestResult]:
    async def all_at_once() -> list[RequestResult]:
        return list(
            await asyncio.gather(
                *(request_once(HOST, port, path, i, expected_body=body) for i in range(n))
            )
        )

    return asyncio.run(all_at_once())


def _server(gunicorn: GunicornFactory, adaptive: str, extra: dict[str, str]) -> Any:
    server = gunicorn(
        config="python:gunitune.conf",
        env={
            "GUNITUNE_WORKERS": str(WORKERS),
            "GUNITUNE_POOL_SIZE": str(POOL_SIZE),
            "GUNITUNE_MAX_OVERFLOW": str(MAX_OVERFLOW),
            "DEMO_POOL_SIZE": str(POOL_SIZE),
            "DEMO_MAX_OVERFLOW": str(MAX_OVERFLOW),
            "GUNITUNE_ADAPTIVE": adaptive,
            "GUNITUNE_STATS_PATH": "/_gunitune",
            **extra,
        },
        probe_path="/hello",
    )
    return server


def _stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/_gunitune", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def _measured_storm(
    postgres: PostgresCluster, port: int, path: str, n: int, body: bytes
) -> tuple[list[RequestResult], ActiveQueries, float, float]:
    sampler = ActiveQueries(postgres)
    sampler.start()
    start = time.monotonic()
    try:
        results = _storm(port, path, n, body)
    finally:
        sampler.done.set()
        sampler.join(timeout=10)
    return results, sampler, start, time.monotonic()


def test_a_database_cpu_storm_runs_fewer_queries_at_once_than_the_pool(
    gunicorn: GunicornFactory, postgres: PostgresCluster
) -> None:
    means = {}
    for adaptive in ("off", "on"):
        server = _server(gunicorn, adaptive, {"DEMO_DBCPU_ROWS": "300000"})
        results, sampler, start, end = _measured_storm(
            postgres, server.port, "/dbcpu", 600, b"300000\n"
        )
        bad = [r for r in results if r.status != 200 or not r.body_ok]
        assert not bad, f"{adaptive}: {len(bad)} bad of 600, e.g. {bad[0]}"
        # The middle of the storm: not its arrival, nor its tail of last requests.
        span = end - start
        means[adaptive] = sampler.mean(start + 0.25 * span, start + 0.75 * span)
        if adaptive == "on":
            adaptive_stats = _stats(server.port)["limiter"]["adaptive"]
            assert adaptive_stats["probes"] >= 1  # it measured a lone query...
            assert "/dbcpu" in adaptive_stats["baseline_ms"]  # ...of this route
        server.stop()
    # Off, every slot runs a query (as many as the two CPUs let the workers
    # send); on, a few do and the rest wait in the lanes.
    assert means["on"] <= 0.65 * means["off"], means


def test_an_io_storm_keeps_the_whole_pool_busy(
    gunicorn: GunicornFactory, postgres: PostgresCluster
) -> None:
    server = _server(gunicorn, "on", {"DEMO_IO_SECONDS": "0.25"})
    # 600 x 0.25 s on 20 connections: 7.5 s at best.
    results, sampler, start, end = _measured_storm(
        postgres, server.port, "/io", 600, b"hello there!\n"
    )
    assert all(r.status == 200 and r.body_ok for r in results)
    # From 3 s (after the one probe of a route first seen under load) to 3/4 of the storm.
    steady = sampler.mean(start + 3.0, start + 0.75 * (end - start))
    assert steady >= 0.8 * CEILING, steady
    assert _stats(server.port)["limiter"]["db_limit"] == POOL_SIZE + MAX_OVERFLOW
