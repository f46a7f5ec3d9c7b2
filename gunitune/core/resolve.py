"""Settings resolved once per worker, by one pure function of everything that decides them.

The environment, ``app.config``, Gunicorn's effective configuration (command
line included) and the pools of the engines the app really has: each worker
calls :func:`resolve` once, after its app is loaded, and builds its limiter
from the result. Nothing reads a setting again on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gunitune.core.errors import ConfigError
from gunitune.core.settings import Settings, reject_unknown

__all__ = ["GunicornFacts", "PoolFacts", "Resolved", "resolve", "settings_from"]


@dataclass(frozen=True)
class GunicornFacts:
    """What Gunicorn really runs with (after its command line)."""

    timeout: float
    graceful_timeout: float
    worker_connections: int


@dataclass(frozen=True)
class PoolFacts:
    """One engine's pool: connections it hands out at once (``None``: unbounded)."""

    capacity: int | None
    primary: bool = False


@dataclass(frozen=True)
class Resolved:
    """Everything a worker's limiter needs, decided once."""

    settings: Settings
    db_capacity: int
    capacity_source: str
    max_held: int
    heartbeat_timeout: float


def settings_from(environ: Mapping[str, str], app_config: Mapping[str, Any]) -> Settings:
    """``app.config`` wins over the environment (as Flask-SQLAlchemy reads its keys)."""
    try:
        reject_unknown(environ)
        return Settings.from_sources(app_config, environ)
    except ConfigError as exc:
        if exc.key is None:  # a combination: its keys may come from either
            where = "app.config or the environment" if app_config else "the environment"
        else:
            where = "app.config" if exc.key in app_config else "the environment"
        raise ConfigError(f"{exc} (in {where})", key=exc.key) from None


def _db_capacity(settings: Settings, pools: Sequence[PoolFacts]) -> tuple[int, str]:
    # The primary engine's pool when bounded, else the smallest bounded pool: a
    # request may use any of them, and summing binds would admit requests that
    # then queue inside the one pool they all use.
    for pool in pools:
        if pool.primary and pool.capacity is not None:
            return max(1, pool.capacity), "the app's default engine"
    bounded = [p.capacity for p in pools if p.capacity is not None]
    if bounded:
        return max(1, min(bounded)), "the smallest bounded pool of the app's engines"
    planned = settings.pool_size + max(settings.max_overflow, 0)
    return max(1, planned), "GUNITUNE_POOL_SIZE + GUNITUNE_MAX_OVERFLOW (no bounded pool found)"


def resolve(
    environ: Mapping[str, str],
    app_config: Mapping[str, Any],
    gunicorn: GunicornFacts | None,
    pools: Sequence[PoolFacts],
) -> Resolved:
    """Decide a worker's limits; raise :class:`ConfigError` (one line) on a bad setting."""
    settings = settings_from(environ, app_config)
    capacity, source = _db_capacity(settings, pools)
    if gunicorn is None:
        # Not under Gunicorn (flask run, tests): the settings are all there is.
        return Resolved(
            settings=settings,
            db_capacity=capacity,
            capacity_source=source,
            max_held=settings.max_held,
            heartbeat_timeout=float(settings.timeout),
        )
    return Resolved(
        settings=settings,
        db_capacity=capacity,
        capacity_source=source,
        # Gunicorn's worker_connections is the held bound it enforces in its
        # accept loop; gunitune.conf sets it from GUNITUNE_MAX_HELD.
        max_held=gunicorn.worker_connections,
        heartbeat_timeout=gunicorn.timeout,
    )
