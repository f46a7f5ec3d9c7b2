"""One request as the extension tracks it, and what the pool tells about it.

:class:`InFlight` is a tracked request's state; :class:`RouteInfo` a route on
the hot path. :data:`current` holds the one running in this greenlet, for the
pool's listeners: :class:`DbWatch` turns checkouts, checkins and database
errors into holds, database use, capacity failures and outages.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from flask import after_this_request, has_request_context

from gunitune._db_circuit import DbCircuits
from gunitune._db_holds import Holds, capacity_error
from gunitune._request_parts import keep_retry_after
from gunitune.core.lanes import EXEMPT
from gunitune.core.limits import RouteProfile, RouteProfiles
from gunitune.core.metrics import DB_UNAVAILABLE, SHED
from gunitune.http import DatabaseUnavailable
from gunitune.limiter import Ticket

__all__ = ["DbWatch", "InFlight", "RouteInfo", "current"]

_HELD_KEY = "gunitune_held"  # in a pool record's info: the request state holding it


@dataclass(slots=True, frozen=True)
class RouteInfo:
    """A URL rule as the hot path needs it (cached by the rule's identity)."""

    route: str
    mode: str | None
    profile: RouteProfile
    internal: bool = False  # gunitune's own endpoints: not counted in the metrics


@dataclass(slots=True)
class InFlight:
    """A tracked request: its lanes, its ticket, and what it did with the database."""

    route: str
    profile: RouteProfile
    mode: str | None
    db_lane: str
    cpu: bool
    measured: bool
    ticket: Ticket | None = None
    used_db: bool = False
    holds: Holds = field(default_factory=Holds)  # connections held, checkout to checkin
    db_failed: bool = False  # a query failed for the database's sake (timeout, lost connection)
    scout: bool = False  # a slow route's request sent ahead in the fast lane to be measured
    outage: bool = False  # its database work was cut by an outage
    built: bool = False  # its response body is built (not streamed): nothing runs after
    refused: str = ""  # why gunitune answered it itself: "shed" or "client_gone"
    shed_code: str = ""  # the cause of a shed (Rejected.code, or db_unavailable)


# The request running in this greenlet, for the pool's listeners: its state
# when it is tracked, its route when it took the hot path.
current: ContextVar[InFlight | RouteInfo | None] = ContextVar("gunitune_request", default=None)


@dataclass
class DbWatch:
    """The pool listeners of one app's engines."""

    profiles: RouteProfiles
    circuits: DbCircuits
    clock: Callable[[], float]

    def on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        """A connection left the pool: the request holds it from now."""
        state = current.get()
        if state is None:
            return
        if isinstance(state, RouteInfo):
            if state.mode != EXEMPT:
                self.profiles.saw_database(state.route)
            return
        if state.ticket is not None:
            # Kept on the connection record: the checkin may run where the
            # request's context is gone (garbage collection, another greenlet).
            record.info[_HELD_KEY] = state
            state.holds.opened(self.clock())
        if state.used_db:
            return
        state.used_db = True
        if state.db_lane == EXEMPT:
            # A route learned as database-free used the database: back to a lane.
            self.profiles.saw_database(state.route)

    def on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        """A connection came back to the pool."""
        state = record.info.pop(_HELD_KEY, None)
        if state is not None:
            state.holds.closed(self.clock())

    def on_db_error(self, context: Any) -> None:
        """A query or connect failed: note it, and answer an outage with a 503."""
        state = current.get()
        outage = self.circuits.on_error(context)
        if state is None:
            return
        if isinstance(state, RouteInfo):
            if state.mode != EXEMPT:
                self.profiles.saw_database(state.route)  # a failed connect never checks out
        else:
            state.used_db = True
            state.db_failed = state.db_failed or capacity_error(context)
            if outage:
                state.outage = True
                state.refused, state.shed_code = SHED, DB_UNAVAILABLE
        if outage and has_request_context():
            # In place of the driver's error: a 503 through the app's error
            # handlers. Not retried: the statement may have run. (Outside the
            # request, a teardown's rollback say, the driver's error goes on.)
            retry_after = self.circuits.retry_after()
            after_this_request(partial(keep_retry_after, retry_after))
            raise DatabaseUnavailable(retry_after, "the database is unavailable")

    @staticmethod
    def after_request(response: Any) -> Any:
        """Note whether the response is built: a streamed body keeps its slots while it runs."""
        state = current.get()
        if isinstance(state, InFlight):
            state.built = not response.is_streamed
        return response
