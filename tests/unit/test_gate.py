"""The accept gate: memory bound, balance with other workers, and waking the accept loop.

gevent's Pool, semaphore links and hub work without monkey patching, so these
run in-process with real greenlets and real listening sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from gunitune._board import LoadBoard, Seat
from gunitune._gate import EagerServer, GatedPool, HeldGate, listen_queue
from gunitune.core.cpus import read_somaxconn
from gunitune.worker import GuniTuneWorker
from tests.unit.helpers import wait_until

Link = Callable[[Any], None]


@pytest.fixture
def release() -> Iterator[Event]:
    """Members of the pools wait on this; set at the end so nothing is left running."""
    event = Event()
    yield event
    event.set()


@pytest.fixture
def links() -> Iterator[list[tuple[GatedPool, Link]]]:
    """Links a test leaves on a shut gate, removed at the end (that ends the recheck loop)."""
    made: list[tuple[GatedPool, Link]] = []
    yield made
    for pool, link in made:
        pool.semaphore.unlink(link)


@pytest.fixture
def seats() -> tuple[Seat, Seat]:
    """This worker's seat and another open worker's seat, on one board."""
    board = LoadBoard(seats=4)
    mine = board.take_seat(os.getpid())
    other = board.take_seat(os.getppid())
    mine.set_open(True)
    other.set_open(True)
    return mine, other


BACKLOG = 64


def listening(backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = listening(BACKLOG)
    yield sock
    sock.close()


def queue_size(backlog: int) -> int:
    """What the kernel makes of ``listen(backlog)``: capped by net.core.somaxconn."""
    somaxconn = read_somaxconn()
    return backlog if somaxconn is None else min(backlog, somaxconn)


def connect(listener: socket.socket, count: int) -> list[socket.socket]:
    """``count`` more clients left waiting in the listener's accept queue."""
    expected = listen_queue(listener)[0] + count
    clients = [socket.create_connection(listener.getsockname()) for _ in range(count)]
    wait_until(lambda: listen_queue(listener)[0] == expected)
    return clients


def hold(pool: GatedPool, release: Event, count: int, busy: bool = True) -> list[Any]:
    """``count`` connections on ``pool``, each serving a request unless ``busy`` is False."""
    members = [pool.spawn(release.wait) for _ in range(count)]
    for member in members:
        if busy:
            pool.gate.busy(member)
        else:
            pool.gate.idle(member)
    return members


def turns(n: int = 20) -> None:
    """Let the hub run for ``n`` milliseconds (only to show that nothing happens)."""
    gevent.sleep(n / 1000)


# --- memory bound -------------------------------------------------------------------


def test_gate_is_full_at_max_held_connections(release: Event) -> None:
    pool = GatedPool(HeldGate(max_held=3))
    assert pool.full() is False
    hold(pool, release, 2)
    assert pool.full() is False
    hold(pool, release, 1)
    assert pool.full() is True
    assert (pool.size, pool.free_count()) == (3, 0)


def test_idle_keepalive_connections_count_for_memory_but_hold_no_request(
    release: Event,
) -> None:
    gate = HeldGate(max_held=3)
    pool = GatedPool(gate)
    members = hold(pool, release, 3, busy=False)
    assert (gate.connections(), gate.held()) == (3, 0)
    assert gate.full() is True  # each connection costs memory, idle or not
    gate.busy(members[0])  # its next request arrived
    assert gate.held() == 1
    gate.idle(members[0])
    gate.closed(members[1])  # the client closed it: no longer idle
    assert gate.held() == 1  # its greenlet is still a member until it exits


def test_members_finishing_reopen_the_gate_and_free_count_returns_to_size() -> None:
    release = Event()
    pool = GatedPool(HeldGate(max_held=2))
    hold(pool, release, 2)
    assert pool.full() is True
    release.set()
    assert pool.join(timeout=5) is True
    assert pool.full() is False
    # Gunicorn's graceful shutdown waits until free_count() == size.
    assert pool.free_count() == pool.size == 2


