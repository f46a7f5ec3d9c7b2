"""The fault proxy (benchmarks/fault_proxy.py) against a tiny echo server and a real
PostgreSQL: every mode is observable from the client, and stop() leaves nothing behind."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import psycopg2
import psycopg2.extensions
import pytest

from benchmarks.fault_proxy import DROP, PASS, REFUSE, FaultProxy
from benchmarks.postgres import PostgresCluster

pytestmark = pytest.mark.integration


class EchoServer:
    """Echoes every byte back; records how each connection ended (eof / reset)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.endings: list[str] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._clients: list[socket.socket] = []
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self._clients.append(client)
            thread = threading.Thread(target=self._echo, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, client: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                client.sendall(data)
            self.endings.append("eof")
        except ConnectionResetError:
            self.endings.append("reset")
        except OSError:
            self.endings.append("closed")

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for client in self._clients:
            client.close()


def _await(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _proxy_sockets(port: int) -> list[object]:
    return [c for c in psutil.Process().net_connections("tcp") if port in (c.laddr.port,
            c.raddr.port if c.raddr else None)]  # fmt: skip


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


def _client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return sock.recv(100)


def test_passthrough_echoes_and_stop_leaves_nothing(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    port = proxy.port
    clients = [_client(port) for _ in range(3)]
    assert [_roundtrip(c, b"x%d" % i) for i, c in enumerate(clients)] == [b"x0", b"x1", b"x2"]
    assert proxy.mode == PASS and proxy.open_connections == 3
    proxy.stop()
    for c in clients:  # every client sees its connection reset by the stop
        # The RST is met on the send (EPIPE) or on the read (ECONNRESET): timing decides.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            _roundtrip(c)
        c.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    _await(lambda: not _proxy_sockets(port), 5, "no socket left on the proxy's port")
    with pytest.raises(ConnectionRefusedError):
        _client(port)


def test_refuse_closes_the_port_keeps_open_connections(proxy: FaultProxy) -> None:
    kept = _client(proxy.port)
    # Only accepted connections are kept: those still in the kernel's accept queue
    # are reset by refuse(), as a stopping server's are.
    _await(lambda: proxy.open_connections == 1, 5, "the proxy to accept the connection")
    proxy.refuse()
    assert proxy.mode == REFUSE
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        _client(proxy.port)
    assert time.monotonic() - started < 1
    assert _roundtrip(kept) == b"ping"
    proxy.passthrough()  # the same port listens again
    with _client(proxy.port) as again:
        assert _roundtrip(again) == b"ping"
    kept.close()


def test_reset_sends_rst_to_both_sides(proxy: FaultProxy, echo: EchoServer) -> None:
    client = _client(proxy.port)
    assert _roundtrip(client) == b"ping"
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        client.recv(100)
    client.close()
    _await(lambda: echo.endings == ["reset"], 5, "the upstream side to see a reset")
    _await(lambda: proxy.open_connections == 0, 5, "the proxy to forget the connection")
    with _client(proxy.port) as fresh:  # reset is an action, not a mode
        assert _roundtrip(fresh) == b"ping"


def test_delay_adds_latency_per_direction(proxy: FaultProxy) -> None:
    with _client(proxy.port) as client:
        _roundtrip(client)
        started = time.monotonic()
        _roundtrip(client)
        fast = time.monotonic() - started
        proxy.set_delay(0.15)
        started = time.monotonic()
        assert _roundtrip(client) == b"ping"
        slow = time.monotonic() - started
    assert fast < 0.1 and slow >= 0.3, (fast, slow)


def test_drop_holds_bytes_without_closing_then_delivers(proxy: FaultProxy) -> None:
    kept = _client(proxy.port)
    assert _roundtrip(kept) == b"ping"
    proxy.drop()
    assert proxy.mode == DROP
    fresh = _client(proxy.port)  # the handshake completes; nothing is forwarded
    for sock in (kept, fresh):
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # neither data, nor EOF, nor RST
            sock.recv(100)
        sock.settimeout(5)
    proxy.passthrough()
    assert kept.recv(100) == b"held"
    assert fresh.recv(100) == b"held"
    kept.close()
    fresh.close()


# -- against PostgreSQL ------------------------------------------------------------


@pytest.fixture
def pg_proxy(postgres: PostgresCluster) -> Iterator[FaultProxy]:
    with FaultProxy(postgres.host, postgres.port) as p:
        yield p


def _dsn(postgres: PostgresCluster, proxy: FaultProxy) -> str:
    return postgres.url.replace(f":{postgres.port}/", f":{proxy.port}/")


def test_pg_refused_fails_fast(postgres: PostgresCluster, pg_proxy: FaultProxy) -> None:
    conn = psycopg2.connect(_dsn(postgres, pg_proxy))
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    pg_proxy.refuse()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        psycopg2.connect(_dsn(postgres, pg_proxy), connect_timeout=10)
    assert time.monotonic() - started < 1


def test_pg_reset_breaks_an_inflight_query(postgres: PostgresCluster, pg_proxy: FaultProxy) -> None:
    # The check interval (PostgreSQL >= 14) lets the sleeping backend notice its
    # client is gone; without it, it would only notice when it next writes.
    conn = psycopg2.connect(
        _dsn(postgres, pg_proxy), application_name="fault-reset",
        options="-c client_connection_check_interval=100",
    )  # fmt: skip
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.cursor().execute("SELECT pg_sleep(30)")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fault-reset' " \
          "AND state = 'active'"  # fmt: skip
    _await(lambda: postgres.query(sql) == [(1,)], 10, "the query to run")
    pg_proxy.reset()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert len(errors) == 1 and isinstance(errors[0], psycopg2.OperationalError), errors
    conn.close()
    # The server side was reset too: its backend goes away instead of sleeping on.
    _await(lambda: postgres.query(sql) == [(0,)], 10, "the backend to end")


def test_pg_delay_is_measurable(postgres: PostgresCluster, pg_proxy: FaultProxy) -> None:
    with contextlib.closing(psycopg2.connect(_dsn(postgres, pg_proxy))) as conn:
        cur = conn.cursor()

        def select_one() -> float:
            started = time.monotonic()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            return time.monotonic() - started

        select_one()
        fast = select_one()
        pg_proxy.set_delay(0.1)
        slow = select_one()
    assert fast < 0.05 and slow >= 0.2, (fast, slow)  # one chunk each way


def _finish(conn: psycopg2.extensions.connection, timeout: float) -> bool:
    """Drive an async connection until its operation completes; False on timeout."""
    deadline = time.monotonic() + timeout
    while (state := conn.poll()) != psycopg2.extensions.POLL_OK:
        wait = ([conn.fileno()], []) if state == psycopg2.extensions.POLL_READ else \
            ([], [conn.fileno()])  # fmt: skip
        if not any(select.select(*wait, [], max(0.0, deadline - time.monotonic()))[:2]):
            return False
    return True


def test_pg_drop_times_out_without_error(postgres: PostgresCluster, pg_proxy: FaultProxy) -> None:
    conn = psycopg2.connect(_dsn(postgres, pg_proxy), async_=True)
    assert _finish(conn, 5)
    pg_proxy.drop()
    cur = conn.cursor()
    cur.execute("SELECT 42")
    started = time.monotonic()
    # A client-side timeout: nothing at all comes back, no error, no close.
    assert not _finish(conn, 1.0)
    assert time.monotonic() - started >= 0.95 and conn.closed == 0
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        psycopg2.connect(_dsn(postgres, pg_proxy), connect_timeout=2)
    assert time.monotonic() - started >= 1.9  # hung until the timeout, no error before
    pg_proxy.passthrough()  # the partition heals: the held query completes
    assert _finish(conn, 5)
    assert cur.fetchone() == (42,)
    conn.close()
