"""Exception types shared by every gunitune module.

Kept tiny and dependency-free so that any layer (core logic, the Flask glue,
the CLI) can import it without pulling in gevent, Flask or SQLAlchemy.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GunituneError"]


class GunituneError(Exception):
    """Base class for every error gunitune raises on purpose.

    Catch this to tell gunitune's own refusals apart from bugs or errors
    raised by Gunicorn, gevent, Flask or SQLAlchemy.
    """


class ConfigError(GunituneError, ValueError):
    """A bad setting.

    Its ``str()`` is one line naming the key, the value and what is allowed,
    e.g. ``"pool_size=-1 is invalid: expected an integer >= 0"``. It also
    subclasses :class:`ValueError` so generic callers that validate input with
    ``except ValueError`` keep working. ``key`` names the setting at fault,
    when there is one (``None`` for a plan's inputs or a combination).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
