"""JSON logs for the demo. A library never configures structlog; an app does."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging() -> None:
    """One JSON object per line on stderr, next to Gunicorn's own log.

    structlog's events (gunitune's) and stdlib logging records (Flask's
    ``app.logger``, any library that logs) both come out as JSON. Gunicorn's own lines keep its
    plain format: its loggers don't propagate, they are readable as they are, and
    the benchmarks count them by their text ("WORKER TIMEOUT", "Booting worker").
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.addHandler(json_handler(sys.stderr))
    # Without a root handler at INFO, Flask's app.logger.info() went nowhere: its
    # own handler has no level and the root's default is WARNING.
    root.setLevel(logging.INFO)


def json_handler(stream: TextIO) -> logging.Handler:
    """A stdlib handler writing each record as structlog's JSON events are."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    return handler
