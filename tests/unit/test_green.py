"""gunitune.green without a database: the wait callback's logic and its installation.

The real overlap of two queries is measured in tests/integration/test_green_driver.py.
Here gevent runs unpatched in the pytest process, which is safe: only monkey
patching is process-global, and we never patch.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import psycopg2
import pytest
from psycopg2 import extensions

from gunitune import green
from gunitune.core.errors import ConfigError, GunituneError


@pytest.fixture(autouse=True)
def restore_wait_callback() -> Iterator[None]:
    # The callback is process-global: leave psycopg2 as we found it.
    saved = extensions.get_wait_callback()
    yield
    extensions.set_wait_callback(saved)


class FakeConn:
    """Plays back poll() states; records cancel()."""

    def __init__(
        self, states: list[int], fd: int = 7, status: int = extensions.STATUS_READY, dsn: str = ""
    ) -> None:
        self.states = list(states)
        self.fd = fd
        self.cancelled = 0
        self.status = status
        self.dsn = dsn

    def poll(self) -> int:
        return self.states.pop(0)

    def fileno(self) -> int:
        return self.fd

    def cancel(self) -> None:
        self.cancelled += 1


def _record(calls: list[str], name: str) -> Callable[..., None]:
    def wait(fd: int, timeout: float | None = None, timeout_exc: object = None) -> None:
        calls.append(f"{name}({fd})")

    return wait


def test_make_green_sets_callback_and_is_idempotent() -> None:
    extensions.set_wait_callback(None)
    assert not green.psycopg2_is_green()
    assert green.make_psycopg2_green() is True
    assert extensions.get_wait_callback() is green.gevent_wait_callback
    assert green.make_psycopg2_green() is True
    assert extensions.get_wait_callback() is green.gevent_wait_callback
    assert green.psycopg2_is_green()


def test_make_green_without_psycopg2_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg2.extensions", None)
    assert green.make_psycopg2_green() is False
    assert green.psycopg2_is_green() is False


def test_psycogreen_callback_counts_as_green(monkeypatch: pytest.MonkeyPatch) -> None:
    def psycogreen_callback(conn: Any, timeout: float | None = None) -> None:
        """Stands in for psycogreen.gevent.gevent_wait_callback."""

    fake = types.ModuleType("psycogreen.gevent")
    fake.gevent_wait_callback = psycogreen_callback  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "psycogreen.gevent", fake)
    extensions.set_wait_callback(psycogreen_callback)
    assert green.psycopg2_is_green()


def test_other_callback_is_not_green() -> None:
    extensions.set_wait_callback(lambda conn: None)
    assert not green.psycopg2_is_green()


def test_callback_waits_for_each_state(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gevent.socket, "wait_read", _record(calls, "read"))
    monkeypatch.setattr(gevent.socket, "wait_write", _record(calls, "write"))
    states = [extensions.POLL_WRITE, extensions.POLL_READ, extensions.POLL_READ]
    conn = FakeConn([*states, extensions.POLL_OK])
    green.gevent_wait_callback(conn)
    assert calls == ["write(7)", "read(7)", "read(7)"]
    assert conn.cancelled == 0


def test_unknown_poll_state_raises_operational_error() -> None:
    conn = FakeConn([42])
    with pytest.raises(psycopg2.OperationalError, match="42"):
        green.gevent_wait_callback(conn)
    assert conn.cancelled == 0


@pytest.mark.parametrize("error", [gevent.Timeout(0.1), gevent.GreenletExit(), KeyboardInterrupt()])
def test_interrupted_wait_cancels_then_reraises(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def interrupted(fd: int, timeout: float | None = None, timeout_exc: object = None) -> None:
        raise error

    monkeypatch.setattr(gevent.socket, "wait_read", interrupted)
    conn = FakeConn([extensions.POLL_READ])
    with pytest.raises(type(error)):
        green.gevent_wait_callback(conn)
    assert conn.cancelled == 1


def test_failing_cancel_does_not_hide_the_original_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(fd: int, timeout: float | None = None, timeout_exc: object = None) -> None:
        raise gevent.Timeout(0.1)

    class BadCancel(FakeConn):
        def cancel(self) -> None:
            raise psycopg2.OperationalError("cancel failed")

    monkeypatch.setattr(gevent.socket, "wait_write", interrupted)
    with pytest.raises(gevent.Timeout):
        green.gevent_wait_callback(BadCancel([extensions.POLL_WRITE]))


def test_callback_really_lets_other_greenlets_run() -> None:
    # A socketpair stands in for libpq's socket: the reader greenlet parks in
    # the callback until the writer greenlet, which must get to run, writes.
    left, right = socket.socketpair()
    order: list[str] = []

    class SocketConn(FakeConn):
        def poll(self) -> int:
            try:
                left.setblocking(False)
                left.recv(1)
            except BlockingIOError:
                return int(extensions.POLL_READ)
            return int(extensions.POLL_OK)

    def reader() -> None:
        green.gevent_wait_callback(SocketConn([], fd=left.fileno()))
        order.append("reader done")

    def writer() -> None:
        order.append("writer ran")
        right.send(b"x")

    try:
        gevent.joinall([gevent.spawn(reader), gevent.spawn(writer)], timeout=5, raise_error=True)
    finally:
        left.close()
        right.close()
    assert order == ["writer ran", "reader done"]


def test_driver_check_is_frozen() -> None:
    check = green.DriverCheck(True, "psycopg2", 0.2, "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.yields = False  # type: ignore[misc]


def test_unsupported_driver_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="asyncpg"):
        green.check_driver_yields("postgresql+asyncpg://app:pw@127.0.0.1/app")
    with pytest.raises(ConfigError):
        green.check_driver_yields("sqlite:///app.db")


def test_missing_psycopg3_reports_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "psycopg", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    check = green.check_driver_yields("postgresql+psycopg://app:pw@127.0.0.1/app")
    assert (check.yields, check.driver) == (False, "psycopg")
    assert "pip install" in check.message


def test_require_green_driver_raises_the_check_message(monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = green.DriverCheck(False, "psycopg2", 0.4, "psycopg2 has no gevent wait callback: x")
    monkeypatch.setattr(green, "check_driver_yields", lambda url, **kw: blocked)
    with pytest.raises(GunituneError) as info:
        green.require_green_driver("postgresql://app:pw@127.0.0.1/app")
    assert str(info.value) == blocked.message

    fine = dataclasses.replace(blocked, yields=True, message="psycopg2 yields")
    monkeypatch.setattr(green, "check_driver_yields", lambda url, **kw: fine)
    assert green.require_green_driver("postgresql://app:pw@127.0.0.1/app") is fine


def test_a_connect_waits_at_most_its_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10: libpq's connect_timeout binds only its blocking connect; ours enforces it."""
    seen: list[float | None] = []

    def silent_host(fd: int, timeout: float | None = None, timeout_exc: object = None) -> None:
        seen.append(timeout)
        assert isinstance(timeout_exc, BaseException)
        raise timeout_exc  # what gevent does when the timeout passes

    monkeypatch.setattr(gevent.socket, "wait_write", silent_host)
    conn = FakeConn(
        [extensions.POLL_WRITE], status=extensions.STATUS_SETUP, dsn="host=db connect_timeout=3"
    )
    with pytest.raises(psycopg2.OperationalError, match="timeout expired"):
        green.gevent_wait_callback(conn)
    assert seen and seen[0] is not None and 2.5 < seen[0] <= 3
    assert conn.cancelled == 0  # nothing runs on the server yet: no cancel


@pytest.mark.parametrize(
    ("dsn", "limit"),
    [("connect_timeout=1", 2.0), ("connect_timeout=0", None), ("host=db", None),
     ("connect_timeout=10", 10.0)],
)
def test_connect_timeout_is_read_as_libpq_reads_it(dsn: str, limit: float | None) -> None:
    assert green._connect_timeout(dsn) == limit


def test_a_query_wait_has_no_deadline_of_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []

    def wait(fd: int, timeout: float | None = None, timeout_exc: object = None) -> None:
        seen.append(timeout)

    monkeypatch.setattr(gevent.socket, "wait_read", wait)
    green.gevent_wait_callback(FakeConn([extensions.POLL_READ, extensions.POLL_OK]))
    assert seen == [None]  # a long query is legitimate; keepalives find a dead peer
