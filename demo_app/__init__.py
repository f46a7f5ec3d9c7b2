"""The seed's demo app: an IO-bound route, a CPU-bound route, a fast one and a few more.

``gunicorn -c python:gunitune.conf demo_app:app``. Durations scale by
environment so tests and benchmarks can run the same storm smaller:

* ``DATABASE_URL`` (required): ``postgres://``, ``postgresql://`` or with a driver.
* ``DEMO_IO_SECONDS`` (default 5): ``GET /io`` runs ``SELECT pg_sleep(DEMO_IO_SECONDS)``.
* ``DEMO_CPU_LOOP`` (default 100000000): ``GET /cpu`` returns ``str(sum(range(DEMO_CPU_LOOP)))``.
* ``DEMO_DBCPU_ROWS`` (default 300000): ``GET /dbcpu`` returns
  ``SELECT count(*) FROM generate_series(1, DEMO_DBCPU_ROWS)``, CPU spent in PostgreSQL.
* ``GET /work?kind=io`` is ``/io``'s query, ``GET /work?kind=cpu`` is ``/cpu``'s loop:
  one route whose cost changes with its parameter.
* ``DEMO_POOL_SIZE`` / ``DEMO_MAX_OVERFLOW`` / ``DEMO_POOL_TIMEOUT``: the engine's
  pool (SQLAlchemy's defaults 5 / 10 / 30 when unset).
* ``DEMO_GUNITUNE`` (default on): attach the gunitune extension; ``off`` serves the
  same app bare, as the stock and hand-tuned benchmark configurations do.
* ``DEMO_GREEN`` (default on): make psycopg2 cooperative under gevent, as any
  gevent + psycopg2 app does with psycogreen; ``off`` shows what happens without.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from demo_app.factory import DemoConfig, create_app

__all__ = ["DemoConfig", "app", "create_app"]


def _app_from_environment(environ: Mapping[str, str]) -> Flask:
    try:
        return create_app(DemoConfig.from_environ(environ))
    except ValueError as exc:
        # A clear line at start instead of a traceback in every worker.
        raise SystemExit(f"demo_app: error: {exc}") from None


def __getattr__(name: str) -> Flask:
    # Built on first access (``demo_app:app``), so importing ``demo_app.factory`` for
    # its configuration or factory needs no DATABASE_URL.
    if name == "app":
        app = _app_from_environment(os.environ)
        globals()["app"] = app
        return app
    raise AttributeError(f"module 'demo_app' has no attribute {name!r}")
