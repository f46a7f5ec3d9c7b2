"""Prometheus metrics of one worker, and the scrape of all of them.

prometheus_client is imported on the first request a worker serves, never in
the master: its multiprocess mode is chosen at import, from
``PROMETHEUS_MULTIPROC_DIR``, which ``gunitune.conf`` exports in ``on_starting``
(after a ``--preload`` app was imported). Per request, with metrics on, a
request costs one counter increment, plus a histogram observation when it
queued for a slot; with metrics off, nothing (the request cycle checks one
attribute). Snapshot gauges (slots, limits, pool, CPU) are published by each
worker every ``GUNITUNE_PRESSURE_INTERVAL`` and by the worker answering a scrape
just before it reads the files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import structlog

from gunitune._request_state import InFlight, RouteInfo
from gunitune.core import metrics as facts
from gunitune.core.lanes import CPU, DB_LANES, EXEMPT
from gunitune.multiproc import LOCK_NAME, locked, multiproc_dir

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from gunitune.limiter import Limiter
    from gunitune.telemetry import PoolTelemetry

__all__ = ["Metrics"]

log = structlog.get_logger("gunitune")
_SLOT_LANES = (*DB_LANES, CPU)
_UNKNOWN = "<unknown>"  # a request gunitune's before_request never saw
# Live modes only: mark_process_dead drops a dead worker's files of these.
_Mode = Literal["livesum", "liveall"]


class _Instruments:
    """The metric objects of this process (one set, shared by every app in it)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        path = multiproc_dir()
        if path is not None and values.ValueClass is values.MutexValue:
            # prometheus_client was imported before the directory was exported
            # (the app imports it and Gunicorn preloads the app): its mode was
            # chosen then. Ours is chosen again; metrics made earlier stay per process.
            log.warning("metrics_mode_late", pid=os.getpid(), multiproc_dir=path)
            values.ValueClass = values.get_value_class()
        if path is None:
            log.warning(
                "metrics_single_process",
                pid=os.getpid(),
                hint="no PROMETHEUS_MULTIPROC_DIR: a scrape shows the worker that answers it "
                "only; set GUNITUNE_METRICS_PATH in the environment of gunitune.conf",
            )
        else:
            # Tells the master that every reader here takes the lock (see gunitune.multiproc).
            open(os.path.join(path, LOCK_NAME), "a").close()
        self.path = path
        # Not the default registry: two apps in one process (or tests) would
        # register twice. In multiprocess mode the files are what is read.
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "gunitune_requests", "Requests answered, by route, lane and outcome.",
            ["route", "lane", "outcome"], registry=reg,
        )
        self.shed = Counter(
            "gunitune_shed", "Requests refused with a 503 by gunitune.", ["lane", "reason"],
            registry=reg,
        )
        self.queue_wait = Histogram(
            "gunitune_queue_wait_seconds", "Time admitted requests waited for their slots.",
            ["lane"], buckets=facts.QUEUE_WAIT_BUCKETS, registry=reg,
        )

        def gauge(
            name: str, doc: str, labels: Iterable[str] = (), mode: _Mode = "livesum"
        ) -> Any:
            return Gauge(name, doc, list(labels), multiprocess_mode=mode, registry=reg)

        self.in_flight = gauge("gunitune_in_flight", "Slots in use, by lane.", ["lane"])
        self.queued = gauge("gunitune_queued", "Requests waiting for a slot, by lane.", ["lane"])
        self.limit = gauge("gunitune_limit", "Slots a lane may use at once.", ["lane"])
        self.checked_out = gauge("gunitune_pool_checked_out", "Pool connections checked out.")
        self.overflow = gauge("gunitune_pool_overflow", "Pool overflow connections in use.")
        self.waiters = gauge("gunitune_pool_waiters", "Requests queued for a database slot.")
        self.cpu_ratio = gauge(
            "gunitune_worker_cpu_ratio", "CPU seconds per second of each worker process.",
            mode="liveall",
        )
        # Every series a counter may get exists from the start, at 0: a series born
        # with its first value (a burst of sheds between two scrapes) has no rate().
        for lane in _SLOT_LANES:
            for reason in facts.SHED_REASONS:
                self.shed.labels(lane, reason)
        # Children by label values: .labels() costs a lock and a dict build per call.
        self.request_children: dict[tuple[str, str, str], Any] = {}
        self.wait_children = {lane: self.queue_wait.labels(lane) for lane in _SLOT_LANES}


_instruments: _Instruments | None = None
_instruments_pid = 0


def _process_instruments() -> _Instruments:
    global _instruments, _instruments_pid
    if _instruments is None or _instruments_pid != os.getpid():
        _instruments, _instruments_pid = _Instruments(), os.getpid()
    return _instruments


