"""GatedPool: a gevent Pool whose full() follows the adaptive accept window.

gevent's Pool, Event and hub work without monkey patching, so these run in-process.
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event
from gevent.pool import Pool

from gunitune.core.limits import AcceptWindow
from gunitune.worker import GatedPool


@pytest.fixture
def release() -> Iterator[Event]:
    """Members of the pool wait on this; set at the end so nothing is left running."""
    event = Event()
    yield event
    event.set()


def fill(pool: Pool, n: int, release: Event) -> None:
    for _ in range(n):
        pool.spawn(release.wait)


def test_not_full_when_empty() -> None:
    pool = GatedPool(10, AcceptWindow(capacity=10))
    assert pool.full() is False
    assert pool.free_count() == pool.size == 10


def test_full_at_window_open(release: Event) -> None:
    pool = GatedPool(10, AcceptWindow(capacity=4))
    fill(pool, 3, release)
    assert pool.full() is False
    fill(pool, 1, release)
    assert pool.full() is True  # the window (4), not the size (10)
    assert pool.free_count() == 6  # unchanged: size - members


def test_full_follows_the_window_as_it_shrinks_and_grows(release: Event) -> None:
    window = AcceptWindow(capacity=10, floor=1, cpu_budget=1.0, smoothing=1.0)
    pool = GatedPool(10, window)
    fill(pool, 3, release)
    assert pool.full() is False
    window.on_sample(0.5, 0.5)  # CPU-heavy: window floor(1.0 / 0.5) = 2
    assert window.window == 2
    assert pool.full() is True
    window.on_sample(0.0, 0.5)  # IO again: reopens to capacity
    assert window.window == 10
    assert pool.full() is False
    window.resize(3)
    assert pool.full() is True


def test_window_above_size_is_capped_by_size(release: Event) -> None:
    pool = GatedPool(5, AcceptWindow(capacity=50))
    fill(pool, 4, release)
    assert pool.full() is False
    fill(pool, 1, release)
    assert pool.full() is True
    assert pool.free_count() == 0


def test_free_count_and_size_unchanged_by_window(release: Event) -> None:
    window = AcceptWindow(capacity=10, floor=1, cpu_budget=1.0)
    pool = GatedPool(10, window)
    plain = Pool(10)
    window.on_sample(1.0, 1.0)
    assert window.window == 1
    fill(pool, 2, release)
    fill(plain, 2, release)
    assert pool.full() is True
    assert pool.size == plain.size == 10
    assert pool.free_count() == plain.free_count() == 8


def test_members_finishing_reopen_the_gate() -> None:
    release = Event()
    pool = GatedPool(10, AcceptWindow(capacity=2))
    fill(pool, 2, release)
    assert pool.full() is True
    release.set()
    assert pool.join(timeout=5) is True
    assert len(pool) == 0
    assert pool.full() is False
    # Gunicorn's graceful shutdown waits until free_count() == size.
    assert pool.free_count() == pool.size


def test_window_state_is_shared_not_copied() -> None:
    window = AcceptWindow(capacity=3)
    pool = GatedPool(8, window)
    assert pool.window is window


def test_gate_closed_by_window_does_not_spin(release: Event) -> None:
    window = AcceptWindow(capacity=10, floor=1, cpu_budget=1.0)
    pool = GatedPool(10, window)
    window.on_sample(1.0, 1.0)  # window 1
    fill(pool, 1, release)
    assert pool.full() is True
    restarts = 0

    def start_accepting(_event: object = None) -> None:
        # What gevent.baseserver.BaseServer does: re-arm accepting, find the pool
        # still full (a connection is waiting in the backlog), wait on the semaphore.
        nonlocal restarts
        restarts += 1
        if pool.full():
            pool._semaphore.rawlink(start_accepting)

    pool._semaphore.rawlink(start_accepting)
    gevent.sleep(0.02)  # give the hub a few loop iterations; nobody finished
    assert restarts == 0
