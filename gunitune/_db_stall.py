"""Find a database that has gone silent: connections out, nothing back, no new one either.

A server that stops answering without closing anything (a host that drops
packets, a frozen VM) raises no error: queries just wait, each holding its
slot, until TCP keepalives give up. Each engine's checked-out connections are
watched; when none has come back for :data:`STALL_SECONDS`, one fresh
connection (outside the pool) runs ``SELECT 1`` under a short deadline. A slow
database answers it and nothing happens; a silent one does not: the circuit
opens and the waiting connections' sockets are shut down, so their requests
end now (503 + ``Retry-After``) instead of minutes later.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gunitune._isolated import after_fork_in_child
from gunitune.postgres import unreachable_error

__all__ = [
    "ANSWERED", "LOGGED_IN", "REFUSED", "SILENT", "STALL_SECONDS", "StallWatch", "fresh_select_one",
]

log = structlog.get_logger("gunitune")
STALL_SECONDS = 2.5  # connections out and none back for this long: ask the database
# A login that takes longer counts as no answer. Stall + login stay within a
# 5 s queue timeout; a database so loaded that logins take 2.5 s is the known
# cost (its waiting queries would be ended). Under threads, no deadline of ours:
# the connect timeout gunitune gives each connection (5 s) bounds the login.
_PROBE_LOGIN_SECONDS = 2.5
_PROBE_QUERY_SECONDS = 2.0
_TICK_SECONDS = 1.0
_SILENT = frozenset({"timeout", "dns"})  # how a connect fails when nobody answers


class StallWatch:
    """Checked-out connections per engine; calls ``on_stall(engine)`` for a silent database."""

    def __init__(
        self,
        engines: list[Engine],
        on_stall: Callable[[Engine], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_stall = on_stall
        self._clock = clock
        # Keyed by pool record: SQLAlchemy's checkin of a broken connection
        # passes None for the DBAPI connection, never the record.
        self._out: dict[int, dict[int, Any]] = {id(e): {} for e in engines}
        self._progress: dict[int, float] = {id(e): clock() for e in engines}
        self._engines = {id(e): e for e in engines}
        self._thread: threading.Thread | None = None
        for engine in engines:
            key = id(engine)
            event.listen(engine, "checkout", lambda c, r, p, key=key: self._checkout(key, c, r))
            event.listen(engine, "checkin", lambda c, r, key=key: self._checkin(key, r))
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        # A master that ran queries (preload_app) forks no thread: start anew.
        self._thread = None
        for key, out in self._out.items():
            out.clear()
            self._progress[key] = self._clock()

    def _checkout(self, key: int, dbapi_connection: Any, record: Any) -> None:
        out = self._out[key]
        if not out:
            self._progress[key] = self._clock()  # the wait starts now, not at the last checkin
        out[id(record)] = dbapi_connection
        if self._thread is None:
            # A thread, green under gevent's monkey-patching; started on first use.
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def _checkin(self, key: int, record: Any) -> None:
        self._out[key].pop(id(record), None)
        self._progress[key] = self._clock()

    def _watch(self) -> None:
        while True:
            time.sleep(_TICK_SECONDS)
            for key, out in self._out.items():
                if out and self._clock() - self._progress[key] >= STALL_SECONDS:
                    self._check(key)

    def _check(self, key: int) -> None:
        engine = self._engines[key]
        if fresh_select_one(engine) != SILENT:
            self._progress[key] = self._clock()  # slow queries, a live database
            return
        waiting = list(self._out[key].values())
        log.warning("db_stalled", connections_waiting=len(waiting), pid=os.getpid())
        self._on_stall(engine)
        for dbapi_connection in waiting:
            _shut_down(dbapi_connection)
        self._progress[key] = self._clock()


ANSWERED, LOGGED_IN, SILENT, REFUSED = "answered", "logged in", "silent", "refused"


def fresh_select_one(engine: Engine) -> str:
    """``SELECT 1`` on a new connection outside the pool, made as the pool makes them.

    :data:`ANSWERED`: it ran. :data:`LOGGED_IN`: the login worked (or the server
    refused it in words: too many clients, auth) but the query did not finish in
    time: a busy database or a pooler's queue, alive either way. :data:`SILENT`:
    no answer to the connect or the login. :data:`REFUSED`: nothing listens.
    """
    from gevent import Timeout, monkey

    patched = monkey.is_module_patched("threading")

    def deadline(seconds: float) -> Any:
        return Timeout(seconds) if patched else contextlib.nullcontext()

    conn = None
    try:
        try:
            # The pool's own creator: the app's connect_args, do_connect
            # listeners (tokens, gunitune's timeouts and tag) all apply.
            with deadline(_PROBE_LOGIN_SECONDS):
                conn = engine.pool._creator()  # type: ignore[call-arg]
        except Timeout:
            return SILENT
        except Exception as exc:
            kind = unreachable_error("postgresql://", exc).kind
            return REFUSED if kind == "refused" else SILENT if kind in _SILENT else LOGGED_IN
        try:
            with deadline(_PROBE_QUERY_SECONDS):
                cursor = conn.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchall()
        except (Exception, Timeout):
            return LOGGED_IN
        return ANSWERED
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _shut_down(dbapi_connection: Any) -> None:
    """End every wait on this connection: its socket reads EOF, the driver raises."""
    with contextlib.suppress(Exception):
        fd = os.dup(dbapi_connection.fileno())
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)
