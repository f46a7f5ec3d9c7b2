"""Sample a PostgreSQL's client connections while something runs: the peak, by tag.

A thread polls ``pg_stat_activity`` on its own connection (excluded from the
counts) every ``interval`` seconds until stopped; ``peak`` is the most client
backends seen at once, ``peak_tagged`` the most tagged ``gunitune/...``.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE application_name LIKE 'gunitune/%'),
       array_agg(DISTINCT application_name) FILTER (WHERE application_name LIKE 'gunitune/%')
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


class ConnectionWatch:
    """``with ConnectionWatch(cluster.connect) as watch: ...``, then ``watch.peak``."""

    def __init__(self, connect: Any, interval: float = 0.05) -> None:
        self._connect = connect
        self.interval = interval
        self.peak = 0
        self.peak_tagged = 0
        self.samples = 0
        self.names: set[str] = set()
        self.series: list[tuple[float, int]] = []  # (time.monotonic(), client backends)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-watch", daemon=True)
        self._conn: Any = None

    def _run(self) -> None:
        cur = self._conn.cursor()
        while not self._stop.is_set():
            cur.execute(_SQL)
            total, tagged, names = cur.fetchone()
            self.series.append((time.monotonic(), int(total)))
            self.peak = max(self.peak, int(total))
            self.peak_tagged = max(self.peak_tagged, int(tagged))
            self.names.update(names or ())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionWatch:
        self._conn = self._connect()
        self._conn.autocommit = True
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()
