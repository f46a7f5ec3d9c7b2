"""Small parts of the request cycle: the response wrapper, loop-block reports, the peek.

Kept apart so :mod:`gunitune.request_cycle` reads as the per-request flow.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BlockReports", "ClosingBody", "client_gone"]

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


