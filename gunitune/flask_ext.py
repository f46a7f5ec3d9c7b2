"""The Flask extension: ``GuniTune(app, db)`` or ``tune.init_app(app, db)``.

Per worker it queues each request in its route's lane (no slot for routes
without a database, fast database work ahead of slow, CPU-bound work through
the CPU lane), caps database work at the pool's capacity so nothing waits inside
SQLAlchemy's QueuePool, refuses what cannot be served with a 503 and
``Retry-After`` (a Werkzeug ``HTTPException``, so the app's error handlers
apply), learns each route's lane and logs QueuePool pressure.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import structlog
from flask import Flask, current_app, has_app_context
from sqlalchemy.engine import Engine

from gunitune import engines as engine_facts
from gunitune._metrics import Metrics
from gunitune.core.lanes import CPU, EXEMPT, FAST, SLOW
from gunitune.core.limits import RouteProfiles
from gunitune.core.pressure import PressureMonitor
from gunitune.core.resolve import Resolved, resolve, settings_from
from gunitune.cpu_meter import GreenletCpuMeter
from gunitune.http import METRICS_ENDPOINT, Overloaded, metrics_view, register_stats, stats_view
from gunitune.request_cycle import RequestCycle
from gunitune.telemetry import PoolTelemetry

__all__ = ["EXTENSION_KEY", "GuniTune", "Overloaded", "find_cycle"]

EXTENSION_KEY = "gunitune"
F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("gunitune")
_MODE_ATTRIBUTE = "__gunitune_mode__"


def _mark(mode: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        setattr(view, _MODE_ATTRIBUTE, mode)
        return view

    return decorate


class GuniTune:
    """Lanes, shedding and pool telemetry for a Flask app.

    ``db`` is a Flask-SQLAlchemy ``SQLAlchemy`` instance; without it, the one
    registered on the app is used. ``engines`` names plain SQLAlchemy engines
    (an app without Flask-SQLAlchemy, or engines built lazily). Without any,
    the database capacity is ``GUNITUNE_POOL_SIZE + GUNITUNE_MAX_OVERFLOW``.
    Settings are the ``GUNITUNE_*`` keys of ``app.config``, defaulting to the
    environment and then to the declared defaults (see ``gunitune settings``).
    """

    def __init__(
        self, app: Flask | None = None, db: Any = None, *, engines: Iterable[Engine] = ()
    ) -> None:
        self.db = db
        self.engines = list(engines)
        self._cycles: weakref.WeakKeyDictionary[Flask, RequestCycle] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app, db)

    exempt = staticmethod(_mark(EXEMPT))
    """Decorator: no queue, no slot, no measurement (health checks)."""
    fast = staticmethod(_mark(FAST))
    """Decorator: always the fast database lane."""
    slow = staticmethod(_mark(SLOW))
    """Decorator: always the slow database lane."""
    cpu_bound = staticmethod(_mark(CPU))
    """Decorator: always through the CPU lane."""
    io_bound = staticmethod(_mark("io"))
    """Decorator: never through the CPU lane, whatever it measures."""

    def init_app(self, app: Flask, db: Any = None, *, engines: Iterable[Engine] = ()) -> None:
        """Register on ``app`` (once per app) and install the request hooks."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"GuniTune is already registered on the app {app.name!r}: create one "
                "GuniTune per app and call init_app once (or pass the app to the "
                "constructor, not both)."
            )
        # Validate now: a bad setting stops the app at start, not at first request.
        settings = settings_from(os.environ, app.config)
        db = db if db is not None else (self.db or app.extensions.get("sqlalchemy"))
        found, primary = self._engines_of(app, db)
        explicit = [*self.engines, *engines]
        if not found and not explicit:
            # Not an error (an app may use no database), but the lanes then
            # guess the pool, and outages and hold times go unseen.
            log.info(
                "no_engines_named",
                app=app.name,
                hint="pass GuniTune(app, db) or GuniTune(app, engines=[engine]); database "
                "slots come from GUNITUNE_POOL_SIZE + GUNITUNE_MAX_OVERFLOW meanwhile",
            )
        all_engines = [*found, *(e for e in explicit if e not in found)]
        if primary is None and len(all_engines) == 1:
            primary = all_engines[0]

        def resolve_own() -> Resolved:
            return resolve(
                os.environ, app.config, None, engine_facts.pool_facts(all_engines, primary)
            )

        cycle = RequestCycle(
            app=app,
            resolve_own=resolve_own,
            profiles=RouteProfiles(
                threshold=settings.cpu_bound_ratio, fast_seconds=settings.fast_seconds
            ),
            meter=_process_meter(),
            telemetry=PoolTelemetry(all_engines, PressureMonitor()),
            engines=all_engines,
            primary=primary,
            mode_of=lambda view: getattr(view, _MODE_ATTRIBUTE, None),
            block_threshold=settings.block_threshold,
            pressure_interval=settings.pressure_interval,
            retry_after=settings.retry_after,
            outage_wait=settings.outage_wait,
        )
        app.extensions[EXTENSION_KEY] = self
        self._cycles[app] = cycle
        # First among the app's hooks: a request waits for its lane before the
        # app's own before_request functions may touch the database.
        app.before_request_funcs.setdefault(None, []).insert(0, cycle.before_request)
        # Flask runs after_request functions last-registered first: at index 0, after all.
        app.after_request_funcs.setdefault(None, []).insert(0, cycle.watch.after_request)
        app.wsgi_app = cycle.wsgi_wrapper(app.wsgi_app)  # type: ignore[method-assign,assignment]
        if settings.stats_path:
            loopback = settings.stats_loopback == "on"
            view = stats_view(self.stats, app, settings.stats_token, loopback)
            register_stats(app, settings.stats_path, self.exempt(view))
        if settings.metrics_path:
            cycle.metrics = Metrics(
                lambda: cycle.limiter, cycle.telemetry, settings.pressure_interval
            )
            loopback = settings.stats_loopback == "on"
            scrape = metrics_view(cycle.metrics.render, settings.stats_token, loopback)
            app.add_url_rule(settings.metrics_path, METRICS_ENDPOINT, self.exempt(scrape))
        log.info(
            "gunitune_extension_ready",
            app=app.name,
            pid=os.getpid(),
            engines=[engine_facts.describe(e) for e in all_engines],
        )

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """This worker's numbers: lanes, gate, routes, pool pressure."""
        return self.cycle(app).stats()

    def cycle(self, app: Flask | None = None) -> RequestCycle:
        """The extension's state for ``app`` (default: the current app, or the only one)."""
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is None:
            if len(self._cycles) == 1:
                return next(iter(self._cycles.values()))
            raise RuntimeError("GuniTune.stats() needs the app: pass it, or call it in a request")
        try:
            return self._cycles[app]
        except KeyError:
            raise RuntimeError(
                f"GuniTune is not registered on the app {app.name!r}: call init_app(app) first"
            ) from None

    @staticmethod
    def _engines_of(app: Flask, db: Any) -> tuple[list[Engine], Engine | None]:
        """Every engine of ``db`` and its default one (Flask-SQLAlchemy's bind ``None``)."""
        if db is None:
            return [], None
        with app.app_context():
            engines = getattr(db, "engines", None)
            if isinstance(engines, dict):
                primary = engines.get(None)
                return list(engines.values()), primary if isinstance(primary, Engine) else None
            engine = getattr(db, "engine", None)
            return ([engine], engine) if isinstance(engine, Engine) else ([], None)


def find_cycle(wsgi: Any) -> RequestCycle | None:
    """The extension's state of the Flask app a worker serves, through WSGI middleware."""
    seen = 0
    while wsgi is not None and seen < 8:
        if isinstance(wsgi, Flask):
            extension = wsgi.extensions.get(EXTENSION_KEY)
            return extension.cycle(wsgi) if isinstance(extension, GuniTune) else None
        # Middleware (ProxyFix, DispatcherMiddleware's default app) keeps the app in `.app`.
        wsgi = getattr(wsgi, "app", None)
        seen += 1
    return None


_meter: GreenletCpuMeter | None = None


def _process_meter() -> GreenletCpuMeter:
    """One switch tracer per process, shared by every app in it."""
    global _meter
    if _meter is None:
        _meter = GreenletCpuMeter()
    return _meter
