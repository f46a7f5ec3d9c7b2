"""What gunitune answers over HTTP: the 503 it sheds with, the stats and metrics endpoints.

The stats endpoint must not share its path with a route of the app: Werkzeug
serves the first rule registered, so one of the two would vanish without a
word. Apps register routes both before ``init_app`` (``GuniTune(app)`` at the
end of a module) and after it (an app factory that calls ``init_app`` and then
registers blueprints), so the path is checked at registration, again when a
gunitune worker has loaded the app (before it serves), and, under any other
server, at the app's first request.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import Forbidden, ServiceUnavailable

from gunitune.core.errors import ConfigError

__all__ = [
    "INTERNAL_ENDPOINTS",
    "METRICS_ENDPOINT",
    "STATS_ENDPOINT",
    "DatabaseUnavailable",
    "Overloaded",
    "check_access",
    "check_stats_path",
    "metrics_view",
    "register_stats",
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


def check_access(token: str, loopback: bool = True) -> None:
    """Let the current request through to a gunitune endpoint, or raise ``Forbidden``.

    With ``token`` set, only ``Authorization: Bearer <token>`` passes; without,
    only a direct loopback client does, and only while ``loopback`` is on.
    """
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise Forbidden(
                "gunitune stats and metrics need 'Authorization: Bearer <GUNITUNE_STATS_TOKEN>'"
            )
    elif not loopback:
        # Settings refuse this combination; a view built by hand still locks out.
        raise Forbidden("gunitune stats and metrics need GUNITUNE_STATS_TOKEN (loopback is off)")
    elif not _is_loopback(request.remote_addr) or _forwarded(request.headers):
        # Behind a reverse proxy on the same host every client is 127.0.0.1;
        # a forwarding header says this one came from elsewhere. A proxy that
        # adds none is why GUNITUNE_STATS_LOOPBACK=off exists.
        raise Forbidden(
            "gunitune stats and metrics answer direct loopback clients only "
            "(or set GUNITUNE_STATS_TOKEN)"
        )


def stats_view(
    stats: Callable[[Flask], dict[str, Any]], app: Flask, token: str, loopback: bool = True
) -> Callable[[], Response]:
    """A view returning ``stats(app)`` as JSON, for the bearer ``token`` or, without one,
    direct loopback clients (unless ``loopback`` is false)."""

    def gunitune_stats() -> Response:
        check_access(token, loopback)
        return jsonify(stats(app))

    return gunitune_stats


def check_stats_path(app: Flask, path: str | None = None) -> None:
    """Raise :class:`ConfigError` if a route of the app has the stats endpoint's path.

    ``path``: the one about to be registered; by default the registered one's.
    Only a rule with the very same path conflicts: a converter route such as
    ``/<page>`` yields the stats path to the static rule, as intended.
    """
    rules = list(app.url_map.iter_rules())
    paths = {path} if path else {r.rule for r in rules if r.endpoint == STATS_ENDPOINT}
    for rule in rules:
        if rule.rule in paths and rule.endpoint != STATS_ENDPOINT:
            raise ConfigError(
                f"GUNITUNE_STATS_PATH={rule.rule!r} is also the path of the app's route"
                f" {rule.endpoint!r}, and one would hide the other: set GUNITUNE_STATS_PATH"
                f" to a path the app does not use, e.g. '/_gunitune/stats'",
                key="GUNITUNE_STATS_PATH",
            )


def register_stats(app: Flask, path: str, view: Callable[[], Response]) -> None:
    """Add the stats endpoint at ``path``, refusing a path the app's routes already use,
    and check again at the first request (routes registered after this call)."""
    check_stats_path(app, path)
    app.add_url_rule(path, STATS_ENDPOINT, view)

    def check_once() -> None:
        check_stats_path(app)
        # Passed: stop checking. A new list, so Flask's loop over the old one goes on.
        funcs = app.before_request_funcs.get(None, [])
        app.before_request_funcs[None] = [f for f in funcs if f is not check_once]

    app.before_request_funcs.setdefault(None, []).insert(0, check_once)


def metrics_view(
    render: Callable[[], tuple[bytes, str]], token: str, loopback: bool = True
) -> Callable[[], Response]:
    """A view returning ``render()``'s Prometheus exposition, guarded like the stats."""

    def gunitune_metrics() -> Response:
        check_access(token, loopback)
        body, content_type = render()
        return Response(body, content_type=content_type)

    return gunitune_metrics

