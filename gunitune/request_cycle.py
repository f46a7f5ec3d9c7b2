"""The extension's per-request work: pick the lane, acquire, measure, release, learn.

Admission happens in ``before_request`` (after routing, so the route is known,
and inside Flask, so a 503 goes through the app's error handlers). Release
happens in a WSGI wrapper around ``app.wsgi_app``, when the server closes the
response: after a streamed body has been produced, after Flask-SQLAlchemy has
returned the session's connection in its app-context teardown, and whatever
other teardown functions raise. A slot released any earlier would let the next
request meet a pool with no free connection.

The hot path is kept short: a route that needs no database slot and is not
being sampled does not reach the wrapper's close hook at all.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask, after_this_request, request
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gunitune._db_circuit import DbCircuits
from gunitune._db_timeouts import add_connect_defaults
from gunitune._metrics import Metrics
from gunitune._request_parts import (
    BlockReports,
    ClosingBody,
    PressureWatcher,
    client_gone,
    decide_lanes,
    keep_retry_after,
)
from gunitune._request_state import DbWatch, InFlight, RouteInfo, current
from gunitune.core.lanes import CPU, EXEMPT, FAST
from gunitune.core.limits import RouteProfile, RouteProfiles, retry_after_seconds
from gunitune.core.metrics import CLIENT_GONE, SHED
from gunitune.core.resolve import Resolved
from gunitune.cpu_meter import GreenletCpuMeter
from gunitune.http import INTERNAL_ENDPOINTS, DatabaseUnavailable, Overloaded
from gunitune.limiter import ClientGone, Limiter, Moved, Rejected, Ticket
from gunitune.telemetry import PoolTelemetry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["RequestCycle"]

log = structlog.get_logger("gunitune")
_ENVIRON_KEY = "gunitune.in_flight"
_OWN_LIMITER_LOCK = threading.Lock()


@dataclass
class RequestCycle:
    """The extension's state for one app: routes, limiter, meter, telemetry."""

    app: Flask
    resolve_own: Callable[[], Resolved]
    profiles: RouteProfiles
    meter: GreenletCpuMeter
    telemetry: PoolTelemetry
    engines: list[Engine]
    primary: Engine | None
    mode_of: Callable[[Any], str | None]
    block_threshold: float = 0.5
    pressure_interval: float = 1.0
    retry_after: int | None = None
    outage_wait: float = 15.0
    clock: Callable[[], float] = time.monotonic
    limiter: Limiter | None = None
    metrics: Metrics | None = None  # None: metrics off (one check per request)
    _routes: dict[int, RouteInfo] = field(default_factory=dict)
    _blocks: BlockReports = field(default_factory=BlockReports)
    _watcher: PressureWatcher = field(default_factory=PressureWatcher)

    def __post_init__(self) -> None:
        self.circuits = DbCircuits(self.engines, lambda: self.limiter, outage_wait=self.outage_wait)
        self.watch = DbWatch(self.profiles, self.circuits, self.clock)
        for engine in self.engines:
            add_connect_defaults(engine)
            event.listen(engine, "checkout", self.watch.on_checkout)
            event.listen(engine, "checkin", self.watch.on_checkin)
            event.listen(engine, "handle_error", self.watch.on_db_error)

    def attach(self, limiter: Limiter) -> None:
        """Use the worker's limiter (called once by the worker, after the app loaded)."""
        self.limiter = limiter
        if self.metrics is not None:
            self.metrics.start()

    def _limiter(self) -> Limiter:
        # Outside a gunitune worker (flask run, a stock worker) the extension
        # builds its own, on first use: with preload_app that is after fork.
        if self.limiter is None:
            with _OWN_LIMITER_LOCK:  # threads: one limiter, or tickets cross two
                if self.limiter is None:
                    self.limiter = Limiter(self.resolve_own())
        return self.limiter

    def before_request(self) -> None:
        """Pick the request's lane and wait for it, or raise :class:`Overloaded`."""
        req = request._get_current_object()  # type: ignore[attr-defined]
        rule = req.url_rule
        try:
            known = self._routes[id(rule)]
        except KeyError:
            known = self._learn_rule(rule)
        if known.mode == EXEMPT:
            current.set(known)  # for the metrics' route label; checkouts ignore it
            return
        profile = known.profile
        now = self.clock()
        measured = self.profiles.should_measure(profile, now)
        if not (measured or known.mode) and profile.lane == EXEMPT:
            # The hot path of a route that needs nothing: no slot, no measurement.
            # The checkout listener still sees it, should it touch the database.
            current.set(known)
            return
        db_lane, cpu = decide_lanes(known.mode, self.profiles.lanes_for(profile))
        if (
            db_lane != EXEMPT
            and known.mode is None
            and self.circuits.any_open
            and (profile.no_db_streak or not profile.samples)
        ):
            # The database is away and this route is not known to need it (a
            # health check still warming up): no slot to wait for.
            db_lane = EXEMPT
        state = InFlight(known.route, profile, known.mode, db_lane, cpu, measured)
        current.set(state)
        environ = req.environ
        if cpu or db_lane != EXEMPT:
            self._watcher.start(self.pressure_interval, self.telemetry, lambda: self.limiter)
            if known.mode is None and self.profiles.take_scout(profile, now):
                state.db_lane, state.measured, state.scout = FAST, True, True
            try:
                state.ticket = self._acquire(state, known.mode, environ)
            except BaseException:
                if state.scout:
                    self.profiles.scout_done(profile)
                raise
        if state.measured:
            self.meter.start(known.route)
        if state.ticket is not None or state.measured:
            environ[_ENVIRON_KEY] = state

    def _learn_rule(self, rule: Any) -> RouteInfo:
        """Cache what a URL rule needs per request: its decorator mode, route name, profile."""
        if rule is None:
            name, mode = "<unmatched>", None
        else:
            view = self.app.view_functions.get(rule.endpoint)
            mode = self.mode_of(view)
            name = rule.rule
            # Two views on one pattern (GET and POST /x) are two routes.
            rules = self.app.url_map.iter_rules()
            if any(r.rule == name and r.endpoint != rule.endpoint for r in rules):
                name = f"{rule.rule} [{rule.endpoint}]"
        # Exempt views are never measured: no profile in the stats for them.
        profile = RouteProfile() if mode == EXEMPT else self.profiles.get(name)
        internal = rule is not None and rule.endpoint in INTERNAL_ENDPOINTS
        known = RouteInfo(name, mode, profile, internal)
        self._routes[id(rule)] = known
        return known

    def _acquire(
        self, state: InFlight, mode: str | None, environ: WSGIEnvironment
    ) -> Ticket | None:
        limiter = self._limiter()
        sock = environ.get("gunicorn.socket")
        gone = (lambda: client_gone(sock)) if sock is not None else None
        while True:
            try:
                return limiter.acquire(
                    state.db_lane, cpu=state.cpu, route=state.route, client_gone=gone
                )
            except Moved:
                # Its route was classified while it waited: queue in the new lane.
                learned = self.profiles.lanes_for(state.profile)
                state.db_lane, state.cpu = decide_lanes(mode, learned)
                if not state.cpu and state.db_lane == EXEMPT:
                    return None
            except Rejected as exc:
                state.refused, state.shed_code = SHED, exc.code
                self.telemetry.record_shed()
                self.telemetry.observe(limiter.waiting())
                retry_after = self._retry_after(state.profile, limiter)
                # Runs for this response only, after the app's own 503 handler
                # (if any) rendered it: the client still learns when to come back.
                if exc.outage:
                    retry_after = self.circuits.retry_after()
                after_this_request(partial(keep_retry_after, retry_after))
                shed = DatabaseUnavailable if exc.outage else Overloaded
                raise shed(retry_after, exc.reason, exc.waited) from None
            except ClientGone:
                state.refused = CLIENT_GONE
                from werkzeug.exceptions import ClientDisconnected

                raise ClientDisconnected() from None

    def wsgi_wrapper(self, wsgi_app: WSGIApplication) -> WSGIApplication:
        """Wrap ``app.wsgi_app`` so the slots are released when the response is closed."""

        def release_on_close(
            environ: WSGIEnvironment, start_response: StartResponse
        ) -> Iterable[bytes]:
            metrics = self.metrics
            try:
                if metrics is None:
                    body = wsgi_app(environ, start_response)
                else:
                    body = metrics.serve(wsgi_app, environ, start_response, current)
            except BaseException:
                self.finish(environ)
                raise
            state = environ.get(_ENVIRON_KEY)
            if state is None:
                return body
            if state.built and state.holds.open == 0:
                # Built, and every connection is back: a slow reader of a large
                # response must not hold a database slot while it reads.
                self.finish(environ)
                return body
            return ClosingBody(body, lambda: self.finish(environ))

        return release_on_close

    def finish(self, environ: WSGIEnvironment) -> None:
        """Release the slots, learn from the request, report loop blocks."""
        state: InFlight | None = environ.pop(_ENVIRON_KEY, None)
        if state is None:
            return
        ticket = state.ticket
        if state.scout:
            self.profiles.scout_done(state.profile)
        now = self.clock()
        try:
            account = self.meter.stop() if state.measured else None
            held = state.holds.total(now)
            if ticket is not None and (held > 0 or state.db_failed) and not state.outage:
                # An outage says nothing about how much the database serves well.
                self._limiter().learn(ticket, state.route, held, state.db_failed)
        finally:
            if ticket is not None:
                self._limiter().release(ticket)
        if account is None or state.outage:
            return  # an outage says nothing about the route
        profile = state.profile
        before = decide_lanes(state.mode, self.profiles.lanes_for(profile))
        self.profiles.add(state.route, account.cpu, account.own_wall, state.used_db, now)
        after = decide_lanes(state.mode, self.profiles.lanes_for(profile))
        if after != before and self.limiter is not None:
            # Its queued requests move to the lanes the measurement gives them.
            self.limiter.reroute(state.route, *after)
            log.info(
                "route_lane",
                route=state.route,
                lane=CPU if after[1] else after[0],
                db_lane=after[0],
                was=CPU if before[1] else before[0],
                pid=os.getpid(),
            )
        if account.longest_slice >= self.block_threshold:
            self._report_block(state.route, account.longest_slice)

    def _retry_after(self, profile: RouteProfile, limiter: Limiter) -> int:
        if self.retry_after is not None:
            return self.retry_after
        per_request = profile.wall_seconds or (limiter.queue_timeout or 1.0)
        return retry_after_seconds(limiter.waiting() + 1, limiter.db.limit, per_request)

    def _report_block(self, route: str, seconds: float) -> None:
        count = self._blocks.due(route, self.clock())
        if count is not None:
            log.warning(
                "event_loop_blocked",
                route=route,
                seconds=round(seconds, 3),
                blocks=count,
                threshold=self.block_threshold,
                pid=os.getpid(),
                hint="CPU work in a gevent worker holds every other request of this worker",
            )

    def stats(self) -> dict[str, Any]:
        """All numbers of this worker, for ``GuniTune.stats()`` and the stats endpoint."""
        return {
            "pid": os.getpid(),
            "limiter": self._limiter().stats(),
            "routes": self.profiles.snapshot(),
            "pool": self.telemetry.stats(),
        }