def test_pools_of_two_listeners_together_stay_within_one_bound(release: Event) -> None:
    worker = GuniTuneWorker.__new__(GuniTuneWorker)  # only what _make_pool reads
    worker.gate = HeldGate(max_held=3)
    # ggevent.GeventWorker.run: ``Pool(self.worker_connections)`` per listener.
    pools = [worker._make_pool(1000), worker._make_pool(1000)]
    accepted = 0
    for pool in pools:  # BaseServer._do_read: accept while not full()
        while not pool.full() and accepted < 100:
            hold(pool, release, 1)
            accepted += 1
    assert accepted == 3
    assert worker.gate.pools == pools


# --- balance with the other workers ---------------------------------------------------


def test_gate_shuts_while_another_worker_holds_clearly_less(
    release: Event, seats: tuple[Seat, Seat]
) -> None:
    mine, other = seats
    pool = GatedPool(HeldGate(max_held=100, seat=mine))
    other.publish(0)
    hold(pool, release, 2)
    assert pool.full() is False  # within the slack of 2
    hold(pool, release, 1)
    assert pool.full() is True
    other.publish(1)
    assert pool.full() is False


def test_idle_keepalive_connections_do_not_shut_the_gate_for_balance(
    release: Event, seats: tuple[Seat, Seat]
) -> None:
    mine, other = seats
    pool = GatedPool(HeldGate(max_held=100, seat=mine))
    other.publish(0)
    hold(pool, release, 10, busy=False)
    assert pool.full() is False


def test_held_requests_are_published_for_the_other_workers(
    release: Event, seats: tuple[Seat, Seat]
) -> None:
    mine, other = seats
    gate = HeldGate(max_held=100, seat=mine)
    members = hold(GatedPool(gate), release, 3)
    assert other.others() == [3]
    gate.idle(members[0])
    assert other.others() == [2]


def test_fair_share_of_the_kernel_queue_opens_a_gate_shut_for_balance(
    release: Event, seats: tuple[Seat, Seat], listener: socket.socket
) -> None:
    mine, other = seats
    pool = GatedPool(HeldGate(max_held=100, seat=mine, listeners=[listener]))
    other.publish(0)
    hold(pool, release, 4)
    assert pool.full() is True  # 4 > 0 + slack 2, nothing waits in the kernel
    clients = connect(listener, 6)  # a share of 3 each: 4 <= 0 + 2 + 3
    try:
        assert pool.gate.kernel_queue() == (6, queue_size(BACKLOG))
        assert pool.full() is False
    finally:
        for client in clients:
            client.close()


def test_a_half_full_kernel_queue_opens_the_gate_whatever_the_balance(
    release: Event, seats: tuple[Seat, Seat]
) -> None:
    mine, other = seats
    small = listening(8)
    pool = GatedPool(HeldGate(max_held=100, seat=mine, listeners=[small]))
    other.publish(0)
    hold(pool, release, 20)
    clients: list[socket.socket] = []
    try:
        clients += connect(small, 3)  # a share of 2 each: 20 > 0 + 2 + 2
        assert pool.full() is True
        clients += connect(small, 1)  # 4 of 8: the next SYNs would be dropped
        assert pool.full() is False
    finally:
        for client in clients:
            client.close()
        small.close()


def test_listen_queue_counts_connections_not_yet_accepted_and_the_queue_size(
    listener: socket.socket,
) -> None:
    assert listen_queue(listener) == (0, queue_size(BACKLOG))
    clients = connect(listener, 3)
    try:
        accepted, _ = listener.accept()
        accepted.close()
        assert listen_queue(listener) == (2, queue_size(BACKLOG))
    finally:
        for client in clients:
            client.close()


def test_listen_queue_is_zero_where_unknown(tmp_path: Any) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        unix.bind(str(tmp_path / "s"))
        unix.listen(4)
        assert listen_queue(unix) == (0, 0)
    finally:
        unix.close()
    assert listen_queue(object()) == (0, 0)


# --- waking the accept loop -----------------------------------------------------------


