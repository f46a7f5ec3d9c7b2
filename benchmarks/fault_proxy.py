"""A TCP proxy on 127.0.0.1 that injects network faults, switched at run time.

Put it between the app and PostgreSQL (``DATABASE_URL`` names the proxy's port) and
call its methods from the test process::

    with FaultProxy(pg.host, pg.port) as proxy:   # forwarding; proxy.port is the new port
        proxy.refuse()        # listening socket closed: new connects get ECONNREFUSED
        proxy.reset()         # RST (SO_LINGER 0) on every open connection, both sides
        proxy.down()          # refuse() + reset(): what a stopped PostgreSQL looks like
        proxy.drop()          # blackhole: nothing is forwarded, nothing is closed
        proxy.set_delay(0.2)  # every forwarded chunk waits 200 ms
        proxy.passthrough()   # back to forwarding (the delay stays as set)

Drop accepts new connections but never connects them upstream, and stops forwarding
on open ones, closing nothing: a query or a connect ends only by the client's own
timeout. Unlike a real blackhole the kernel still completes handshakes and ACKs
(TCP keepalive does not notice), and when the drop ends the held bytes are
delivered at once, like a partition healing without TCP's retransmission back-off;
a full accept queue would make connects hang in SYN retries instead, whose 1, 3,
7 s back-off would blur the "time to service after the drop" measured with it.

Two threads per connection (one per direction) and one accepting; ``stop()``
resets every connection and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["DROP", "PASS", "REFUSE", "FaultProxy"]

PASS, REFUSE, DROP = "pass", "refuse", "drop"
_CHUNK = 65536
_UPSTREAM_CONNECT_TIMEOUT = 10.0
_JOIN_SECONDS = 5.0


def _abort(sock: socket.socket | None) -> None:
    """Close ``sock`` with an RST (SO_LINGER on, 0 s) instead of a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Conn:
    """One proxied connection; its fields are guarded by the proxy's condition."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.reset = False  # close both sides with an RST when the pumps are done
        self.pumps = 0  # pumps still running; the last one closes the sockets

    def wake(self) -> None:
        # SHUT_RD wakes a thread blocked in recv() without sending anything (no FIN),
        # so the RST the closing pump sends is the first thing the peer sees.
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)


class FaultProxy:
    """Forward ``host:port`` (``port`` 0: any free one) to ``upstream``, with faults."""

    def __init__(
        self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = host, port
        self._cond = threading.Condition()
        self._mode = PASS
        self._delay = 0.0
        self._listener: socket.socket | None = None
        self._retired: list[socket.socket] = []
        self._conns: set[_Conn] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- control (any thread) -------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._conns)

    def start(self) -> FaultProxy:
        with self._cond:
            self._listen()
        self._spawn(self._accept_loop, "fault-proxy-accept")
        return self

    def passthrough(self) -> None:
        self._set_mode(PASS)

    def drop(self) -> None:
        self._set_mode(DROP)

    def refuse(self) -> None:
        """Close the listening socket; connections not accepted yet are reset with it."""
        self._set_mode(REFUSE)

    def set_delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._cond:
            self._delay = seconds

    def reset(self) -> int:
        """RST every open connection (client and upstream side); returns how many."""
        with self._cond:
            conns = [c for c in self._conns if not c.reset]
            for conn in conns:
                conn.reset = True
                conn.wake()
            self._cond.notify_all()
        return len(conns)

    def down(self) -> int:
        """What a stopped PostgreSQL looks like: refuse new connects, reset open ones."""
        self.refuse()
        return self.reset()

    def stop(self) -> None:
        """Close the listener, reset every connection, join every thread.  Idempotent."""
        with self._cond:
            self._stopping = True
            self._retire_listener()
            for conn in self._conns:
                conn.reset = True
                conn.wake()
            self._cond.notify_all()
        for thread in list(self._threads):
            thread.join(_JOIN_SECONDS)
        # A pump stuck in sendall() to a peer that stopped reading: SHUT_RDWR wakes it.
        with self._cond:
            for conn in self._conns:
                for sock in (conn.client, conn.upstream):
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(_JOIN_SECONDS)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()

    def _set_mode(self, mode: str) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("fault proxy stopped")
            if mode == REFUSE:
                self._retire_listener()
            elif self._listener is None:
                self._listen()
            self._mode = mode
            self._cond.notify_all()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _retire_listener(self) -> None:
        # shutdown() on a listening socket stops listening at once (connects are
        # refused, queued ones reset) and wakes accept(); the accepting thread closes
        # it, so its file descriptor cannot be reused under that thread's feet.
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._retired.append(self._listener)
            self._listener = None

    # -- worker threads -------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._cond:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                for old in self._retired:
                    old.close()
                self._retired.clear()
                self._cond.wait_for(lambda: self._listener is not None or self._stopping)
                if self._stopping:
                    return
                listener = self._listener
            assert listener is not None
            try:
                client, _ = listener.accept()
            except OSError:
                continue  # retired by refuse() or stop()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client)
            with self._cond:
                if self._stopping:
                    _abort(client)
                    continue
                self._conns.add(conn)
            self._spawn(self._serve, "fault-proxy-conn", conn)

    def _await_flow(self, conn: _Conn) -> bool:
        """Wait while dropping; False when the connection is to be reset instead."""
        with self._cond:
            self._cond.wait_for(lambda: self._mode != DROP or conn.reset or self._stopping)
            return not (conn.reset or self._stopping)

    def _serve(self, conn: _Conn) -> None:
        upstream = None
        if self._await_flow(conn):
            try:
                upstream = socket.create_connection(self.upstream, _UPSTREAM_CONNECT_TIMEOUT)
                upstream.settimeout(None)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                upstream = None  # upstream down: the client gets an RST, as from a proxy
        with self._cond:
            if upstream is None or conn.reset or self._stopping:
                self._conns.discard(conn)
                _abort(conn.client)
                _abort(upstream)
                return
            conn.upstream, conn.pumps = upstream, 2
        self._spawn(self._pump, "fault-proxy-pump", conn, upstream, conn.client)
        self._pump(conn, conn.client, upstream)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        failed = False
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                failed = True
                break
            if not data or not self._await_flow(conn):
                break
            if self._delay:
                with self._cond:
                    self._cond.wait_for(lambda: conn.reset or self._stopping, self._delay)
            if not self._await_flow(conn):
                break
            try:
                dst.sendall(data)
            except OSError:
                failed = True
                break
        with self._cond:
            if failed and not conn.reset:
                conn.reset = True  # an RST on one side is passed on to the other
                conn.wake()
            elif not conn.reset:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)  # a FIN is passed on as a FIN
            conn.pumps -= 1
            if conn.pumps > 0:
                return
            self._conns.discard(conn)
            if conn.reset:
                _abort(conn.client)
                _abort(conn.upstream)
            else:
                conn.client.close()
                if conn.upstream is not None:
                    conn.upstream.close()
