"""Small parts of the request cycle: a request's state, the response wrapper,
loop-block reports, the peek, the lane decision, the pressure watcher.

Kept apart so :mod:`gunitune.request_cycle` reads as the per-request flow.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gunitune._db_holds import Holds
from gunitune.core.lanes import CPU
from gunitune.core.limits import RouteProfile
from gunitune.limiter import Ticket

__all__ = [
    "BlockReports",
    "ClosingBody",
    "InFlight",
    "PressureWatcher",
    "RouteInfo",
    "client_gone",
    "decide_lanes",
    "keep_retry_after",
]

# Loop-block reports: at most one event per route in this many seconds.
_BLOCK_REPORT_INTERVAL = 10.0


@dataclass
class BlockReports:
    last: dict[str, float] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def due(self, route: str, now: float) -> int | None:
        """Blocks to report for ``route`` now (this one plus suppressed), or None."""
        if now - self.last.get(route, float("-inf")) < _BLOCK_REPORT_INTERVAL:
            self.suppressed[route] = self.suppressed.get(route, 0) + 1
            return None
        self.last[route] = now
        return 1 + self.suppressed.pop(route, 0)


def client_gone(sock: Any) -> bool:
    """True when the peer closed or reset the connection (a peek, never a wait)."""
    raw = getattr(sock, "_sock", sock)  # gevent's socket would wait for data
    try:
        peeked: bytes = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    except ValueError:
        return False  # a TLS socket takes no recv flags: no way to tell, so serve it
    return peeked == b""


class ClosingBody:
    """The response body, with ``on_close`` run even when the body's own close raises."""

    __slots__ = ("_body", "_on_close")

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def keep_retry_after(seconds: int, response: Any) -> Any:
    """Add ``Retry-After`` to a shed response unless the app's handler set one."""
    if "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(seconds)
    return response


def decide_lanes(mode: str | None, learned: tuple[str, bool]) -> tuple[str, bool]:
    """(database lane, through the CPU lane?) for a request: decorators win over learning."""
    db_lane, cpu = learned
    if mode is None:
        return db_lane, cpu
    if mode == "io":
        return db_lane, False
    if mode == CPU:
        return db_lane, True
    return mode, False


@dataclass(slots=True, frozen=True)
class RouteInfo:
    """A URL rule as the hot path needs it (cached by the rule's identity)."""

    route: str
    mode: str | None
    profile: RouteProfile
    internal: bool = False  # gunitune's own endpoints: not counted in the metrics


@dataclass(slots=True)
class InFlight:
    """A request that queues, holds slots or is measured, from admission to close."""

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
    refused: str = ""  # why gunitune answered it itself: "shed" or "client_gone"
    shed_code: str = ""  # the limiter's cause of a shed (Rejected.code)


class _Observer(Protocol):
    def observe(self, waiters: int, /) -> object: ...


class _Waiting(Protocol):
    def waiting(self) -> int: ...


@dataclass
class PressureWatcher:
    """A greenlet that checks pool pressure every interval (gevent workers only)."""

    greenlet: Any = None  # None: not started; False: not under gevent

    def start(
        self,
        interval: float,
        telemetry: _Observer,
        limiter: Callable[[], _Waiting | None],
    ) -> None:
        """Start it once; outside gevent, pressure is checked on shedding only."""
        if self.greenlet is not None:
            return
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            self.greenlet = False
            return
        import gevent

        def watch() -> None:
            while True:
                gevent.sleep(interval)
                current = limiter()
                telemetry.observe(current.waiting() if current is not None else 0)

        self.greenlet = gevent.spawn(watch)
