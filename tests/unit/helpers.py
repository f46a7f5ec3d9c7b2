"""Helpers shared by the unit tests of the extension and the CPU meter."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient


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
