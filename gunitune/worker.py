"""A Gunicorn gevent worker that holds a storm in user space and schedules it by lane.

Gunicorn's gevent worker wraps each listener in ``gevent.pool.Pool(worker_connections)``
and stops accepting while the pool is full; what it does not accept waits in the
kernel's listen queue, which is FIFO, blind to routes and capped by
``net.core.somaxconn`` (a burst above it costs SYN retries and resets). This
worker accepts far beyond what it can run (``GUNITUNE_MAX_HELD`` connections,
bounded by memory), reads and routes each request, and lets its
:class:`~gunitune.limiter.Limiter` queue it by lane: a health check is answered
at once, a fast query waits for one slot, never behind the slow ones.

Holding requests makes who accepts decide who serves, so the workers balance:
each publishes how many requests it holds on a :class:`~gunitune._board.LoadBoard`
and accepts while no other worker holds clearly less (:mod:`gunitune.core.balance`).

It also:

* touches the heartbeat when requests finish (rate-limited): the heartbeat runs
  on the same event loop as the requests, and CPU-bound work starves it;
* makes psycopg2 green before the app is loaded, and disposes engines inherited
  from a preloading master without closing the master's connections;
* on SIGTERM, SIGHUP reload and ``max_requests`` recycling, stops accepting and
  serves what it holds within ``graceful_timeout``; queued requests it cannot
  start in time get a 503 + ``Retry-After`` instead of a reset.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import gevent
import structlog
from gevent import getcurrent
from gunicorn.workers import base, ggevent

from gunitune import configure, green, pool_share
from gunitune import engines as engine_facts
from gunitune._board import LoadBoard, Seat
from gunitune._gate import EagerServer, GatedPool, HeldGate
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.limits import RouteProfiles
from gunitune.core.resolve import GunicornFacts, resolve
from gunitune.limiter import Limiter
from gunitune.postgres import safe_error_text

__all__ = ["GuniTuneWorker"]

log = structlog.get_logger("gunitune")

# Exit code that makes the arbiter stop instead of respawning forever.
_WORKER_BOOT_ERROR = 3
# Time kept, at the end of graceful_timeout, for the requests already started
# when the worker refuses what is still queued: three times the slowest route's
# usual time (a reload doubles the database's load while old and new workers
# overlap), at least 2 s, at most half of graceful_timeout. Shorter than needed
# and a started request is killed (a reset); longer and queued ones get 503s
# they could have been served.
_DRAIN_RESERVE_ROUTES = 3.0
_DRAIN_RESERVE_MIN = 2.0
_DRAIN_RESERVE_MAX_SHARE = 0.5


class GuniTuneWorker(ggevent.GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """Gunicorn's gevent worker with held requests, lanes, balance and a progress heartbeat."""

    _board: ClassVar[LoadBoard | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.limiter: Limiter | None = None
        self.gate: HeldGate | None = None
        self.seat: Seat | None = None
        self._first_read: set[Any] = set()  # connection greenlets before their first request
        self._alive = True
        self._profiles: RouteProfiles | None = None  # the app's routes, for the drain
        super().__init__(*args, **kwargs)
        # The arbiter builds its workers in the master, before fork: the board
        # made here is shared by every worker this master forks, reloads included.
        if GuniTuneWorker._board is None:
            GuniTuneWorker._board = LoadBoard()
        self.board = GuniTuneWorker._board

    @property
    def alive(self) -> bool:
        """Gunicorn's run flag; clearing it (SIGTERM, reload, max_requests) starts the drain."""
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        was, self._alive = self._alive, value
        if was and not value:
            # At once (a few memory writes, safe in a signal handler): leave the
            # board and accept nothing more.
            if self.seat is not None:
                self.seat.set_open(False)
            if self.gate is not None:
                self.gate.draining = True
                # The rest logs and schedules: from the loop, not the handler.
                gevent.get_hub().loop.run_callback(self._begin_drain)

    def init_process(self) -> None:
        """Take a seat (booting), make the driver green and drop inherited pools,
        then hand over to Gunicorn (which loads the app and runs)."""
        # Before the app's import: the workers already up leave this one its
        # share of a storm that arrives while it boots.
        self.seat = self.board.take_seat(self.pid)
        try:
            self._init_process()
        finally:
            self.seat.leave()

    def _init_process(self) -> None:
        green.make_psycopg2_green()
        configure.use_installed_driver()  # done in the master when gunitune.conf is used
        if self.cfg.preload_app:
            disposed = engine_facts.dispose_after_fork(engine_facts.find_engines())
            if disposed:
                log.info("engines_disposed_after_fork", pid=self.pid, engines=disposed)
        super().init_process()

    def patch(self) -> None:
        """gevent's monkey-patching, then psycopg 3 re-chooses its waits if it came too early."""
        super().patch()
        if green.repair_psycopg_after_patch():
            log.info(
                "psycopg_wait_repaired",
                pid=self.pid,
                why="psycopg was imported before gevent patched this worker (preload_app?)",
            )

    def load_wsgi(self) -> None:
        """Load the app, then resolve the settings once and build this worker's limiter."""
        try:
            # GuniTune(app) validates app.config while the app is imported.
            super().load_wsgi()
            self._set_up()
        except GunituneError as exc:
            # One clear line, then an exit code that stops the arbiter: every
            # worker would fail the same way.
            print(f"gunitune: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(_WORKER_BOOT_ERROR)

    def _set_up(self) -> None:
        from gunitune.flask_ext import find_cycle  # Flask loads only once the app has
        from gunitune.http import check_stats_path

        cycle = find_cycle(self.wsgi)
        if cycle is not None:
            # Every route is registered by now: refuse before serving, not at a request.
            check_stats_path(cycle.app)
        engines = cycle.engines if cycle is not None else engine_facts.find_engines()
        primary = cycle.primary if cycle is not None else None
        app_config = cycle.app.config if cycle is not None else {}
        self._share_pools(engines, app_config)
        facts = GunicornFacts(
            timeout=float(self.cfg.timeout),
            graceful_timeout=float(self.cfg.graceful_timeout),
            worker_connections=int(self.cfg.worker_connections),
        )
        try:
            resolved = resolve(
                os.environ,
                app_config,
                facts,
                engine_facts.pool_facts(engines, primary),
            )
        except ConfigError as exc:
            raise GunituneError(str(exc)) from None
        self.limiter = Limiter(resolved, heartbeat=self.heartbeat)
        if cycle is not None:
            cycle.attach(self.limiter)
            self._profiles = cycle.profiles
        log.info(
            "worker_ready",
            pid=self.pid,
            db_slots=resolved.db_capacity,
            db_slots_from=resolved.capacity_source,
            max_held=resolved.max_held,
            fast_share=resolved.settings.fast_share,
            cpu_concurrency=resolved.settings.cpu_concurrency,
            extension="on" if cycle is not None else "off (no GuniTune on the app)",
        )
        self._check_drivers(engines, resolved.settings.green_check)

    def _share_pools(self, engines: list[Any], app_config: Any) -> None:
        """``GUNITUNE_POOL=auto``: default pools take the master's share before the
        limiter reads their capacity (so the lanes follow)."""
        try:
            pool_share.apply_in_worker(engines, app_config, os.environ, pid=self.pid)
        except ConfigError as exc:
            raise GunituneError(str(exc)) from None

    def _check_drivers(self, engines: list[Any], mode: str) -> None:
        if mode == "off":
            return
        for engine in engines:
            if engine.dialect.name != "postgresql":
                continue
            # The driver SQLAlchemy really loaded (a plain URL's default, or ours).
            named = engine.url.set(drivername=f"postgresql+{engine.dialect.driver}")
            url = named.render_as_string(hide_password=False)
            try:
                check = green.check_driver_yields(url)
                if not check.yields:
                    # Once more, longer: a busy machine or a slow network can stretch
                    # two overlapping 0.2 s sleeps past the bound; a blocking driver
                    # still takes twice as long.
                    check = green.check_driver_yields(url, seconds=0.5)
            except Exception as exc:
                # An unreachable or restarting database (any driver error), or an
                # unknown driver, says nothing about yielding; refusing to boot
                # here would turn a database blip during a worker restart into a
                # halted server.
                reason = str(exc) if isinstance(exc, GunituneError) else safe_error_text(exc, url)
                log.warning("driver_check_skipped", pid=self.pid, reason=reason)
                continue
            if check.yields:
                continue
            if mode == "error":
                raise GunituneError(check.message)
            log.warning("driver_not_green", pid=self.pid, message=check.message)

    def run(self) -> None:
        """Take a seat on the board, then run Gunicorn's loop with the gated pool."""
        assert self.limiter is not None, "load_wsgi() builds the limiter before run()"
        if self.seat is None:  # run() without init_process(): tests
            self.seat = self.board.take_seat(self.pid)
        self.gate = HeldGate(self.limiter.resolved.max_held, self.seat, self.sockets)
        self.limiter.gate_stats = self.gate.stats
        # Gunicorn builds one Pool(worker_connections) and one StreamServer per
        # listener inside run(); this process is a forked child, so rebinding
        # the module names is local to it.
        ggevent.Pool = self._make_pool
        ggevent.StreamServer = EagerServer
        self.seat.set_open(True)
        try:
            super().run()
        finally:
            self.seat.leave()

    def _make_pool(self, size: int) -> GatedPool:
        assert self.gate is not None
        return GatedPool(self.gate)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection; it stops counting as idle keep-alive when it ends."""
        first_read = self._first_read
        first_read.add(getcurrent())
        try:
            super().handle(listener, client, addr)
        finally:
            first_read.discard(getcurrent())
            if self.gate is not None:
                self.gate.closed(client)

    def timeout_ctx(self) -> Any:
        """How long to wait for a request: the keep-alive time between two requests,
        the worker timeout for a connection's first one.

        Gunicorn waits ``keepalive`` (2 s) for every request, the first one
        included. A worker that holds a storm accepts connections as fast as
        they come, sooner than a busy client sends on each of them; closing
        those after 2 s would turn a held storm into resets.
        """
        if self._alive and getcurrent() in self._first_read:
            # Gunicorn's timeout 0 means none; a draining worker waits no longer
            # than keep-alive for requests that never came.
            return gevent.Timeout(self.cfg.timeout or None, False)
        return gevent.Timeout(self.cfg.keepalive, False)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        """Serve one request; between requests a keep-alive connection holds nothing."""
        self._first_read.discard(getcurrent())
        gate = self.gate
        if gate is not None:
            gate.busy(sock)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if gate is not None:
                gate.idle(sock)
            if self.limiter is not None:
                self.limiter.progress()

    def notify(self) -> None:
        """The run loop's heartbeat, once a second: also keep this worker's seat fresh."""
        super().notify()
        if self.seat is not None:
            self.seat.stamp()
        if self.gate is not None:
            self.gate.publish()

    def heartbeat(self) -> None:
        """Tell the arbiter this worker is alive (a file touch; safe from any greenlet).

        ``GeventWorker.notify`` also exits when the parent changed, which must
        not happen inside a request greenlet; the run loop still does that check.
        """
        base.Worker.notify(self)

    def _begin_drain(self) -> None:
        """Refuse, later, what cannot start before the deadline."""
        limiter = self.limiter
        if limiter is None or self.gate is None:
            return  # still booting: nothing held
        graceful = float(self.cfg.graceful_timeout)
        longest = self._profiles.longest_wall() if self._profiles is not None else graceful
        reserve = min(
            graceful * _DRAIN_RESERVE_MAX_SHARE,
            max(_DRAIN_RESERVE_MIN, _DRAIN_RESERVE_ROUTES * longest),
        )
        refuse_in = max(0.0, graceful - reserve)
        log.info(
            "worker_draining",
            pid=self.pid,
            held=self.gate.held(),
            queued=limiter.waiting(),
            refuse_queued_in=refuse_in,
        )
        gevent.spawn_later(refuse_in, limiter.refuse_waiting)
