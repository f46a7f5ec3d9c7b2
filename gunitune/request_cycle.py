"""The extension's per-request work: admit, measure, release, learn, report.

Admission happens in ``before_request`` (after routing, so the route is known,
and inside Flask, so the 503 goes through the app's error handlers). Release
happens in a WSGI wrapper around ``app.wsgi_app``, when the server closes the
response: after a streamed body has been produced, after Flask-SQLAlchemy has
returned the session's connection in its app-context teardown, and whatever
other teardown functions raise. A slot released any earlier would let the next
request meet a pool with no free connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask, Response, g, request
from werkzeug.wsgi import ClosingIterator

from gunitune import runtime
from gunitune.admission import Admission, Rejected
from gunitune.core.limits import RouteProfiles, retry_after_seconds
from gunitune.core.settings import Settings
from gunitune.cpu_meter import GreenletCpuMeter
from gunitune.http import Overloaded
from gunitune.telemetry import PoolTelemetry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["RequestCycle"]

log = structlog.get_logger("gunitune")
_ENVIRON_KEY = "gunitune.in_flight"
_G_SHED = "_gunitune_shed_retry_after"
# Loop-block reports: at most one event per route in this many seconds.
_BLOCK_REPORT_INTERVAL = 10.0


@dataclass
class _InFlight:
    route: str
    ticket: Any


@dataclass
class _BlockReports:
    last: dict[str, float] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def due(self, route: str, now: float) -> int | None:
        """Blocks to report for ``route`` now (this one plus suppressed), or None."""
        if now - self.last.get(route, float("-inf")) < _BLOCK_REPORT_INTERVAL:
            self.suppressed[route] = self.suppressed.get(route, 0) + 1
            return None
        self.last[route] = now
        return 1 + self.suppressed.pop(route, 0)


@dataclass
class RequestCycle:
    """Before/teardown hooks of one app, with the state they share."""

    app: Flask
    settings: Settings
    admission: Admission
    profiles: RouteProfiles
    meter: GreenletCpuMeter
    telemetry: PoolTelemetry
    mode_of: Callable[[Any], str | None]
    clock: Callable[[], float] = time.monotonic
    _blocks: _BlockReports = field(default_factory=_BlockReports)
    _watcher: Any = None

    def before_request(self) -> None:
        """Admit the request or raise :class:`Overloaded`; start measuring it."""
        view = self.app.view_functions.get(request.endpoint) if request.endpoint else None
        mode = self.mode_of(view)
        if mode == "exempt":
            return
        self._start_watcher()
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        cpu_bound = mode == "cpu" or (mode != "io" and self.profiles.is_cpu_bound(route))
        try:
            ticket = self.admission.admit(cpu_bound=cpu_bound)
        except Rejected as exc:
            self.telemetry.record_shed()
            self.telemetry.observe(self.admission.waiting)
            retry_after = self._retry_after(route)
            setattr(g, _G_SHED, retry_after)
            raise Overloaded(retry_after, exc.reason, exc.waited) from None
        self.telemetry.record_wait(ticket.waited)
        request.environ[_ENVIRON_KEY] = _InFlight(route, ticket)
        self.meter.start(route)

    def after_request(self, response: Response) -> Response:
        """Keep ``Retry-After`` on a shed request even when the app renders its own 503."""
        retry_after = g.pop(_G_SHED, None)
        if retry_after is not None and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def wsgi_wrapper(self, wsgi_app: WSGIApplication) -> WSGIApplication:
        """Wrap ``app.wsgi_app`` so the slot is released when the response is closed."""

        def release_on_close(
            environ: WSGIEnvironment, start_response: StartResponse
        ) -> Iterable[bytes]:
            try:
                body = wsgi_app(environ, start_response)
            except BaseException:
                self.finish(environ)
                raise
            return ClosingIterator(body, [lambda: self.finish(environ)])

        return release_on_close

    def finish(self, environ: WSGIEnvironment) -> None:
        """Release the slot, learn from the request, report pressure and loop blocks."""
        state: _InFlight | None = environ.pop(_ENVIRON_KEY, None)
        if state is None:
            return
        try:
            account = self.meter.stop()
        finally:
            self.admission.release(state.ticket)
        if account is None:
            return
        self.profiles.add(state.route, account.cpu, account.own_wall)
        worker = runtime.current()
        if worker is not None and worker.adaptive:
            worker.window.on_sample(account.cpu, account.own_wall)
        if account.longest_slice >= self.settings.block_threshold:
            self._report_block(state.route, account.longest_slice)
        self.telemetry.observe(self.admission.waiting)

    def _retry_after(self, route: str) -> int:
        if self.settings.retry_after is not None:
            return self.settings.retry_after
        profile = self.profiles.routes.get(route)
        per_request = profile.wall_seconds if profile else self.admission.queue_timeout
        return retry_after_seconds(self.admission.waiting + 1, self.admission.capacity, per_request)

    def _report_block(self, route: str, seconds: float) -> None:
        count = self._blocks.due(route, self.clock())
        if count is not None:
            log.warning(
                "event_loop_blocked",
                route=route,
                seconds=round(seconds, 3),
                blocks=count,
                threshold=self.settings.block_threshold,
                pid=os.getpid(),
                hint="CPU work in a gevent worker holds every other request of this worker",
            )

    def _start_watcher(self) -> None:
        """A greenlet that checks pool pressure while no request arrives (gevent only)."""
        if self._watcher is not None:
            return
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            self._watcher = False  # not in a gevent worker: per-request checks only
            return
        import gevent

        def watch() -> None:
            while True:
                gevent.sleep(self.settings.pressure_interval)
                self.telemetry.observe(self.admission.waiting)

        self._watcher = gevent.spawn(watch)

    def stats(self) -> dict[str, Any]:
        """All numbers of this worker, for ``GuniTune.stats()`` and the stats endpoint."""
        worker = runtime.current()
        window: dict[str, Any] | None = None
        if worker is not None:
            w = worker.window
            window = {
                "window": w.window,
                "capacity": w.capacity,
                "planned_capacity": worker.planned_capacity,
                "cpu_per_request_ms": round(w.cpu_per_request * 1000, 3),
                "adaptive": worker.adaptive,
            }
        return {
            "pid": os.getpid(),
            "admission": self.admission.stats(),
            "accept_window": window,
            "routes": self.profiles.snapshot(),
            "pool": self.telemetry.stats(),
        }