class Metrics:
    """One app's metrics in one worker: per-request counts, periodic gauges, the scrape."""

    def __init__(
        self,
        limiter: Callable[[], Limiter | None],
        telemetry: PoolTelemetry,
        interval: float,
        clocks: tuple[Callable[[], float], Callable[[], float]] = (
            time.process_time,
            time.monotonic,
        ),
    ) -> None:
        self._limiter = limiter
        self._telemetry = telemetry
        self._interval = interval
        self._cpu_clock, self._wall_clock = clocks
        self._last_cpu = (self._cpu_clock(), self._wall_clock())
        self._ticker: Any = None  # None: not started; False: not under gevent

    def serve(
        self,
        wsgi_app: WSGIApplication,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        current: ContextVar[Any],
    ) -> Iterable[bytes]:
        """Call ``wsgi_app`` and count the request by what ``current`` says of it."""
        if self._ticker is None:
            self.start()
        current.set(None)  # a keep-alive connection's previous request is not this one
        status = 0

        def capture(line: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal status
            status = int(line[:3])
            return start_response(line, headers, exc_info)

        try:
            body = wsgi_app(environ, capture)
        except BaseException:
            self.record(current.get(), 500)
            raise
        self.record(current.get(), status)
        return body

    def record(self, state: InFlight | RouteInfo | None, status: int) -> None:
        """Count one answered request: a counter, and its wait if it queued."""
        m = _process_instruments()
        outcome = facts.outcome(status)
        if isinstance(state, InFlight):
            lane = CPU if state.cpu else state.db_lane
            if state.refused:
                outcome = state.refused
                if state.shed_code:
                    m.shed.labels(lane, state.shed_code).inc()
            elif state.ticket is not None:
                m.wait_children[lane].observe(state.ticket.waited)
            route = state.route
        elif isinstance(state, RouteInfo):
            if state.internal:
                return  # scrapes and stats are not the app's traffic
            route, lane = state.route, EXEMPT
        else:
            route, lane = _UNKNOWN, EXEMPT
        key = (route, lane, outcome)
        child = m.request_children.get(key)
        if child is None:
            # First of its route in this lane: all its outcomes start at 0 (see above).
            for each in facts.OUTCOMES:
                if (route, lane, each) not in m.request_children:
                    m.request_children[(route, lane, each)] = m.requests.labels(route, lane, each)
            child = m.request_children[key]
        child.inc()

    def publish(self) -> None:
        """Set this worker's snapshot gauges: slots, limits, queues, pool, CPU ratio."""
        m = _process_instruments()
        limiter = self._limiter()
        waiting = 0
        if limiter is not None:
            lanes = limiter.stats()["lanes"]
            for lane in _SLOT_LANES:
                figures = lanes[lane]
                m.in_flight.labels(lane).set(figures["in_use"])
                m.queued.labels(lane).set(figures["waiting"])
                m.limit.labels(lane).set(figures["limit"])
            waiting = limiter.waiting()
        pool = self._telemetry.snapshot(waiting)
        m.checked_out.set(pool.checked_out)
        m.overflow.set(pool.overflow_in_use)
        m.waiters.set(pool.waiters)
        cpu, wall = self._cpu_clock(), self._wall_clock()
        m.cpu_ratio.set(facts.cpu_ratio(*self._last_cpu, cpu, wall))
        self._last_cpu = (cpu, wall)

    def render(self) -> tuple[bytes, str]:
        """The exposition of every worker of this master (of this process without a
        multiprocess directory), and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        m = _process_instruments()
        self.publish()
        if m.path is None:
            return generate_latest(m.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            import gevent

            # Measured (benchmarks/metrics_scrape.py, loaded 2-CPU VM): 8 workers'
            # files take 3.5-7.5 ms to read, more as routes and dead workers add
            # files; run inline that pauses every request of this worker for
            # 4-10 ms, in a thread 1-4 ms (the GIL switches every 5 ms).
            body: bytes = gevent.get_hub().threadpool.apply(_collect, (m.path,))
        else:
            body = _collect(m.path)
        return body, CONTENT_TYPE_LATEST

    def start(self) -> None:
        """Publish this worker's gauges every interval from now on (gevent only)."""
        if self._ticker is not None:
            return
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            self._ticker = False  # threads or a test client: gauges are set at scrape
            return
        import gevent

        def tick() -> None:
            while True:
                gevent.sleep(self._interval)
                try:
                    self.publish()
                except Exception:  # a metric must never stop the worker's ticker
                    log.exception("metrics_publish_failed", pid=os.getpid())

        self._ticker = gevent.spawn(tick)


def _collect(path: str) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    with locked(path, exclusive=False):
        return generate_latest(registry)
