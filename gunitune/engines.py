"""SQLAlchemy engines as gunitune sees them: their pool capacity and fork hygiene."""

from __future__ import annotations

import gc
from collections.abc import Iterable

from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

from gunitune.core.resolve import PoolFacts
from gunitune.database_url import masked

__all__ = [
    "describe",
    "dispose_after_fork",
    "find_engines",
    "pool_capacity",
    "pool_facts",
    "pool_timeout",
]


def find_engines() -> list[Engine]:
    """Every live SQLAlchemy engine in this process.

    Used where no extension told us which engines the app has: after the app is
    loaded in a worker, and after fork when the app was preloaded.
    """
    return [obj for obj in gc.get_objects() if isinstance(obj, Engine)]


def pool_capacity(engine: Engine) -> int | None:
    """Connections the engine's pool can hand out at once; ``None`` when unbounded.

    QueuePool: ``pool_size + max_overflow`` (unbounded when max_overflow < 0).
    StaticPool and SingletonThreadPool share one connection. NullPool opens one per
    checkout, so it is unbounded (the database's max_connections is the limit).
    """
    pool = engine.pool
    if isinstance(pool, QueuePool):
        overflow = pool._max_overflow  # no public accessor; stable since SQLAlchemy 1.x
        return None if overflow < 0 else pool.size() + overflow
    if isinstance(pool, StaticPool):
        return 1
    if isinstance(pool, NullPool):
        return None
    size = getattr(pool, "size", None)
    return int(size()) if callable(size) else None


def pool_timeout(engine: Engine) -> float | None:
    """Seconds a checkout waits in the pool before SQLAlchemy raises, if it waits at all."""
    pool = engine.pool
    return float(pool.timeout()) if isinstance(pool, QueuePool) else None


def pool_facts(engines: Iterable[Engine], primary: Engine | None = None) -> list[PoolFacts]:
    """The engines' pools as :func:`gunitune.core.resolve.resolve` takes them."""
    return [PoolFacts(pool_capacity(e), primary=e is primary) for e in engines]


def describe(engine: Engine) -> dict[str, object]:
    """Loggable facts about an engine; the URL is masked."""
    return {
        "url": masked(engine.url),
        "driver": engine.dialect.driver,
        "pool": type(engine.pool).__name__,
        "capacity": pool_capacity(engine),
        "pool_timeout": pool_timeout(engine),
    }


def dispose_after_fork(engines: Iterable[Engine]) -> int:
    """Drop pooled connections inherited from the parent without closing them.

    ``close=False`` leaves the parent's sockets alone (closing them here would
    send a terminate message on the parent's behalf) and gives this process a
    fresh, empty pool. Returns how many engines were disposed.
    """
    count = 0
    for engine in engines:
        engine.dispose(close=False)
        count += 1
    return count
