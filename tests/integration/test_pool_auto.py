"""GUNITUNE_POOL=auto against a real PostgreSQL with max_connections=100 and real Gunicorn."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.loadclient import run_storm
from benchmarks.pg_watch import ConnectionWatch
from benchmarks.postgres import PostgresCluster, start_cluster
from benchmarks.server import GunicornProcess
from tests.integration.conftest import GunicornFactory

IO_BODY = b"hello there!\n"


@pytest.fixture(scope="module")
def small_postgres() -> Iterator[PostgresCluster]:
    cluster = start_cluster(max_connections=100)
    try:
        yield cluster
    finally:
        cluster.stop()


def master_line(server: GunicornProcess, name: str) -> str:
    """The master's one line of an event (structlog's console renderer: the app is not
    loaded there, so its JSON logging is not configured)."""
    (line,) = [ln for ln in server.log_text().splitlines() if f"] {name} " in ln]
    return line


def events(server: GunicornProcess, name: str) -> list[dict[str, Any]]:
    """A worker's JSON log lines of one event (the demo app configures JSON)."""
    found = []
    for line in server.log_text().splitlines():
        if f'"{name}"' in line and line.lstrip().startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def await_events(server: GunicornProcess, name: str, count: int) -> list[dict[str, Any]]:
    """The ``count`` workers' ``name`` events: ready means one worker answered, not all."""
    deadline = time.monotonic() + 60
    while len(found := events(server, name)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} {name} events after 60 s"
        time.sleep(0.1)
    return found


def test_default_pools_take_the_share_and_stay_within_it(
    gunicorn: GunicornFactory, small_postgres: PostgresCluster
) -> None:
    env = {
        "DATABASE_URL": small_postgres.app_url,
        "GUNITUNE_POOL": "auto",
        "GUNITUNE_WORKERS": "3",
        "DEMO_IO_SECONDS": "0.5",
    }
    server = gunicorn(config="python:gunitune.conf", env=env, probe_path="/health")
    auto = master_line(server, "pool_auto")
    # 100 - 3 superuser-reserved = 97; headroom 2 x 3 + 10 = 16; 81 / 3 workers = 27.
    for figure in ("pool_size=9", "max_overflow=18", "per_worker=27", "headroom=16"):
        assert figure in auto, auto
    applied = await_events(server, "pool_share_applied", 3)
    assert len(applied) == 3 and all("resized" in a["engines"][0] for a in applied)
    ready = await_events(server, "worker_ready", 3)
    assert sorted(r["db_slots"] for r in ready) == [27, 27, 27]  # the lanes follow the pool

    with ConnectionWatch(small_postgres.connect) as watch:
        results = run_storm("127.0.0.1", server.port, "/io", 600, expected_body=IO_BODY)
    bad = [r for r in results if r.status != 200 or not r.body_ok]
    assert not bad, f"{len(bad)} bad responses, first: {bad[0]}"
    assert watch.samples > 5, watch.samples
    # More than SQLAlchemy's default pools could open (3 x 15 = 45), never more than
    # the share (81), nor than max_connections - reserved.
    assert 45 < watch.peak_tagged <= 81, (watch.peak_tagged, watch.peak)
    assert watch.peak <= 97, watch.peak
    workers = set(server.worker_pids())
    tagged_pids = {int(name.rsplit("/", 1)[1]) for name in watch.names}
    assert workers <= tagged_pids, (workers, watch.names)
    assert server.count("too many clients") == 0


def test_an_explicit_pool_is_kept(
    gunicorn: GunicornFactory, small_postgres: PostgresCluster
) -> None:
    env = {
        "DATABASE_URL": small_postgres.app_url,
        "GUNITUNE_POOL": "auto",
        "GUNITUNE_WORKERS": "2",
        "DEMO_POOL_SIZE": "4",
        "DEMO_MAX_OVERFLOW": "6",
        "DEMO_IO_SECONDS": "0",
    }
    server = gunicorn(config="python:gunitune.conf", env=env, probe_path="/health")
    assert "per_worker=" in master_line(server, "pool_auto")
    kept = await_events(server, "pool_explicit_kept", 2)
    assert len(kept) == 2 and "GUNITUNE_POOL=auto would give" in kept[0]["advice"]
    assert sorted(r["db_slots"] for r in await_events(server, "worker_ready", 2)) == [10, 10]
