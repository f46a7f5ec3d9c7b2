"""Trivial WSGI app for harness tests: answers ``hello`` to every path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI entry point; ``/pid`` returns the worker PID, anything else ``BODY``."""
    body = str(os.getpid()).encode() if environ.get("PATH_INFO") == "/pid" else BODY
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
