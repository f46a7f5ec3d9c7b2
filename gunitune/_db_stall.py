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

from gunitune._db_timeouts import CONNECT_DEFAULTS
from gunitune.postgres import unreachable_error

__all__ = ["STALL_SECONDS", "StallWatch"]

log = structlog.get_logger("gunitune")
STALL_SECONDS = 3.0  # connections out and none back for this long: ask the database
_PROBE_CONNECT_TIMEOUT = 2  # libpq's smallest
_TICK_SECONDS = 1.0
_SILENT = frozenset({"timeout", "refused", "dns"})  # how a connect fails when nobody answers


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
        self._out: dict[int, dict[int, Any]] = {id(e): {} for e in engines}
        self._progress: dict[int, float] = {id(e): clock() for e in engines}
        self._engines = {id(e): e for e in engines}
        self._thread: threading.Thread | None = None
        for engine in engines:
            key = id(engine)
            event.listen(engine, "checkout", lambda c, r, p, key=key: self._checkout(key, c))
            event.listen(engine, "checkin", lambda c, r, key=key: self._checkin(key, c))

    def _checkout(self, key: int, dbapi_connection: Any) -> None:
        out = self._out[key]
        if not out:
            self._progress[key] = self._clock()  # the wait starts now, not at the last checkin
        out[id(dbapi_connection)] = dbapi_connection
        if self._thread is None:
            # A thread, green under gevent's monkey-patching; started on first use,
            # in the worker (not in a master that imports the app).
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def _checkin(self, key: int, dbapi_connection: Any) -> None:
        self._out[key].pop(id(dbapi_connection), None)
        self._progress[key] = self._clock()

    def _watch(self) -> None:
        while True:
            time.sleep(_TICK_SECONDS)
            for key, out in self._out.items():
                if out and self._clock() - self._progress[key] >= STALL_SECONDS:
                    self._check(key)

    def _check(self, key: int) -> None:
        engine = self._engines[key]
        if _answers(engine):
            self._progress[key] = self._clock()  # slow queries, a live database
            return
        waiting = list(self._out[key].values())
        log.warning("db_stalled", connections_waiting=len(waiting), pid=os.getpid())
        self._on_stall(engine)
        for dbapi_connection in waiting:
            _shut_down(dbapi_connection)
        self._progress[key] = self._clock()


def _answers(engine: Engine) -> bool:
    """Whether a fresh connection, outside the pool, runs ``SELECT 1`` within a few seconds."""
    from gevent import Timeout, monkey

    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams = {**CONNECT_DEFAULTS, **cparams, "connect_timeout": _PROBE_CONNECT_TIMEOUT}
    patched = monkey.is_module_patched("threading")
    deadline = Timeout(2 * _PROBE_CONNECT_TIMEOUT + 1) if patched else contextlib.nullcontext()
    conn = None
    try:
        with deadline:
            conn = engine.dialect.connect(*cargs, **cparams)
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
        return True
    except Timeout:
        return False
    except Exception as exc:
        # A server that says "too many clients" or rejects a login is alive.
        return unreachable_error("postgresql://", exc).kind not in _SILENT
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
