"""What one request did with the database: how long it held connections, and
whether a failure was the database's (a capacity signal) or the app's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Holds", "capacity_error"]

# SQLSTATEs that say the database could not keep up: a statement or lock
# timeout, a shutdown or restart, and the classes of connection failures and
# insufficient resources (too many connections, out of memory, disk full).
_CAPACITY_STATES = frozenset({"57014", "55P03", "57P01", "57P02", "57P03"})
_CAPACITY_CLASSES = frozenset({"08", "53"})


@dataclass(slots=True)
class Holds:
    """Time with at least one connection checked out: overlapping ones count once
    (a session's connection and an ``engine.connect()`` inside it)."""

    seconds: float = 0.0
    open: int = 0
    since: float = 0.0

    def opened(self, now: float) -> None:
        """A connection was checked out at ``now``."""
        if self.open == 0:
            self.since = now
        self.open += 1

    def closed(self, now: float) -> None:
        """A connection was checked in at ``now``."""
        if self.open == 0:
            return
        self.open -= 1
        if self.open == 0:
            self.seconds += now - self.since

    def total(self, now: float) -> float:
        """Seconds held so far, a connection still out counted up to ``now``."""
        return self.seconds + (now - self.since if self.open else 0.0)


def capacity_error(context: Any) -> bool:
    """Did this failure (a SQLAlchemy ``ExceptionContext``) come from the database's load?

    A lost connection, a timeout, a refusal: yes. A constraint violation, a
    syntax error, a missing table: no, they say nothing about load. Neither
    does a stale pooled connection found by ``pool_pre_ping`` (the request goes
    on with a fresh one), nor an interrupted request (``GreenletExit``, a
    ``gevent.Timeout``: not ``Exception`` subclasses).
    """
    if getattr(context, "is_pre_ping", False):
        return False
    original = context.original_exception
    if not isinstance(original, Exception):
        return False
    if context.is_disconnect:
        return True
    # psycopg2 names it pgcode, psycopg 3 sqlstate.
    code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
    return isinstance(code, str) and (code in _CAPACITY_STATES or code[:2] in _CAPACITY_CLASSES)
