"""GuniTuneWorker's own parts: held-request accounting per request, and the drain on stop.

The worker is built without Gunicorn's arbiter (``__new__`` plus the attributes
these methods read); Gunicorn's request handling is replaced by a recorder.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gunicorn.workers import ggevent
from structlog.testing import capture_logs

from gunitune import green
from gunitune._board import LoadBoard, Seat
from gunitune._gate import GatedPool, HeldGate
from gunitune.core.lanes import FAST
from gunitune.core.limits import RouteProfiles
from gunitune.limiter import Limiter, Rejected
from gunitune.worker import GuniTuneWorker
from tests.unit.helpers import resolved


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def worker(graceful_timeout: float = 0.0, heartbeat: Counter | None = None) -> GuniTuneWorker:
    """A worker past boot: limiter, seat on a board, gate; as ``load_wsgi`` and ``run`` leave it."""
    made = GuniTuneWorker.__new__(GuniTuneWorker)
    made._alive = True
    made._first_read = set()
    made._profiles = None
    made.pid = os.getpid()
    made.cfg = SimpleNamespace(graceful_timeout=graceful_timeout, timeout=30, keepalive=2)
    made.limiter = Limiter(
        resolved(1), heartbeat=heartbeat, event_factory=Event, yield_to_loop=lambda: None
    )
    made.board = LoadBoard(seats=4)
    made.seat = made.board.take_seat(made.pid)
    made.seat.set_open(True)
    made.gate = HeldGate(max_held=10, seat=made.seat)
    return made


def other_seat(board: LoadBoard) -> Seat:
    seat = board.take_seat(os.getppid())
    seat.set_open(True)
    return seat


def test_a_request_counts_as_held_only_while_it_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beats = Counter()
    served = worker(heartbeat=beats)
    gate = served.gate
    assert gate is not None
    pool = GatedPool(gate)
    release = Event()
    connection = pool.spawn(release.wait)  # one keep-alive connection
    seen: list[int] = []

    def serve(self: Any, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        seen.append(gate.held())
        return True  # keep-alive

    monkeypatch.setattr(ggevent.GeventWorker, "handle_request", serve)
    observer = other_seat(served.board)
    assert served.handle_request("l", None, connection, None) is True
    assert seen == [1]
    assert gate.held() == 0  # between two requests it holds nothing
    assert observer.others() == [0]
    assert beats.calls == 1  # finishing a request is progress
    release.set()


def test_a_new_connection_waits_the_worker_timeout_for_its_first_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = worker()
    waits: list[float] = []

    def connection(self: Any, listener: Any, client: Any, addr: Any) -> None:
        # Gunicorn's keep-alive loop: a timeout per request read.
        waits.append(served.timeout_ctx().seconds)
        served.handle_request("l", None, client, None)
        waits.append(served.timeout_ctx().seconds)

    monkeypatch.setattr(ggevent.GeventWorker, "handle", connection)
    monkeypatch.setattr(ggevent.GeventWorker, "handle_request", lambda *args: True)
    served.handle(None, object(), None)
    # A held storm's clients may send late; between requests, keep-alive as usual.
    assert waits == [30, 2]
    assert served._first_read == set()  # nothing left behind by the connection


def test_stop_closes_the_seat_at_once_and_refuses_queued_requests_later() -> None:
    draining = worker(graceful_timeout=0.0)
    limiter = draining.limiter
    assert limiter is not None
    holder = limiter.acquire(FAST)
    waiter = gevent.spawn(limiter.acquire, FAST)
    gevent.sleep(0)
    assert limiter.waiting() == 1
    observer = other_seat(draining.board)
    assert observer.others() == [0]
    draining.alive = False  # SIGTERM, reload or max_requests
    assert observer.others() == []  # no longer takes part in accepting
    waiter.join(timeout=5)
    assert isinstance(waiter.exception, Rejected)
    assert waiter.exception.reason == "the worker is shutting down"
    limiter.release(holder)
    assert limiter.db.used == 0


def test_queued_requests_keep_waiting_for_half_the_graceful_timeout() -> None:
    draining = worker(graceful_timeout=60.0)
    limiter = draining.limiter
    assert limiter is not None
    holder = limiter.acquire(FAST)
    waiter = gevent.spawn(limiter.acquire, FAST)
    gevent.sleep(0)
    draining.alive = False
    gevent.sleep(0.01)
    assert not waiter.dead  # served if a slot frees within the first half
    limiter.release(holder)
    waiter.join(timeout=5)
    assert waiter.successful()
    assert limiter.refusing is False


def test_setting_alive_again_does_not_drain() -> None:
    running = worker()
    running.alive = True
    assert running.limiter is not None and running.limiter.refusing is False


def test_stop_before_the_limiter_exists_only_closes_the_seat() -> None:
    booting = GuniTuneWorker.__new__(GuniTuneWorker)
    booting._alive = True
    booting.limiter = None
    booting.gate = None
    board = LoadBoard(seats=4)
    booting.seat = board.take_seat(os.getpid())
    booting.seat.set_open(True)
    observer = other_seat(board)
    assert observer.others() == [0]
    booting.alive = False
    assert observer.others() == []


@pytest.mark.parametrize(
    ("longest", "refuse_in"),
    [(None, 30.0), (0.0, 58.0), (0.4, 58.0), (5.0, 45.0), (100.0, 30.0)],
)
def test_queued_requests_are_refused_when_the_slowest_route_could_no_longer_finish(
    longest: float | None, refuse_in: float
) -> None:
    draining = worker(graceful_timeout=60.0)
    if longest is not None:
        profiles = RouteProfiles()
        if longest:
            profiles.add("/slow", 0.0, longest, True, 0.0)
        draining._profiles = profiles
    with capture_logs() as logs:
        draining.alive = False
        gevent.sleep(0)
    (event,) = [e for e in logs if e["event"] == "worker_draining"]
    # Three times the slowest route's usual time, at least 2 s, at most half.
    assert event["refuse_queued_in"] == pytest.approx(refuse_in)


PG_URL = "postgresql+psycopg2://app:s3cret@db.example/app"


def test_a_driver_error_during_the_boot_check_skips_it_instead_of_halting() -> None:
    """Issue 10 item 3: a psycopg2.Error (SET statement_timeout during a restart) is not a
    GunituneError; it used to exit the worker with code 3 and stop the arbiter."""
    import psycopg2
    from sqlalchemy import create_engine

    booting = worker()

    def restarting(url: str, **kwargs: Any) -> Any:
        raise psycopg2.OperationalError(f"terminating connection (url {url})")

    engine = create_engine(PG_URL)
    original = green.check_driver_yields
    green.check_driver_yields = restarting  # type: ignore[assignment]
    try:
        with capture_logs() as logs:
            booting._check_drivers([engine], "error")  # does not raise
    finally:
        green.check_driver_yields = original
    (skipped,) = [e for e in logs if e["event"] == "driver_check_skipped"]
    assert "terminating connection" in skipped["reason"]
    assert "s3cret" not in skipped["reason"]


def test_a_slow_first_measure_is_measured_again_before_refusing() -> None:
    from sqlalchemy import create_engine

    booting = worker()
    calls: list[float] = []

    def measure(url: str, seconds: float = 0.2, **kwargs: Any) -> green.DriverCheck:
        calls.append(seconds)
        # A busy machine: the first, short measure overran; the longer one overlaps.
        return green.DriverCheck(seconds > 0.2, "psycopg2", seconds * 1.7, "measured")

    original = green.check_driver_yields
    green.check_driver_yields = measure  # type: ignore[assignment]
    try:
        booting._check_drivers([create_engine(PG_URL)], "error")  # does not raise
    finally:
        green.check_driver_yields = original
    assert calls == [0.2, 0.5]
