"""What the adaptive scenarios sample while their load runs, each in a background thread.

* :class:`ActiveQueries`: queries PostgreSQL is running right now, every 0.1 s,
  from the benchmark's own connection: the knee's measured quantity.
* :class:`LimitsPoller`: gunitune's stats view, every 0.25 s on a fresh loopback
  connection, one attempt: which worker answered, its lane limits, a route's lane.
* :func:`query_seconds`: the time of ``/dbcpu``'s query, unloaded.

Threads rather than the load's event loop: a sample must be taken on time
while thousands of the load's connections keep that loop busy.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import statistics
import threading
import time
from typing import Any

import psycopg2

from benchmarks.adaptive_figures import parse_stats

__all__ = ["ACTIVE_QUERIES", "ActiveQueries", "LimitsPoller", "query_seconds"]

HOST = "127.0.0.1"
# Client backends running a statement, the sampler's own and the benchmark's other
# pollers (ServerProbe) left out: what the app has PostgreSQL working on.
ACTIVE_QUERIES = (
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    " AND datname = current_database()"
    " AND application_name NOT LIKE 'gunitune-bench-%'"
)
DBCPU_QUERY = "SELECT count(*) FROM generate_series(1, %s)"


class _Poller:
    """Calls ``poll()`` every ``interval`` s on a fixed schedule until ``stop()``."""

    name = "poller"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.polls = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Take one sample (never raises: a failed sample is counted and skipped)."""
        raise NotImplementedError

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self.polls += 1
            self.poll()
            # On schedule, not interval after the last answer: a slow answer
            # delays one sample, not every later one.
            due = max(due + self.interval, time.monotonic())
            self._stop.wait(max(0.0, due - time.monotonic()))

    def start(self) -> None:
        """Take the first sample now, then on schedule in a thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (waits for the sample in flight)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class ActiveQueries(_Poller):
    """``(monotonic time, active queries)`` every 0.1 s."""

    name = "active-queries"

    def __init__(self, database_url: str, interval: float = 0.1) -> None:
        super().__init__(interval)
        self.database_url = database_url
        self.samples: list[tuple[float, int]] = []
        self._conn: Any = None

    def poll(self) -> None:
        try:
            if self._conn is None:
                self._conn = psycopg2.connect(
                    self.database_url, connect_timeout=5, application_name="gunitune-bench-active"
                )
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(ACTIVE_QUERIES)
                t = time.monotonic()
                self.samples.append((t, int(cur.fetchone()[0])))
        except psycopg2.Error:
            # A full max_connections must not end the run: reconnect at the next sample.
            self.failures += 1
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def stop(self) -> None:
        super().stop()
        self._close()


class LimitsPoller(_Poller):
    """``(monotonic time, parse_stats(answer))`` every 0.25 s; failed polls only counted.

    Each poll is one fresh connection (``Connection: close``), one attempt, a short
    timeout: it lands on whichever worker accepts it, so every worker shows up
    over time, each with its own series.
    """

    name = "limits-poller"

    def __init__(
        self, port: int, path: str, route: str | None = None, interval: float = 0.25,
        timeout: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__(interval)
        self.port, self.path, self.route, self.timeout = port, path, route, timeout
        self.samples: list[tuple[float, dict[str, Any]]] = []

    def poll(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            doc = json.loads(body) if response.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            doc = None
        finally:
            conn.close()
        if isinstance(doc, dict):
            self.samples.append((time.monotonic(), parse_stats(doc, self.route)))
        else:
            self.failures += 1


def query_seconds(database_url: str, rows: int, seconds: float = 1.0) -> dict[str, Any]:
    """Wall seconds of ``/dbcpu``'s query run alone: median of >= 5 runs and ``seconds``.

    Wall time on the client is PostgreSQL's CPU time here: the query reads no
    table, and the server is on this machine with nothing else running.
    """
    conn = psycopg2.connect(database_url, connect_timeout=10, application_name="gunitune-bench-q")
    times: list[float] = []
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(DBCPU_QUERY, (rows,))  # warm-up: plan, caches
        while len(times) < 5 or (sum(times) < seconds and len(times) < 200):
            start = time.perf_counter()
            cur.execute(DBCPU_QUERY, (rows,))
            cur.fetchone()
            times.append(time.perf_counter() - start)
    return {"rows": rows, "seconds": statistics.median(times), "n": len(times),
            "min": min(times), "max": max(times)}  # fmt: skip
