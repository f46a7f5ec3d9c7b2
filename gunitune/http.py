"""What gunitune answers over HTTP: the 503 it sheds with, the stats and metrics endpoints."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import Forbidden, ServiceUnavailable

__all__ = [
    "INTERNAL_ENDPOINTS",
    "METRICS_ENDPOINT",
    "STATS_ENDPOINT",
    "Overloaded",
    "check_access",
    "metrics_view",
    "stats_view",
]

STATS_ENDPOINT = "gunitune_stats"
METRICS_ENDPOINT = "gunitune_metrics"
INTERNAL_ENDPOINTS = frozenset({STATS_ENDPOINT, METRICS_ENDPOINT})


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


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host")


def _forwarded(headers: Any) -> bool:
    return any(name in headers for name in _FORWARDING_HEADERS)


def check_access(token: str) -> None:
    """Let the current request through to a gunitune endpoint, or raise ``Forbidden``.

    With ``token`` set, only ``Authorization: Bearer <token>`` passes; without,
    only a direct loopback client does.
    """
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise Forbidden(
                "gunitune stats and metrics need 'Authorization: Bearer <GUNITUNE_STATS_TOKEN>'"
            )
    elif not _is_loopback(request.remote_addr) or _forwarded(request.headers):
        # Behind a reverse proxy on the same host every client is 127.0.0.1;
        # a forwarding header says this one came from elsewhere.
        raise Forbidden(
            "gunitune stats and metrics answer direct loopback clients only "
            "(or set GUNITUNE_STATS_TOKEN)"
        )


def stats_view(
    stats: Callable[[Flask], dict[str, Any]], app: Flask, token: str
) -> Callable[[], Response]:
    """A view returning ``stats(app)`` as JSON, for loopback clients or the bearer ``token``."""

    def gunitune_stats() -> Response:
        check_access(token)
        return jsonify(stats(app))

    return gunitune_stats


def metrics_view(render: Callable[[], tuple[bytes, str]], token: str) -> Callable[[], Response]:
    """A view returning ``render()``'s Prometheus exposition, guarded like the stats."""

    def gunitune_metrics() -> Response:
        check_access(token)
        body, content_type = render()
        return Response(body, content_type=content_type)

    return gunitune_metrics
