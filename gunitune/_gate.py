"""The accept gate of one worker: a memory bound, and balance with the other workers.

gevent's ``StreamServer`` checks ``pool.full()`` before each accept; when full
it stops accepting and ``rawlink``s a callback on the pool's semaphore to
resume. :class:`GatedPool` answers ``full()`` from the worker's
:class:`HeldGate`, shared by the pools of all its listeners:

* full when the worker holds ``max_held`` connections (memory bound);
* full while another worker holds clearly fewer requests
  (:func:`gunitune.core.balance.may_accept`), so the least loaded one takes it.

Requests are what a worker holds; an idle keep-alive connection between two
requests is not, so it takes no room from the balance.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.lock import Semaphore
from gevent.pool import Pool
from gevent.server import StreamServer

from gunitune._board import Seat
from gunitune.core.balance import may_accept

__all__ = ["EagerServer", "GatedPool", "HeldGate", "listen_queue"]

# How often a worker whose gate is shut for balance looks at the board again:
# the other workers' counts change in other processes, which send no event.
_RECHECK_SECONDS = 0.002
_RECHECK_MAX_SECONDS = 0.05
# Connections accepted per turn of the loop, gate permitting (gevent's default).
_ACCEPT_PER_TURN = 100
# struct tcp_info of a listening socket (Linux): tcpi_unacked holds its accept
# queue's length and tcpi_sacked the queue's size, 32-bit fields at byte 24.
_TCPI_QUEUE = struct.Struct("=II")
_TCPI_QUEUE_OFFSET = 24


def listen_queue(sock: Any) -> tuple[int, int]:
    """(connections waiting, queue size) of a listening socket; (0, 0) where unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (OSError, AttributeError):
        return 0, 0  # a UNIX socket, or not Linux
    if len(info) < _TCPI_QUEUE_OFFSET + _TCPI_QUEUE.size:
        return 0, 0
    waiting, size = _TCPI_QUEUE.unpack_from(info, _TCPI_QUEUE_OFFSET)
    return int(waiting), int(size)


class HeldGate:
    """What one worker holds, over every listener, and whether it may accept more."""

    def __init__(
        self, max_held: int, seat: Seat | None = None, listeners: Sequence[Any] = ()
    ) -> None:
        self.max_held = max_held
        self.seat = seat
        self.listeners = list(listeners)
        self.pools: list[GatedPool] = []
        self._idle: set[Any] = set()  # keep-alive connections between two requests
        self.waiting_for_room = False  # an accept loop stopped and waits for the gate
        self.draining = False  # the worker stops: accept nothing more
        self._rechecking = False

    def connections(self) -> int:
        """Connections held, idle keep-alive ones included."""
        return sum(map(len, self.pools))

    def held(self) -> int:
        """Requests held: connections minus the idle keep-alive ones."""
        return self.connections() - len(self._idle)

    def full(self) -> bool:
        """True when this worker should not accept now."""
        if self.draining or self.connections() >= self.max_held:
            return True
        if self.seat is None:
            return False
        held, others = self.held(), self.seat.others()
        if may_accept(held, others):
            return False
        # Only now is the kernel's queue worth a system call per listener.
        return not may_accept(held, others, *self.kernel_queue())

    def kernel_queue(self) -> tuple[int, int]:
        """Connections waiting in the listen queues this worker accepts from (shared with
        the other workers), and the queues' size."""
        waiting = size = 0
        for sock in self.listeners:
            queued, limit = listen_queue(sock)
            waiting += queued
            size += limit
        return waiting, size

    def busy(self, connection: Any) -> None:
        """A request arrived on ``connection``.

        Not published: the board is written when connections arrive and when
        requests end, which is what moves work between workers; one write less
        per request on the hot path of keep-alive clients.
        """
        self._idle.discard(connection)

    def idle(self, connection: Any) -> None:
        """``connection`` finished a request and waits for the next one (keep-alive)."""
        self._idle.add(connection)
        self.publish()

    def closed(self, connection: Any) -> None:
        """``connection`` ended."""
        self._idle.discard(connection)

    def publish(self) -> None:
        """Write the held count on the board, and resume accepting if there is room now."""
        if self.seat is not None:
            self.seat.publish(self.held())
        if self.waiting_for_room:
            self.notify()

    def notify(self) -> None:
        """Resume every accept loop waiting for room, if there is room."""
        for pool in self.pools:
            pool.semaphore.notify_if_open()
        self.waiting_for_room = any(pool.semaphore.has_links() for pool in self.pools)

    def recheck_while_shut(self) -> None:
        """Look at the board again shortly, until the gate opens (one greenlet per gate).

        Only a gate shut for balance needs it: the other workers' counts change
        in other processes. A connection ending here wakes the gate by itself.
        """
        if self._rechecking or self.seat is None or self.draining:
            return
        if self.connections() >= self.max_held:
            return
        self._rechecking = True
        gevent.spawn(self._recheck)

    def _recheck(self) -> None:
        # From 2 ms, doubling to 50 ms: quick during a burst, cheap when a
        # worker stays busier than the others for long.
        pause = _RECHECK_SECONDS
        try:
            while not self.draining and any(pool.semaphore.has_links() for pool in self.pools):
                gevent.sleep(pause)
                self.notify()
                pause = min(_RECHECK_MAX_SECONDS, pause * 2)
        finally:
            self._rechecking = False

    def stats(self) -> dict[str, Any]:
        """Held requests and connections, and what the other workers hold."""
        return {
            "held_requests": self.held(),
            "connections": self.connections(),
            "idle_keepalive": len(self._idle),
            "max_held": self.max_held,
            "others_held": self.seat.others() if self.seat is not None else [],
            "in_kernel_queue": self.kernel_queue()[0],
            "accepting": not self.full(),
        }


