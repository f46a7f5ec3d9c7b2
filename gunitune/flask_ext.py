"""The Flask extension: ``GuniTune(app, db)`` or ``tune.init_app(app, db)``.

Per worker it caps requests in flight at the pool's capacity, sends CPU-bound
routes through the CPU lane, refuses what cannot be served in time with a 503
and ``Retry-After`` (a Werkzeug ``HTTPException``, so the app's error handlers
apply), learns which routes are CPU-bound, steers the worker's accept window
(under ``gunitune.worker.GuniTuneWorker``) and logs QueuePool pressure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from flask import Flask, current_app, has_app_context
from sqlalchemy.engine import Engine

from gunitune import engines as engine_facts
from gunitune import runtime
from gunitune.admission import Admission
from gunitune.core.errors import ConfigError
from gunitune.core.limits import RouteProfiles
from gunitune.core.pressure import PressureMonitor
from gunitune.core.settings import Settings, reject_unknown
from gunitune.cpu_meter import GreenletCpuMeter
from gunitune.http import Overloaded, stats_view
from gunitune.request_cycle import RequestCycle
from gunitune.telemetry import PoolTelemetry

__all__ = ["EXTENSION_KEY", "GuniTune", "Overloaded"]

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
    """Admission control, CPU lane, shedding and pool telemetry for a Flask app.

    ``db`` is a Flask-SQLAlchemy ``SQLAlchemy`` instance (every bind counts
    toward the capacity); without it, the one registered on the app is used,
    and without any, the capacity is ``GUNITUNE_POOL_SIZE + GUNITUNE_MAX_OVERFLOW``.
    Settings are the ``GUNITUNE_*`` keys of ``app.config``, defaulting to the
    environment and then to the declared defaults (see ``gunitune settings``).
    """

    def __init__(self, app: Flask | None = None, db: Any = None) -> None:
        self.db = db
        self._cycles: dict[int, RequestCycle] = {}
        if app is not None:
            self.init_app(app, db)

    exempt = staticmethod(_mark("exempt"))
    """Decorator: the view bypasses admission and measurement (health checks)."""
    cpu_bound = staticmethod(_mark("cpu"))
    """Decorator: always send the view through the CPU lane."""
    io_bound = staticmethod(_mark("io"))
    """Decorator: never send the view through the CPU lane, whatever it measures."""

    def init_app(self, app: Flask, db: Any = None) -> None:
        """Register on ``app`` (once per app) and install the request hooks."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"GuniTune is already registered on the app {app.name!r}: create one "
                "GuniTune per app and call init_app once (or pass the app to the "
                "constructor, not both)."
            )
        settings = self._settings_for(app)
        db = db if db is not None else (self.db or app.extensions.get("sqlalchemy"))
        engines, primary = self._engines_of(app, db)
        capacity = engine_facts.admission_capacity(engines, primary)
        if capacity is None:
            overflow = max(settings.max_overflow, 0)
            capacity = max(1, settings.pool_size + overflow)
        timeouts = [t for t in (engine_facts.pool_timeout(e) for e in engines) if t is not None]
        pool_timeout = min(timeouts) if timeouts else settings.pool_timeout
        queue_timeout = settings.queue_timeout or pool_timeout / 2
        if queue_timeout >= pool_timeout:
            log.warning(
                "queue_timeout_not_below_pool_timeout",
                queue_timeout=queue_timeout,
                pool_timeout=pool_timeout,
                fix="set GUNITUNE_QUEUE_TIMEOUT below the pool's timeout, or leave it on auto",
            )
        worker = runtime.current()
        if worker is not None:
            worker.adopt(settings)
            if worker.follow(capacity, f"GuniTune on app {app.name!r}"):
                engine_facts.log_follow(os.getpid(), worker.planned_capacity, capacity, engines)
        admission = Admission(
            capacity,
            cpu_concurrency=settings.cpu_concurrency,
            queue_timeout=queue_timeout,
            lane_timeout=max(queue_timeout, float(settings.timeout)),
            heartbeat=_worker_heartbeat,
        )
        cycle = RequestCycle(
            app=app,
            settings=settings,
            admission=admission,
            profiles=RouteProfiles(threshold=min(settings.cpu_bound_ratio, 1.0)),
            meter=_process_meter(),
            telemetry=PoolTelemetry(engines, PressureMonitor()),
            mode_of=lambda view: getattr(view, _MODE_ATTRIBUTE, None),
        )
        app.extensions[EXTENSION_KEY] = self
        self._cycles[id(app)] = cycle
        app.before_request(cycle.before_request)
        app.wsgi_app = cycle.wsgi_wrapper(app.wsgi_app)  # type: ignore[method-assign,assignment]
        app.after_request(cycle.after_request)
        if settings.stats_path:
            view = stats_view(self.stats, app, settings.stats_token)
            app.add_url_rule(settings.stats_path, "gunitune_stats", self.exempt(view))
        log.info(
            "gunitune_extension_ready",
            app=app.name,
            pid=os.getpid(),
            capacity=capacity,
            queue_timeout=queue_timeout,
            cpu_concurrency=settings.cpu_concurrency,
            engines=[engine_facts.describe(e) for e in engines],
            accept_gate=_gate_state(worker, settings),
        )

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """This worker's numbers: admission, CPU lane, accept window, routes, pool pressure."""
        cycle = self._cycle(app)
        return cycle.stats()

    def _cycle(self, app: Flask | None) -> RequestCycle:
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is None:
            if len(self._cycles) == 1:
                return next(iter(self._cycles.values()))
            raise RuntimeError("GuniTune.stats() needs the app: pass it, or call it in a request")
        try:
            return self._cycles[id(app)]
        except KeyError:
            raise RuntimeError(
                f"GuniTune is not registered on the app {app.name!r}: call init_app(app) first"
            ) from None

    @staticmethod
    def _settings_for(app: Flask) -> Settings:
        # Flask-SQLAlchemy style: app.config wins, the environment is the default.
        for key in Settings.keys():  # noqa: SIM118  # a classmethod, not a dict
            if key in os.environ:
                app.config.setdefault(key, os.environ[key])
        try:
            reject_unknown(os.environ)
            return Settings.from_sources(app.config)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in app.config or the environment)") from None

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


def _gate_state(worker: runtime.WorkerRuntime | None, settings: Settings) -> str:
    if worker is None:
        return "none here (not a gunitune worker, or set up in the master before fork)"
    return "adaptive" if settings.adaptive else "off"


def _worker_heartbeat() -> None:
    # Looked up per call: with preload_app the app (and this extension) is set
    # up in the master, before any worker exists.
    worker = runtime.current()
    if worker is not None:
        worker.heartbeat()


_meter: GreenletCpuMeter | None = None


def _process_meter() -> GreenletCpuMeter:
    """One switch tracer per process, shared by every app in it."""
    global _meter
    if _meter is None:
        _meter = GreenletCpuMeter()
        _meter.install()
    return _meter

