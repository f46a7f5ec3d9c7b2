"""A Gunicorn gevent worker whose accept loop gunitune steers.

Gunicorn's gevent worker wraps each listener in ``gevent.pool.Pool(worker_connections)``
and stops accepting while the pool is full, so further connections wait in the
kernel backlog where any idle worker can take them. That gate is the only place
where a limit can move work to another worker: a limit applied after accept
cannot. This worker keeps Gunicorn's gevent worker as it is and makes the gate
adaptive (:class:`gunitune.core.limits.AcceptWindow`): as wide as the SQLAlchemy
pool for IO-bound work, as narrow as the CPU lane for CPU-bound work.

It also fixes what the stock worker leaves to chance:

* the heartbeat (a file touch the arbiter watches) runs on the same event loop
  as the requests, so CPU-bound requests starve it and the arbiter kills a
  worker that is working. Here every finished request proves progress and
  touches the file; a request stuck longer than ``timeout`` still gets killed.
* psycopg2 is made green (a gevent wait callback) before the app is loaded.
* engines inherited from a preloading master are disposed without closing the
  master's connections.

Select it with ``worker_class = "gunitune.worker.GuniTuneWorker"``, which
``gunitune.conf`` does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import structlog
from gevent.hub import get_hub
from gevent.lock import Semaphore
from gevent.pool import Pool
from gunicorn.workers import base, ggevent
from sqlalchemy.engine import Engine

from gunitune import engines as engine_facts
from gunitune import green, runtime
from gunitune.core.errors import GunituneError
from gunitune.core.limits import AcceptWindow
from gunitune.core.settings import Settings

__all__ = ["AcceptGate", "GatedPool", "GuniTuneWorker"]

log = structlog.get_logger("gunitune")

# Exit code that makes the arbiter stop instead of respawning forever.
_WORKER_BOOT_ERROR = 3


class AcceptGate:
    """The accept window of one worker, shared by the pools of all its listeners.

    Counts the connections the worker holds over every listener, so two binds
    together stay within one window, and re-arms any paused accept loop when
    there is room again: when a connection ends or when the window grows.
    """

    def __init__(self, window: AcceptWindow) -> None:
        self.window = window
        self.pools: list[GatedPool] = []
        window.subscribe(self._window_changed)

    def held(self) -> int:
        """Connections held by the worker, over all listeners."""
        return sum(len(pool) for pool in self.pools)

    def full(self) -> bool:
        """True when the worker holds as many connections as its window allows."""
        return self.held() >= self.window.window

    def notify(self) -> None:
        """Resume every accept loop waiting for room, if there is room."""
        for pool in self.pools:
            pool._semaphore.notify_if_open()

    def _window_changed(self, old: int, new: int) -> None:
        if new > old:
            self.notify()


class _GateSemaphore:
    """The pool's semaphore, as the accept loop sees it.

    When the pool is full, gevent's server stops accepting and ``rawlink``s a
    callback on the pool's semaphore to resume. A plain semaphore calls it as
    soon as it has a permit, which with a window narrower than the pool's size
    is at once: the server would re-arm accept on every loop turn, spinning a
    core while connections wait. Here a link fires once, when the gate has room.
    """

    def __init__(self, size: int, gate: AcceptGate) -> None:
        self._inner = Semaphore(size)
        self._gate = gate
        self._links: list[Callable[[Any], None]] = []

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._inner.acquire(blocking, timeout))

    def release(self) -> None:
        self._inner.release()
        # Room on one listener is room for all of them: the window is shared.
        self._gate.notify()

    def wait(self, timeout: float | None = None) -> int:
        return int(self._inner.wait(timeout))

    def rawlink(self, callback: Callable[[Any], None]) -> None:
        if callback not in self._links:
            self._links.append(callback)
        self.notify_if_open()

    def unlink(self, callback: Callable[[Any], None]) -> None:
        if callback in self._links:
            self._links.remove(callback)

    def notify_if_open(self) -> None:
        """Resume whoever waits for room, if the gate has room."""
        if self._links and not self._gate.full():
            links, self._links = self._links, []
            loop = get_hub().loop
            for callback in links:
                loop.run_callback(callback, self)


class GatedPool(Pool):  # type: ignore[misc]  # gevent is untyped
    """A gevent ``Pool`` that reports itself full when its worker's gate is.

    ``size`` stays the worker's fixed ceiling (Gunicorn's graceful shutdown
    compares ``free_count()`` with it); ``full()``, which the accept loop checks
    before each accept, and the semaphore's links follow the gate.
    """

    def __init__(self, size: int, gate: AcceptGate | AcceptWindow) -> None:
        super().__init__(size)
        self.gate = gate if isinstance(gate, AcceptGate) else AcceptGate(gate)
        self.gate.pools.append(self)
        self._semaphore = _GateSemaphore(size, self.gate)

    @property
    def window(self) -> AcceptWindow:
        """The worker's adaptive window."""
        return self.gate.window

    def full(self) -> bool:
        """True when the worker holds as many connections as its window allows."""
        return len(self) >= self.size or self.gate.full()


