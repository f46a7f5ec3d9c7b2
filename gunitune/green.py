"""Make the PostgreSQL driver cooperate with gevent, and prove that it does.

psycopg2 is a C extension: its socket I/O goes through libpq, which gevent's
monkey-patching cannot reach. Without help, one slow query blocks the whole
gevent worker and every other request on it. psycopg2 offers a hook for this
(``set_wait_callback``): libpq then runs in non-blocking mode and psycopg2
calls us whenever it would block, so we can park the greenlet on the socket.
This is what psycogreen does; we carry our own ten lines to avoid a dependency
and to cancel timed-out queries on the server.

psycopg 3 needs no callback, but only picks its cooperative wait function when
gevent has patched ``select`` *before* psycopg is imported (psycopg >= 3.2).
:func:`check_driver_yields` measures instead of trusting either.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from dataclasses import dataclass
from typing import Any

from gunitune._psycopg3 import TOO_EARLY, psycopg_imported_before_patch, repair_psycopg_after_patch
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.database_url import DRIVER_PACKAGES, masked, with_driver
from gunitune.postgres import connect, safe_error_text

__all__ = [
    "DriverCheck",
    "check_driver_yields",
    "gevent_wait_callback",
    "make_psycopg2_green",
    "psycopg2_is_green",
    "psycopg_imported_before_patch",
    "repair_psycopg_after_patch",
    "require_green_driver",
]

_CANCEL_WAIT = 1.0  # seconds an interrupted query's cancel may delay the exception
_CANCEL_THREADS = 2
_cancel_pool: Any = None
# Overlap threshold: two sleeps that ran concurrently take ~1x, serialized ~2x.
# 1.6x leaves room for connection latency and a busy CI machine on either side.
_OVERLAP_FACTOR = 1.6

_PSYCOPG2_FIX = (
    "psycopg2 has no gevent wait callback: call gunitune.green.make_psycopg2_green() "
    "in post_fork, or use gunicorn -c python:gunitune.conf which does"
)
_PSYCOPG3_FIX = (
    "psycopg 3 is not cooperative here: it yields to gevent only when gevent has "
    "monkey-patched select before psycopg is imported (psycopg >= 3.2); run under "
    "gunicorn's gevent worker, or use psycopg2 with gunitune.green.make_psycopg2_green()"
)
def gevent_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Wait for a non-blocking psycopg2 operation by parking the greenlet.

    Installed with ``psycopg2.extensions.set_wait_callback``. A connect waits
    at most the DSN's ``connect_timeout`` (libpq enforces it only in its own
    blocking connect). If a query's wait is interrupted (``gevent.Timeout``,
    ``GreenletExit``...) the query is cancelled on the server before the
    exception goes on, from a thread and for at most a second: ``PQcancel``
    opens a blocking connection, which would stall the worker if the server
    has gone silent.
    """
    # Imported here so that importing gunitune.green never drags gevent or
    # psycopg2 into a process that only wants the module's other helpers.
    from gevent.socket import wait_read, wait_write
    from psycopg2 import OperationalError
    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE, STATUS_SETUP

    connecting = conn.status == STATUS_SETUP
    limit = _connect_timeout(conn.dsn) if connecting else timeout
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        state = conn.poll()
        if state == POLL_OK:
            return
        if state not in (POLL_READ, POLL_WRITE):
            raise OperationalError(f"bad state from psycopg2 poll(): {state!r}")
        left = None if deadline is None else deadline - time.monotonic()
        expired = OperationalError("timeout expired")  # libpq's words: classified alike
        if left is not None and left <= 0:
            raise expired
        try:
            wait = wait_read if state == POLL_READ else wait_write
            wait(conn.fileno(), timeout=left, timeout_exc=expired)
        except BaseException:
            if not connecting:
                _cancel_soon(conn)
            raise


def _connect_timeout(dsn: str) -> float | None:
    """The DSN's ``connect_timeout`` as libpq reads it: 0 or unset waits forever, 1 means 2."""
    from psycopg2.extensions import parse_dsn

    try:
        seconds = int(parse_dsn(dsn).get("connect_timeout", 0))
    except Exception:  # a DSN psycopg2 cannot read: no limit of ours
        return None
    return None if seconds <= 0 else float(max(2, seconds))


def _cancel_soon(conn: Any) -> None:
    """Cancel the running query from a small thread pool of its own, waiting at most a second.

    Its own: a ``PQcancel`` to a host that drops packets blocks its thread for
    minutes, and in gevent's shared pool it would hold up DNS lookups and the
    metrics' scrapes. When both threads are stuck, the cancel is skipped.
    """
    import gevent
    from gevent.threadpool import ThreadPool

    global _cancel_pool
    if _cancel_pool is None or _cancel_pool.hub is not gevent.get_hub():
        _cancel_pool = ThreadPool(_CANCEL_THREADS)  # per process: a pool does not cross a fork
    if len(_cancel_pool) >= _CANCEL_THREADS:  # tasks queued or running
        return
    # The original error matters more than a failed or slow cancel.
    with contextlib.suppress(Exception, gevent.Timeout):
        _cancel_pool.spawn(conn.cancel).get(timeout=_CANCEL_WAIT)


