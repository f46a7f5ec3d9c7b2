"""Review: admission slots must come back whatever interrupts a waiting request."""

from __future__ import annotations

import gevent
import pytest

from gunitune.admission import Admission, Rejected


def test_slot_comes_back_when_a_lane_wait_is_interrupted() -> None:
    admission = Admission(2, cpu_concurrency=1, queue_timeout=5.0, heartbeat=None)
    running = admission.admit(cpu_bound=True)  # holds the CPU lane

    def with_deadline() -> None:
        with gevent.Timeout(0.05):  # e.g. a request-deadline middleware
            admission.admit(cpu_bound=True)

    waiter = gevent.spawn(with_deadline)
    waiter.join(timeout=5)
    assert isinstance(waiter.exception, gevent.Timeout)
    admission.release(running)
    assert admission.in_flight == 0
    admission.queue_timeout = 0.1
    first = admission.admit()
    try:
        second = admission.admit()  # capacity is 2 and nothing is in flight
    except Rejected:
        pytest.fail("a slot leaked: capacity 2, one request in flight, the second is refused")
    admission.release(second)
    admission.release(first)
