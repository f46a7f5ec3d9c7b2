"""Gunicorn config module: ``gunicorn -c python:gunitune.conf app:app``.

Derives the worker class, workers, worker_connections, backlog and timeouts
from this machine and the ``GUNITUNE_*`` environment, logs them once with the
reason for each, and checks the Postgres connection budget before any worker
starts. With ``GUNITUNE_METRICS_PATH`` it also prepares prometheus_client's
multiprocess directory (:mod:`gunitune.multiproc`). Options given on Gunicorn's
command line still win: Gunicorn applies them after this module. ``gunitune init``
writes a ``gunitune.conf`` file that imports this module, for the short form
``gunicorn -c gunitune.conf app:app``.
"""

from __future__ import annotations

import os
from typing import Any

from gunitune import configure, multiproc

__all__ = [
    "backlog",
    "child_exit",
    "graceful_timeout",
    "on_starting",
    "timeout",
    "worker_class",
    "worker_connections",
    "workers",
]

_derived = configure.load()
configure.use_installed_driver()
_values = _derived.gunicorn_settings()

worker_class: str = _values["worker_class"]
workers: int = _values["workers"]
worker_connections: int = _values["worker_connections"]
backlog: int = _values["backlog"]
timeout: int = _values["timeout"]
graceful_timeout: int = _values["graceful_timeout"]


def on_starting(server: Any) -> None:
    """Explain the derived values and check the Postgres budget (master, once)."""
    # Report what Gunicorn will really use: the command line may have overridden us.
    effective = {name: server.cfg.settings[name].get() for name in _values}
    overridden = {k: v for k, v in effective.items() if v != _values[k]}
    derived = _derived
    if overridden:
        configure.log.info("command_line_overrides", overridden=overridden)
        derived = configure.with_workers(_derived, effective["workers"])
    configure.start(derived, os.environ)
    # Before the workers fork: prometheus_client picks its mode when a worker
    # imports it, from PROMETHEUS_MULTIPROC_DIR.
    multiproc.on_starting(server, metrics_on=bool(derived.settings.metrics_path))


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (master): drop its live gauges, fold its counters (metrics)."""
    multiproc.child_exit(server, worker)