def make_psycopg2_green() -> bool:
    """Install :func:`gevent_wait_callback` in psycopg2; idempotent.

    Call it once per process that serves requests with gevent (Gunicorn's
    ``post_fork``). Returns ``False`` when psycopg2 is not installed, ``True``
    once psycopg2 will yield to gevent.
    """
    try:
        from psycopg2 import extensions
    except ImportError:
        return False
    # Importing gevent here fails loudly if it is missing, rather than on the
    # first query inside the callback.
    import gevent.socket  # noqa: F401

    if extensions.get_wait_callback() is not gevent_wait_callback:
        extensions.set_wait_callback(gevent_wait_callback)
    return True


def psycopg2_is_green() -> bool:
    """Whether psycopg2's wait callback is ours or psycogreen's gevent one."""
    psycopg2 = sys.modules.get("psycopg2")
    if psycopg2 is None:
        # Not imported yet: nothing can have set a callback.
        return False
    from psycopg2 import extensions

    callback = extensions.get_wait_callback()
    if callback is None:
        return False
    if callback is gevent_wait_callback:
        return True
    psycogreen = sys.modules.get("psycogreen.gevent")
    return callback is getattr(psycogreen, "gevent_wait_callback", object())


@dataclass(frozen=True)
class DriverCheck:
    """Result of :func:`check_driver_yields`.

    ``yields`` is true when two concurrent ``pg_sleep`` ran side by side;
    ``elapsed`` is their wall time in seconds; ``message`` is one line saying
    what was measured and, when the driver blocks, how to fix it.
    """

    yields: bool
    driver: str
    elapsed: float
    message: str


def _pick_driver(url: str) -> str:
    _, driver = with_driver(url)
    if driver in ("psycopg2", "psycopg"):
        return driver
    raise ConfigError(
        f"DATABASE_URL={masked(url)} uses driver {driver or '(none)'!r}: "
        "gunitune can check only psycopg2 and psycopg"
    )


def _sleep_on(conn: Any, seconds: float) -> None:
    cur = conn.cursor()
    try:
        cur.execute("SELECT pg_sleep(%s)", (seconds,))
        cur.fetchall()
    finally:
        cur.close()


def check_driver_yields(url: str, *, seconds: float = 0.2, timeout: float = 10.0) -> DriverCheck:
    """Measure whether the installed driver lets other greenlets run during a query.

    Opens two connections, then runs ``SELECT pg_sleep(seconds)`` on both from
    two gevent greenlets at once. A cooperative driver overlaps them
    (elapsed ~ ``seconds``); a blocking one runs them back to back (~ 2x).
    Uses psycopg 3 when the URL names it (``postgresql+psycopg://``), else
    psycopg2. Raises :class:`~gunitune.postgres.DatabaseUnreachable` when the
    server cannot be reached and :class:`GunituneError` when the measurement
    itself fails or exceeds ``timeout`` seconds.
    """
    import gevent

    driver = _pick_driver(url)
    try:
        # connect() would quietly fall back to the other driver: the check must
        # measure the one the app will use.
        importlib.import_module(driver)
    except ImportError:
        package = DRIVER_PACKAGES[driver]
        return DriverCheck(False, driver, 0.0, f"{driver} is not installed: pip install {package}")

    conns: list[Any] = []
    try:
        for _ in range(2):
            conn = connect(url, connect_timeout=min(timeout, 5.0))
            conns.append(conn)
            # A blocking driver cannot be interrupted by gevent.Timeout, so the
            # server must enforce the limit: a hung check must not hang startup.
            cur = conn.cursor()
            cur.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
            cur.close()

        started = time.perf_counter()
        greenlets = [gevent.spawn(_sleep_on, c, seconds) for c in conns]
        gevent.joinall(greenlets, timeout=timeout)
        elapsed = time.perf_counter() - started
        pending = [g for g in greenlets if not g.ready()]
        if pending:
            # Killing raises GreenletExit in the wait callback, which cancels
            # the query on the server.
            gevent.killall(pending, block=True, timeout=1.0)
            raise GunituneError(
                f"driver check on {masked(url)} did not finish within {timeout:g}s"
            )
        for g in greenlets:
            if g.exception is not None:
                raise GunituneError(
                    f"driver check on {masked(url)} failed: {safe_error_text(g.exception, url)}"
                )
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):  # closing is best effort
                conn.close()

    limit = _OVERLAP_FACTOR * seconds
    yields = elapsed < limit
    measured = f"two concurrent pg_sleep({seconds:g}) took {elapsed:.2f}s"
    measured += (
        f", so they overlapped (< {limit:.2f}s)"
        if yields
        else f", so they ran one after the other (>= {limit:.2f}s)"
    )
    if yields:
        message = f"{driver} yields to gevent: {measured}"
    elif driver == "psycopg2" and not psycopg2_is_green():
        message = f"{_PSYCOPG2_FIX}; {measured}"
    elif driver == "psycopg2":
        message = (
            f"psycopg2 has a gevent wait callback but still blocked the event loop; {measured}"
        )
    elif psycopg_imported_before_patch():
        message = f"{TOO_EARLY}; {measured}"
    else:
        message = f"{_PSYCOPG3_FIX}; {measured}"
    return DriverCheck(yields, driver, elapsed, message)


def require_green_driver(url: str, *, seconds: float = 0.2, timeout: float = 10.0) -> DriverCheck:
    """Run :func:`check_driver_yields` and raise :class:`GunituneError` if it blocks.

    The error's ``str`` is one line naming the fix, e.g. calling
    :func:`make_psycopg2_green` in ``post_fork``. Returns the check otherwise.
    """
    check = check_driver_yields(url, seconds=seconds, timeout=timeout)
    if not check.yields:
        raise GunituneError(check.message)
    return check
