"""Is there a connection pooler (PgBouncer) between DATABASE_URL and PostgreSQL?

Two facts no direct connection can show, read on two short connections (in the
master's budget-read child, so no driver is imported by the master):

* **Transaction pooling** (PgBouncer's ``pool_mode = transaction``, or
  ``statement``): a server backend moves between clients at transaction ends.
  Client A reads ``pg_backend_pid()`` (its transaction ends: the backend is
  free); client B opens a transaction and reads its pid; B commits; A reads
  again. Directly, each client keeps its own backend for its whole life: B's
  pid is never A's and A's never changes. Through a transaction pooler, B gets
  A's backend (PgBouncer hands out the most recently freed one) or A comes
  back on another. Either is proof; neither waits on the other.
* **A proxy** (session pooling, a cloud SQL proxy, HAProxy): the server's
  ``inet_server_port()`` differs from the URL's port.
"""

from __future__ import annotations

import contextlib
from typing import Any

from gunitune.database_url import parse

__all__ = ["NONE", "PROXY", "TRANSACTION", "detect_pooler"]

NONE = "none"
PROXY = "proxy"
TRANSACTION = "transaction"


def _one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        if cur.description is None:  # BEGIN, COMMIT: no rows to fetch
            return None
        row = cur.fetchone()
        return row[0] if row else None
    finally:
        cur.close()


def detect_pooler(url: str, *, connect_timeout: float = 5.0) -> str:
    """``"transaction"``, ``"proxy"`` or ``"none"`` for the server behind ``url``.

    Raises what :func:`gunitune.postgres.connect` raises.
    """
    from gunitune.postgres import connect  # imports a driver: in the budget child only

    first = connect(url, connect_timeout=connect_timeout)
    second = None
    try:
        before = _one(first, "SELECT pg_backend_pid()")
        port = _one(first, "SELECT inet_server_port()")
        second = connect(url, connect_timeout=connect_timeout)
        _one(second, "BEGIN")  # autocommit connection: an explicit transaction
        borrowed = _one(second, "SELECT pg_backend_pid()")
        _one(second, "COMMIT")
        after = _one(first, "SELECT pg_backend_pid()")
    finally:
        for conn in (first, second):
            with contextlib.suppress(Exception):  # closing is best effort
                if conn is not None:
                    conn.close()
    if borrowed == before or after != before:
        return TRANSACTION
    url_port = parse(url).port or 5432
    # NULL over a Unix socket: nothing to compare.
    if port is not None and int(port) != url_port:
        return PROXY
    return NONE