def test_link_fires_once_when_a_member_leaves_a_full_gate(
    links: list[tuple[GatedPool, Link]],
) -> None:
    release = Event()
    pool = GatedPool(HeldGate(max_held=2))
    hold(pool, release, 2)
    fired: list[object] = []
    woke = Event()

    def start_accepting(_event: object = None) -> None:  # what BaseServer links
        fired.append(_event)
        woke.set()

    pool.semaphore.rawlink(start_accepting)
    links.append((pool, start_accepting))
    turns()
    assert fired == []  # still full: the accept loop stays asleep
    release.set()
    assert woke.wait(timeout=5)
    assert pool.join(timeout=5) is True  # both members left: two releases
    turns()
    assert fired == [pool.semaphore]  # one wake-up, not one per release


def test_gate_shut_for_balance_does_not_spin(
    release: Event, seats: tuple[Seat, Seat], links: list[tuple[GatedPool, Link]]
) -> None:
    mine, other = seats
    pool = GatedPool(HeldGate(max_held=100, seat=mine))
    other.publish(0)
    hold(pool, release, 5)
    assert pool.full() is True
    restarts = 0

    def start_accepting(_event: object = None) -> None:
        # What gevent's BaseServer does: re-arm accepting, find the pool still
        # full (a connection is waiting in the backlog), wait on the semaphore.
        nonlocal restarts
        restarts += 1
        if pool.full():
            pool.semaphore.rawlink(start_accepting)

    pool.semaphore.rawlink(start_accepting)
    links.append((pool, start_accepting))
    turns()  # several rechecks of the board; nothing changed
    assert restarts == 0


def test_gate_shut_for_balance_reopens_when_another_worker_gets_busier(
    release: Event, seats: tuple[Seat, Seat], links: list[tuple[GatedPool, Link]]
) -> None:
    mine, other = seats
    pool = GatedPool(HeldGate(max_held=100, seat=mine))
    other.publish(0)
    hold(pool, release, 5)
    woke = Event()
    pool.semaphore.rawlink(lambda _event: woke.set())
    # No member of this worker leaves: only the board changes, in another process.
    other.publish(10)
    assert woke.wait(timeout=5), "accept not re-armed although the gate has room"
    assert pool.semaphore.has_links() is False


def test_link_on_an_open_gate_fires_at_once() -> None:
    pool = GatedPool(HeldGate(max_held=2))
    woke = Event()
    pool.semaphore.rawlink(lambda _event: woke.set())
    assert woke.wait(timeout=5)


def test_unlinked_callback_is_not_called(release: Event) -> None:
    pool = GatedPool(HeldGate(max_held=1))
    hold(pool, release, 1)
    fired: list[object] = []
    pool.semaphore.rawlink(fired.append)
    pool.semaphore.unlink(fired.append)
    release.set()
    assert pool.join(timeout=5) is True
    turns()
    assert fired == []


# --- the server and the stats --------------------------------------------------------------


def test_eager_server_accepts_100_per_turn_whatever_gunicorn_sets(
    listener: socket.socket,
) -> None:
    server = EagerServer(listener, handle=lambda client, address: None)
    try:
        server.max_accept = 1  # Gunicorn's setting with several workers
        assert server.max_accept == 100
    finally:
        server.close()


def test_gate_stats(release: Event, seats: tuple[Seat, Seat], listener: socket.socket) -> None:
    mine, other = seats
    gate = HeldGate(max_held=10, seat=mine, listeners=[listener])
    pool = GatedPool(gate)
    other.publish(4)
    hold(pool, release, 2)
    hold(pool, release, 1, busy=False)
    assert gate.stats() == {
        "held_requests": 2,
        "connections": 3,
        "idle_keepalive": 1,
        "max_held": 10,
        "others_held": [4],
        "in_kernel_queue": 0,
        "accepting": True,
    }


def test_a_draining_gate_accepts_nothing_more() -> None:
    gate = HeldGate(max_held=100)
    pool = GatedPool(gate)
    assert pool.full() is False
    gate.draining = True  # SIGTERM, reload, max_requests
    assert pool.full() is True
