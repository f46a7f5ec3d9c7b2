"""Helpers shared by the unit tests of the extension, the limiter and the CPU meter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from gunitune.core.resolve import PoolFacts, Resolved, resolve


class ClosingClient(FlaskClient):
    """Buffers (and so closes) every response unless told otherwise.

    gunitune releases a request's slot when the server closes the response, as a
    WSGI server does; Flask's test client defers that close unless buffered.
    """

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def closing(app: Flask) -> Flask:
    """Make ``app.test_client()`` close its responses."""
    app.test_client_class = ClosingClient
    return app


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time without yielding."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (made true by another thread) without a fixed sleep."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.001)


def resolved(capacity: int | None = 2, config: Mapping[str, Any] | None = None) -> Resolved:
    """What a worker outside Gunicorn resolves from ``config`` and one primary pool."""
    return resolve({}, dict(config or {}), None, [PoolFacts(capacity, primary=True)])
