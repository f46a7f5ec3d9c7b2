"""A Flask test client that closes every response, as a WSGI server does.

gunitune releases a request's slot when the server closes the response; Flask's
test client defers that close unless the response is buffered.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient


class ClosingClient(FlaskClient):
    """Buffers (and so closes) every response unless told otherwise."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def closing(app: Flask) -> Flask:
    """Make ``app.test_client()`` close its responses."""
    app.test_client_class = ClosingClient
    return app