class GuniTuneWorker(ggevent.GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """Gunicorn's gevent worker with an adaptive accept gate and a progress heartbeat."""

    def init_process(self) -> None:
        """Set up the gate and the green driver, then hand over to Gunicorn (never returns)."""
        self.settings = Settings.from_sources(os.environ)
        budget = self.settings.cpu_budget or max(0.5, self.cfg.timeout / 10)
        # The pool's fixed size is a ceiling the window never needs to pass: the
        # real engine may be larger than what the config module planned.
        self.gate_size = max(self.worker_connections, 10_000)
        self.window = AcceptWindow(
            capacity=self.worker_connections + self.settings.overcommit,
            floor=self.settings.cpu_concurrency,
            cpu_budget=budget,
        )
        runtime.register(
            runtime.WorkerRuntime(
                window=self.window,
                heartbeat=self.heartbeat,
                planned_capacity=self.worker_connections,
                adaptive=self.settings.adaptive,
                overcommit=self.settings.overcommit,
            )
        )
        green.make_psycopg2_green()
        if self.cfg.preload_app:
            disposed = engine_facts.dispose_after_fork(engine_facts.find_engines())
            if disposed:
                log.info("engines_disposed_after_fork", pid=self.pid, engines=disposed)
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, then size the gate from its real engines and check the driver."""
        super().load_wsgi()
        try:
            self._follow_app_engines()
        except GunituneError as exc:
            # One clear line, then an exit code that stops the arbiter: every
            # worker would fail the same way.
            print(f"gunitune: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(_WORKER_BOOT_ERROR)

    def _follow_app_engines(self) -> None:
        engines = engine_facts.find_engines()
        self._size_gate(engines)
        self._check_drivers(engines)

    def _size_gate(self, engines: list[Engine]) -> None:
        worker = runtime.current()
        capacity = engine_facts.admission_capacity(engines)
        # The extension, when the app has one, already followed its own engines.
        if worker is None or worker.followed is not None or capacity is None:
            return
        if worker.follow(capacity, "engines found after the app loaded"):
            engine_facts.log_follow(self.pid, worker.planned_capacity, capacity, engines)

    def _check_drivers(self, engines: list[Engine]) -> None:
        if self.settings.green_check == "off":
            return
        for engine in engines:
            if engine.dialect.name != "postgresql":
                continue
            url = engine.url.render_as_string(hide_password=False)
            try:
                check = green.check_driver_yields(url)
            except GunituneError as exc:
                # An unreachable database or an unknown driver says nothing about
                # yielding; refusing to boot here would turn a database blip
                # during a worker restart into a halted server.
                log.warning("driver_check_skipped", pid=self.pid, reason=str(exc))
                continue
            if check.yields:
                continue
            if self.settings.green_check == "error":
                raise GunituneError(check.message)
            log.warning("driver_not_green", pid=self.pid, message=check.message)

    def run(self) -> None:
        """Run Gunicorn's gevent worker loop with the gated pool in place of its Pool."""
        # Gunicorn builds one Pool(worker_connections) per listener inside run();
        # this process is a forked child, so rebinding the module name is local to it.
        ggevent.Pool = self._make_pool
        super().run()

    def _make_pool(self, size: int) -> GatedPool:
        gate = getattr(self, "gate", None)
        if gate is None:
            gate = self.gate = AcceptGate(self.window)
        return GatedPool(max(size, self.gate_size), gate)

    def handle_request(self, *args: Any) -> None:
        """Serve one request, then touch the heartbeat: a finished request is progress."""
        try:
            super().handle_request(*args)
        finally:
            self.heartbeat()

    def heartbeat(self) -> None:
        """Tell the arbiter this worker is alive (a file touch; safe from any greenlet).

        ``GeventWorker.notify`` also exits when the parent changed, which must
        not happen inside a request greenlet; the run loop still does that check.
        """
        base.Worker.notify(self)
