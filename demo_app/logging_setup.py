"""JSON logs for the demo. A library never configures structlog; an app does."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging() -> None:
    """One JSON object per line on stderr, next to Gunicorn's own log."""
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