class _GateSemaphore:
    """The pool's semaphore, as the accept loop sees it.

    A plain semaphore calls its links as soon as it has a permit, which with a
    gate narrower than the pool is at once: the server would re-arm accept on
    every loop turn, spinning a core. Here a link fires once, when the gate has room.
    """

    def __init__(self, size: int, gate: HeldGate) -> None:
        self._inner = Semaphore(size)
        self._gate = gate
        self._links: list[Callable[[Any], None]] = []

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._inner.acquire(blocking, timeout))

    def release(self) -> None:
        self._inner.release()
        # A connection ended: room on one listener is room for all of them.
        self._gate.publish()

    def wait(self, timeout: float | None = None) -> int:
        return int(self._inner.wait(timeout))

    def rawlink(self, callback: Callable[[Any], None]) -> None:
        if callback not in self._links:
            self._links.append(callback)
        self._gate.waiting_for_room = True
        if not self.notify_if_open():
            self._gate.recheck_while_shut()

    def unlink(self, callback: Callable[[Any], None]) -> None:
        if callback in self._links:
            self._links.remove(callback)

    def has_links(self) -> bool:
        return bool(self._links)

    def notify_if_open(self) -> bool:
        """Resume whoever waits for room, if the gate has room; True if it had."""
        if self._links and not self._gate.full():
            links, self._links = self._links, []
            loop = gevent.get_hub().loop
            for callback in links:
                loop.run_callback(callback, self)
            return True
        return False


class EagerServer(StreamServer):  # type: ignore[misc]  # gevent is untyped
    """gevent's ``StreamServer`` taking up to 100 connections per turn of the loop.

    Gunicorn sets ``max_accept = 1`` with several workers, to leave the next
    connection to another worker. A gunitune worker reads, routes and queues
    what it accepts, and the board balances the workers; accepting one per
    turn would leave the storm, and any health check behind it, in the
    kernel's queue while the worker runs CPU work between turns.
    """

    @property
    def max_accept(self) -> int:
        return _ACCEPT_PER_TURN

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        del value  # Gunicorn's 1 is ignored on purpose (see the class docstring)


class GatedPool(Pool):  # type: ignore[misc]  # gevent is untyped
    """A gevent ``Pool`` that reports itself full when its worker's gate is.

    ``size`` is the memory bound (Gunicorn's graceful shutdown compares
    ``free_count()`` with it); ``full()``, which the accept loop checks before
    each accept, and the semaphore's links follow the gate.
    """

    def __init__(self, gate: HeldGate) -> None:
        super().__init__(gate.max_held)
        self.gate = gate
        gate.pools.append(self)
        self.semaphore = self._semaphore = _GateSemaphore(gate.max_held, gate)

    def full(self) -> bool:
        """True when the worker should not accept now."""
        return self.gate.full()

    def add(self, greenlet: Any, blocking: bool = True, timeout: float | None = None) -> None:
        """Hold a new connection; the other workers see it at once."""
        super().add(greenlet, blocking, timeout)
        seat = self.gate.seat
        if seat is not None:
            seat.publish(self.gate.held())
