"""Run a database read in a forked child, so the Gunicorn master never imports a driver.

psycopg 3 picks its wait function, and binds ``selectors.DefaultSelector``,
when it is first imported. A master that imports it for the start-up budget
check hands every worker the blocking choice: gevent patches ``select`` only
after the fork, too late. The child does the read and exits; the master keeps
a clean ``sys.modules`` (and no libpq or TLS state crosses the fork either).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from gunitune.core.errors import GunituneError

__all__ = ["ChildTimeout", "after_fork_in_child", "run_in_child"]

T = TypeVar("T")


class ChildTimeout(GunituneError):
    """The child did not answer within its timeout (it was killed)."""


def _child(fn: Callable[[], T], write_fd: int) -> None:
    try:
        payload = pickle.dumps(("ok", fn()))
    except BaseException as exc:  # everything must reach the parent
        try:
            payload = pickle.dumps(("error", exc))
        except Exception:  # an exception that does not pickle: keep its text
            payload = pickle.dumps(("error", GunituneError(str(exc))))
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(payload)


def _read_all(read_fd: int, pid: int, deadline: float, what: str) -> bytes:
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            raise ChildTimeout(f"{what} did not finish within its timeout")
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_in_child(fn: Callable[[], T], *, timeout: float, what: str) -> T:
    """Return ``fn()`` computed in a forked child; re-raise its exception here.

    ``fn``'s result and exceptions must pickle. A child that does not answer
    within ``timeout`` seconds is killed and :class:`GunituneError` names
    ``what``. Call it only where the process has no other threads (the
    Gunicorn master before any worker starts).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = 0
        try:
            os.close(read_fd)
            _child(fn, write_fd)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, pid, time.monotonic() + timeout, what)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not data:
        raise GunituneError(f"{what} failed: its process exited without an answer")
    status, value = pickle.loads(data)  # our own child's bytes
    if status == "error":
        raise value
    result: T = value
    return result


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked later (state that must not cross
    a fork: threads, a circuit's outage), without keeping its object alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=call)
