"""Connection hold time per request, and which database failures are capacity signals."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gunitune._db_holds import Holds, capacity_error


def test_overlapping_connections_count_once() -> None:
    holds = Holds()
    holds.opened(1.0)  # the session's connection
    holds.opened(1.2)  # an engine.connect() inside it
    holds.closed(1.5)
    holds.closed(2.0)
    holds.opened(3.0)  # a later one
    holds.closed(3.5)
    assert holds.total(9.0) == pytest.approx(1.5)


def test_a_connection_still_out_counts_up_to_now_and_extra_checkins_are_ignored() -> None:
    holds = Holds()
    holds.closed(0.5)  # checked out before the request was tracked
    holds.opened(1.0)
    assert holds.total(1.25) == pytest.approx(0.25)


class PgError(Exception):
    def __init__(self, code: str, attribute: str = "pgcode") -> None:
        super().__init__(code)
        setattr(self, attribute, code)


def context(original: BaseException, *, disconnect: bool = False, pre_ping: bool = False) -> Any:
    return SimpleNamespace(
        original_exception=original, is_disconnect=disconnect, is_pre_ping=pre_ping
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PgError("57014"), True),  # statement_timeout: query cancelled
        (PgError("55P03"), True),  # lock_timeout
        (PgError("53300"), True),  # too many connections
        (PgError("57P01", "sqlstate"), True),  # admin shutdown, psycopg 3's attribute
        (PgError("08006"), True),  # connection failure
        (PgError("23505"), False),  # unique violation: the app's
        (PgError("42P01"), False),  # undefined table: the app's
        (PgError("40001"), False),  # serialization failure: retried by the app, not load
        (ValueError("no code"), False),
    ],
)
def test_capacity_errors_by_sqlstate(error: Exception, expected: bool) -> None:
    assert capacity_error(context(error)) is expected


def test_a_lost_connection_is_a_capacity_error() -> None:
    assert capacity_error(context(OSError("reset"), disconnect=True))


def test_a_stale_connection_found_by_pre_ping_is_not() -> None:
    assert not capacity_error(context(OSError("stale"), disconnect=True, pre_ping=True))


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit()])
def test_an_interrupted_request_is_not(interrupt: BaseException) -> None:
    # GreenletExit and gevent.Timeout are BaseException too: SQLAlchemy marks them disconnects.
    assert not capacity_error(context(interrupt, disconnect=True))
