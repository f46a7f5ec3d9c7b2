"""How a limiter waits: gevent's primitives under gevent, plain threads' otherwise."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Event", "primitives"]


class Event(Protocol):
    """What a waiter parks on: ``threading.Event`` or ``gevent.event.Event``."""

    def wait(self, timeout: float | None = None) -> bool: ...
    def set(self) -> None: ...


def _gevent_primitives() -> tuple[Callable[[], Event], Callable[[], None], Any]:
    import gevent
    from gevent.event import Event as GeventEvent

    # A timed sleep, not sleep(0): sleep(0) resumes us from the callback queue
    # without the loop polling IO or running timers in between.
    def yield_to_loop() -> None:
        gevent.sleep(0.001)

    # The scheduler's methods never yield under gevent: no lock needed.
    return GeventEvent, yield_to_loop, contextlib.nullcontext()


def _thread_primitives() -> tuple[Callable[[], Event], Callable[[], None], Any]:
    return threading.Event, lambda: time.sleep(0.001), threading.Lock()


def primitives() -> tuple[Callable[[], Event], Callable[[], None], Any]:
    """gevent's event and yield when gevent patched threading, else plain threads'."""
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        return _gevent_primitives()
    return _thread_primitives()
