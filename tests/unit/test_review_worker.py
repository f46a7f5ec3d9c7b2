"""Review: defects of the gated accept loop (gunitune/worker.py), shown in-process.

gevent's Pool, semaphore links and hub work without monkey patching.
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event

from gunitune.core.limits import AcceptWindow
from gunitune.worker import GatedPool, GuniTuneWorker


@pytest.fixture
def release() -> Iterator[Event]:
    event = Event()
    yield event
    event.set()


def test_gate_reopens_when_the_window_grows_without_a_member_leaving(release: Event) -> None:
    window = AcceptWindow(capacity=10, floor=1, cpu_budget=1.0, smoothing=1.0)
    pool = GatedPool(10, window)
    window.on_sample(1.0, 1.0)  # a CPU-heavy request: window 1
    # One keep-alive connection stays open (its greenlet lives between requests).
    pool.spawn(release.wait)
    assert pool.full() is True
    resumed: list[object] = []

    def start_accepting(_event: object = None) -> None:  # what BaseServer links
        resumed.append(_event)

    pool._semaphore.rawlink(start_accepting)  # BaseServer._do_read: full -> wait for room
    gevent.sleep(0.02)
    assert resumed == []
    # Requests on that same connection finish and are IO-bound: the window reopens.
    window.on_sample(0.0, 0.1)
    assert window.window == 10
    assert pool.full() is False
    gevent.sleep(0.05)
    # The server should resume accepting now; nothing ever calls the link.
    assert resumed, "accept not re-armed although the pool is below its window"


def test_two_listeners_together_stay_within_one_window(release: Event) -> None:
    worker = GuniTuneWorker.__new__(GuniTuneWorker)  # only what _make_pool reads
    worker.gate_size = 10_000
    worker.window = AcceptWindow(capacity=3)
    # ggevent.GeventWorker.run: ``Pool(self.worker_connections)`` per listener.
    pools = [worker._make_pool(3), worker._make_pool(3)]
    accepted = 0
    for pool in pools:  # BaseServer._do_read: accept while not full()
        while not pool.full() and accepted < 100:
            pool.spawn(release.wait)
            accepted += 1
    assert accepted <= worker.window.window
