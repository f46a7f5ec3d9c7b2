"""What gunitune answers over HTTP: the 503 it sheds with, and the stats endpoint."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import Forbidden, ServiceUnavailable

__all__ = ["DatabaseUnavailable", "Overloaded", "stats_view"]


class Overloaded(ServiceUnavailable):
    """503 with ``Retry-After``: this worker could not serve the request in time.

    A Werkzeug ``HTTPException``, so ``@app.errorhandler(503)`` (or
    ``errorhandler(Overloaded)``) renders it the app's way. ``reason`` says
    which limit refused it; ``waited`` how long it queued first.
    """

    description = (
        "The server is at capacity and could not start this request in time. "
        "Retry after the number of seconds in the Retry-After header."
    )

    def __init__(self, retry_after: int, reason: str, waited: float = 0.0) -> None:
        super().__init__(retry_after=retry_after)
        self.reason = reason
        self.waited = waited


class DatabaseUnavailable(Overloaded):
    """503 with ``Retry-After``: the database is away (restarting, unreachable).

    Raised in place of the driver's error when a request's query or connection
    was cut by an outage, and for requests that waited for the database longer
    than the outage wait. Never retried by gunitune: the statement may have run.
    """

    description = (
        "The database is unavailable right now. "
        "Retry after the number of seconds in the Retry-After header."
    )


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")


def _forwarded(headers: Any) -> bool:
    return any(name in headers for name in _FORWARDING_HEADERS)


def stats_view(
    stats: Callable[[Flask], dict[str, Any]], app: Flask, token: str
) -> Callable[[], Response]:
    """A view returning ``stats(app)`` as JSON, for loopback clients or the bearer ``token``."""

    def gunitune_stats() -> Response:
        if token:
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(sent.encode(), token.encode()):
                raise Forbidden(
                    "gunitune stats need 'Authorization: Bearer <GUNITUNE_STATS_TOKEN>'"
                )
        elif not _is_loopback(request.remote_addr) or _forwarded(request.headers):
            # Behind a reverse proxy on the same host every client is 127.0.0.1;
            # a forwarding header says this one came from elsewhere.
            raise Forbidden(
                "gunitune stats answer direct loopback clients only (or set GUNITUNE_STATS_TOKEN)"
            )
        return jsonify(stats(app))

    return gunitune_stats
