"""The database circuit (pure) and how the lanes hold and refuse while it is open."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import exc

from gunitune._db_circuit import outage_error
from gunitune.core.circuit import CLOSED, HALF_OPEN, OPEN, Circuit
from gunitune.core.lanes import FAST, SLOW, LaneScheduler, Waiter, db_shares


def test_first_failure_opens_then_one_probe_at_a_time() -> None:
    circuit = Circuit(first_retry=0.1, longest_retry=0.4)
    assert circuit.failure(10.0) is True
    assert circuit.state == OPEN and circuit.outages == 1
    assert circuit.failure(10.01) is False  # more failures of the same outage
    assert not circuit.start_probe(10.05)  # not due yet
    assert circuit.seconds_to_probe(10.05) == pytest.approx(0.05)
    assert circuit.start_probe(10.1)
    assert circuit.state == HALF_OPEN
    assert not circuit.start_probe(10.1)  # a single probe


def test_failed_probes_back_off_to_the_longest_retry() -> None:
    circuit = Circuit(first_retry=0.1, longest_retry=0.4)
    circuit.failure(0.0)
    now, gaps = 0.1, []
    for _ in range(4):
        assert circuit.start_probe(now)
        circuit.failure(now)
        gaps.append(round(circuit.next_probe_at - now, 3))
        now = circuit.next_probe_at
    assert gaps == [0.2, 0.4, 0.4, 0.4]
    assert circuit.failed_probes == 4


def test_success_closes_and_reports_the_outage() -> None:
    circuit = Circuit()
    assert circuit.success(1.0) is None  # closed already
    circuit.failure(1.0)
    assert circuit.start_probe(2.0)
    assert circuit.success(2.5) == pytest.approx(1.5)
    assert circuit.state == CLOSED and circuit.is_closed
    assert circuit.failure(3.0) is True  # a new outage
    assert circuit.outages == 2 and circuit.failed_probes == 0


def test_bad_retries_are_refused() -> None:
    with pytest.raises(ValueError, match="first_retry=2, longest_retry=1"):
        Circuit(first_retry=2, longest_retry=1)


def _waiter(lane: str, since: float) -> Waiter:
    return Waiter(lane, "/r", None, since=since)


def test_held_lanes_hand_out_nothing_then_grant_in_order() -> None:
    lanes = LaneScheduler(2, db_shares(0.5))
    assert lanes.try_acquire(FAST)
    assert lanes.hold(True) == []
    assert not lanes.try_acquire(SLOW)  # a free slot, but the database is away
    first, second = _waiter(SLOW, 1.0), _waiter(FAST, 2.0)
    lanes.enqueue(first)
    lanes.enqueue(second)
    assert lanes.release(FAST) is None  # not handed over while held
    assert lanes.used == 0
    granted = lanes.hold(False)
    assert sorted(w.since for w in granted) == [1.0, 2.0]
    assert first.granted and second.granted and lanes.used == 2


def test_refuse_since_takes_only_the_overdue() -> None:
    lanes = LaneScheduler(1, db_shares(0.5))
    lanes.hold(True)
    old, new = _waiter(SLOW, 1.0), _waiter(SLOW, 5.0)
    lanes.enqueue(old)
    lanes.enqueue(new)
    assert lanes.refuse_since(2.0) == [old]
    assert old.refused and old.outage and not new.refused
    assert lanes.waiting() == 1


def _context(original: BaseException, **kw: Any) -> Any:
    fields = {
        "original_exception": original,
        "is_disconnect": False,
        "is_pre_ping": False,
        "connection": object(),
        "sqlalchemy_exception": exc.OperationalError("x", {}, Exception()),
    }
    fields.update(kw)
    return SimpleNamespace(**fields)


class _PgError(Exception):
    def __init__(self, text: str, pgcode: str | None = None) -> None:
        super().__init__(text)
        self.pgcode = pgcode


@pytest.mark.parametrize(
    ("context", "outage"),
    [
        (_context(_PgError("server closed the connection"), is_disconnect=True), True),
        (_context(_PgError("terminating connection", "57P01")), True),
        (_context(_PgError("the database system is starting up", "57P03")), True),
        (_context(_PgError("connection failure", "08006")), True),
        (_context(_PgError("canceling statement due to statement timeout", "57014")), False),
        (_context(_PgError("duplicate key", "23505")), False),
        (_context(_PgError("too many clients", "53300")), False),
        # A connect that failed: no SQLSTATE, libpq's words decide.
        (_context(_PgError("connection to server failed: Connection refused"), connection=None),
         True),
        (_context(_PgError("timeout expired"), connection=None), True),
        (_context(_PgError('FATAL: password authentication failed for "app"'), connection=None),
         False),
        (_context(_PgError('FATAL: database "x" does not exist'), connection=None), False),
        # A stale pooled connection found by pre-ping: the pool retries.
        (_context(_PgError("closed"), is_disconnect=True, is_pre_ping=True), False),
        # An interrupted request is not the database's failure.
        (_context(KeyboardInterrupt(), is_disconnect=True), False),
    ],
)
def test_outage_errors(context: Any, outage: bool) -> None:
    assert outage_error(context) is outage
