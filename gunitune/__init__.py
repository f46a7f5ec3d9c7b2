"""gunitune: make a Flask + SQLAlchemy app behave under overload on Gunicorn + gevent.

* ``gunicorn -c python:gunitune.conf app:app`` derives workers, worker class,
  worker_connections, backlog and timeouts, and checks the Postgres budget.
* ``GuniTune(app, db)`` caps requests in flight per worker, sheds with a clean
  503 + ``Retry-After``, runs CPU-bound routes through a CPU lane and logs
  QueuePool pressure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "GuniTune",
    "GunituneError",
    "Overloaded",
    "Settings",
    "__version__",
    "pool_options",
]

from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.settings import Settings

if TYPE_CHECKING:
    from gunitune.flask_ext import GuniTune
    from gunitune.http import Overloaded
    from gunitune.pool_share import pool_options


def __getattr__(name: str) -> Any:
    # Flask and SQLAlchemy load only when the extension is used: the Gunicorn
    # config module and the CLI import this package in the master.
    if name == "GuniTune":
        from gunitune.flask_ext import GuniTune

        return GuniTune
    if name == "pool_options":
        from gunitune.pool_share import pool_options

        return pool_options
    if name == "Overloaded":
        from gunitune.http import Overloaded

        return Overloaded
    raise AttributeError(f"module 'gunitune' has no attribute {name!r}")
