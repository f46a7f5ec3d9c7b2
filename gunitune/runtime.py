"""The link between a gunitune worker and the Flask extension running inside it.

The worker (:mod:`gunitune.worker`) owns the accept gate and the heartbeat; the
extension measures requests. They meet here, without importing each other, so
the extension also works under ``flask run`` or a stock worker, where there is
no gate to steer and :func:`current` returns ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gunitune.core.limits import AcceptWindow
from gunitune.core.settings import Settings

__all__ = ["WorkerRuntime", "current", "register", "unregister"]


@dataclass
class WorkerRuntime:
    """What a gunitune worker offers to code running inside it.

    ``window`` is the worker's accept window (connections it holds at once);
    ``heartbeat`` tells the arbiter the worker is alive (a file touch), and is
    safe to call from any greenlet; ``planned_capacity`` is what the config
    module planned (``worker_connections``) before the app was loaded.
    """

    window: AcceptWindow
    heartbeat: Callable[[], None]
    planned_capacity: int
    adaptive: bool = True
    overcommit: int = 0
    followed: str | None = None

    def follow(self, capacity: int, source: str) -> bool:
        """Size the gate from the app's real pool; True when that differs from the plan."""
        self.followed = source
        self.window.resize(capacity + self.overcommit)
        return capacity != self.planned_capacity

    def adopt(self, settings: Settings) -> None:
        """Take the app's settings (``app.config`` may differ from the environment)."""
        self.adaptive = settings.adaptive
        self.overcommit = settings.overcommit
        self.window.configure(floor=settings.cpu_concurrency, cpu_budget=settings.cpu_budget)


_current: WorkerRuntime | None = None


def register(runtime: WorkerRuntime) -> None:
    """Called by the worker process once, before the app is loaded."""
    global _current
    _current = runtime


def unregister() -> None:
    """Forget the worker runtime (tests, or a worker shutting down)."""
    global _current
    _current = None


def current() -> WorkerRuntime | None:
    """The runtime of the gunitune worker this process is, if any."""
    return _current
