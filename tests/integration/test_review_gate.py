"""Review: the accept gate against a real Gunicorn and PostgreSQL.

An idle worker must take a new connection once its window has reopened, even
while a client keeps its own keep-alive connection busy with light requests.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

from tests.integration.conftest import GunicornFactory


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_worker_accepts_again_once_its_window_reopens(gunicorn: GunicornFactory) -> None:
    server = gunicorn(
        config="python:gunitune.conf",
        env={
            "GUNITUNE_WORKERS": "1",
            "DEMO_CPU_LOOP": "20000000",  # ~0.25 s of CPU
            "GUNITUNE_CPU_BUDGET": "0.05",  # one such request closes the window to 1
            "GUNITUNE_STATS_PATH": "/_gunitune",
        },
        probe_path="/hello",
    )
    keep = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    other: dict[str, float] = {}

    def new_client() -> None:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            if _get(conn, "/hello")[0] == 200:
                other["latency"] = time.monotonic() - started
        finally:
            conn.close()

    thread = threading.Thread(target=new_client)
    try:
        assert _get(keep, "/cpu")[0] == 200
        stats = json.loads(_get(keep, "/_gunitune")[1])
        assert stats["accept_window"]["window"] == 1
        thread.start()
        # Light requests on the same connection reopen the window. The connection
        # is never idle longer than Gunicorn's keepalive (2 s): a server-side close
        # is the only thing that lets the other client in.
        deadline = time.monotonic() + 7
        while "latency" not in other and time.monotonic() < deadline:
            assert _get(keep, "/fast")[0] == 200
            time.sleep(0.3)
        stats = json.loads(_get(keep, "/_gunitune")[1])
        assert stats["accept_window"]["window"] > 1
        assert "latency" in other, "a new client still waits: the worker is idle but not accepting"
    finally:
        keep.close()
        thread.join(timeout=30)
