"""A database outage while a worker recycles must not stop the whole server.

Gunicorn halts the arbiter when a worker exits with code 3 (boot error). The
driver check at worker start connects to PostgreSQL; when the database is
briefly down, a routine ``max_requests`` recycle then ends every worker.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.postgres import start_cluster
from benchmarks.server import http_answers
from tests.integration.conftest import GunicornFactory


@pytest.mark.parametrize("green_check", ["warn", "error"])
def test_worker_recycle_during_a_database_outage_keeps_serving(
    gunicorn: GunicornFactory, green_check: str
) -> None:
    cluster = start_cluster(max_connections=40)
    try:
        server = gunicorn(
            config="python:gunitune.conf",
            args=["--max-requests", "3"],
            env={
                "DATABASE_URL": cluster.app_url,
                "GUNITUNE_WORKERS": "1",
                "GUNITUNE_GREEN_CHECK": green_check,
            },
            probe_path="/hello",
        )
        cluster.stop()  # the database restarts / fails over
        for _ in range(4):  # /hello needs no database; the 3rd recycles the worker
            http_answers("127.0.0.1", server.port, "/hello")
        time.sleep(4)
        assert server.is_running(), server.log_tail()
        assert http_answers("127.0.0.1", server.port, "/hello"), server.log_tail()
    finally:
        cluster.stop()
