"""The database circuits of one worker: hold the lanes while the database is away.

Each engine has a :class:`gunitune.core.circuit.Circuit`. The first outage
error (a lost connection, a refused connect, a server shutting down) opens it:
the database lanes stop admitting, so queued requests wait for the database
instead of each failing in turn; one greenlet probes the database (one
``SELECT 1``, backing off); its success closes the circuit and the lanes go on.
Requests that waited longer than the outage wait get 503 + ``Retry-After``.
Connections opened before the outage are replaced at their next checkout, so
the first requests after a restart do not meet dead sockets.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

from gunitune._db_stall import ANSWERED, StallWatch, fresh_select_one
from gunitune._isolated import after_fork_in_child
from gunitune.core.circuit import Circuit
from gunitune.database_url import masked
from gunitune.postgres import unreachable_error

if TYPE_CHECKING:
    from gunitune.limiter import Limiter

__all__ = ["DbCircuits", "outage_error"]

log = structlog.get_logger("gunitune")
# SQLSTATEs of a server going away: admin/crash shutdown, "cannot connect now"
# (starting up), and class 08 (connection exceptions).
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03"})
# A connect that failed for these reasons is an outage; auth, a missing
# database or a bad URL are configuration errors that waiting will not fix.
_OUTAGE_CONNECT_KINDS = frozenset({"refused", "timeout", "starting", "dns"})
_LOG_PROBE_FAILURES_EVERY = 10


def outage_error(context: Any) -> bool:
    """Did this failure (a SQLAlchemy ``ExceptionContext``) come from the database being away?"""
    if getattr(context, "is_pre_ping", False):
        return False  # a stale pooled connection: the pool retries with a fresh one
    original = context.original_exception
    if not isinstance(original, Exception):
        return False  # GreenletExit, gevent.Timeout: the request was interrupted
    if context.is_disconnect:
        return True
    code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
    if isinstance(code, str):
        return code in _OUTAGE_STATES or code.startswith("08")
    connect_failed = context.connection is None
    if connect_failed and isinstance(context.sqlalchemy_exception, exc.OperationalError):
        # A failed connect carries no SQLSTATE: classify libpq's message.
        return unreachable_error("postgresql://", original).kind in _OUTAGE_CONNECT_KINDS
    return False


class DbCircuits:
    """The circuits of a worker's engines, holding ``limiter``'s database lanes while open."""

    def __init__(
        self,
        engines: list[Engine],
        limiter: Callable[[], Limiter | None],
        *,
        outage_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._outage_wait = outage_wait
        self._clock = clock
        self._circuits = {id(e): (e, Circuit()) for e in engines}
        self._outage_started: dict[int, float] = {}  # wall clock: pool records use time.time()
        self._lock = threading.Lock()
        for engine in engines:
            replace = functools.partial(self._replace_stale, id(engine))
            event.listen(engine, "checkout", replace, insert=True)
        self._stalls = StallWatch(engines, self.stalled, clock)
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        # An outage met in a master (preload_app) forks no probe thread: the
        # workers start closed and find the outage themselves.
        self._circuits = {key: (engine, Circuit()) for key, (engine, _) in self._circuits.items()}
        self._outage_started.clear()

    @property
    def any_open(self) -> bool:
        """Some database is away: its requests wait."""
        return any(not c.is_closed for _, c in self._circuits.values())

    def open_for(self) -> float:
        """Seconds the longest current outage has lasted (0 when all are closed)."""
        now = self._clock()
        return max((now - c.opened_at for _, c in self._circuits.values() if not c.is_closed),
                   default=0.0)  # fmt: skip

    def on_error(self, context: Any) -> bool:
        """A query or connect failed (SQLAlchemy's ``handle_error``); True for an outage."""
        if not outage_error(context):
            return False
        engine = context.engine
        while getattr(engine, "_proxied", None) is not None:
            engine = engine._proxied  # engine.execution_options(...) wraps the engine
        entry = self._circuits.get(id(engine)) if engine is not None else None
        if entry is None:
            return True
        _, circuit = entry
        # Connections met their end only if one was in use; a failed connect
        # (refused, timed out) says nothing of the pooled ones.
        lost = context.connection is not None or context.is_disconnect
        self._open(engine, circuit, type(context.original_exception).__name__, stale=lost)
        return True

    def stalled(self, engine: Engine) -> None:
        """Nothing came back from ``engine``'s database and a fresh connection failed too."""
        _, circuit = self._circuits[id(engine)]
        self._open(engine, circuit, "no answer from the database (packets dropped?)", stale=True)

    def _open(self, engine: Engine, circuit: Circuit, reason: str, *, stale: bool) -> None:
        if stale:
            self._outage_started[id(engine)] = time.time()
        with self._lock:  # threaded servers: one opening, one probe thread, one hold
            if not circuit.failure(self._clock()):
                return  # open already
            limiter = self._limiter()
            if limiter is not None:
                limiter.hold_db(True)
        log.warning(
            "db_circuit_open",
            engine=masked(engine.url),
            reason=reason,
            pid=os.getpid(),
        )
        # A thread, green under gevent's monkey-patching: one per outage.
        threading.Thread(target=self._probe_until_back, args=(engine, circuit), daemon=True).start()

    def _replace_stale(self, key: int, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = self._outage_started.get(key)
        if since is not None and record.starttime < since:
            # Opened before the outage: its socket is dead. The pool reconnects
            # this record and fires checkout again.
            raise exc.DisconnectionError("connection opened before a database outage")

    def _probe_until_back(self, engine: Engine, circuit: Circuit) -> None:
        while not circuit.is_closed:
            time.sleep(circuit.seconds_to_probe(self._clock()) or 0.05)
            self._refuse_overdue()
            if not circuit.start_probe(self._clock()):
                continue
            answer = fresh_select_one(engine)
            if answer == ANSWERED:
                with self._lock:
                    outage = circuit.success(self._clock())
                    limiter = self._limiter()
                    if limiter is not None and not self.any_open:
                        limiter.hold_db(False)
                log.info(
                    "db_circuit_closed",
                    engine=masked(engine.url),
                    outage_seconds=round(outage or 0.0, 3),
                    failed_probes=circuit.failed_probes,
                    pid=os.getpid(),
                )
            else:
                with self._lock:
                    circuit.failure(self._clock())
                if circuit.failed_probes % _LOG_PROBE_FAILURES_EVERY == 1:
                    log.warning(
                        "db_circuit_probe_failed",
                        engine=masked(engine.url),
                        answer=answer,
                        failed_probes=circuit.failed_probes,
                        pid=os.getpid(),
                    )

    def _refuse_overdue(self) -> None:
        limiter = self._limiter()
        if limiter is not None:
            limiter.refuse_db_waiting(self._clock() - self._outage_wait)

    def retry_after(self) -> int:
        """Seconds a client should wait: the outage's length so far, 1 to 30."""
        return max(1, min(30, round(self.open_for())))
