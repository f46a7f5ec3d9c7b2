"""``GUNITUNE_POOL=auto``: the master's share of the budget, applied to each worker's pools.

The master reads the budget at start (:mod:`gunitune.configure`) and hands each
worker its ``pool_size + max_overflow`` through the environment, set before
the workers fork. A worker, once its app is loaded and before it serves,
resizes the QueuePools the app left at their defaults; a pool the app set
explicitly is kept and logged with the advice. :func:`pool_options` gives the
same figures to an app that builds its engines itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from gunitune.core.resolve import settings_from
from gunitune.database_url import masked, parse

__all__ = [
    "POOLER_ENV",
    "SHARE_ENV",
    "apply_in_worker",
    "apply_share",
    "explicit_in_config",
    "pool_options",
    "publish_share",
]

SHARE_ENV = "_GUNITUNE_POOL_SHARE"
"""Master -> workers: ``"<pool_size>+<max_overflow>"``. Not ``GUNITUNE_*``: no setting."""
POOLER_ENV = "_GUNITUNE_POOLER"
"""Master -> workers: ``"transaction"`` when DATABASE_URL leads to a transaction pooler."""
SQLALCHEMY_DEFAULT = (5, 10)
"""``create_engine``'s QueuePool when given no size: taken as "not set"."""
_SIZE_OPTIONS = ("pool_size", "max_overflow")
log = structlog.get_logger("gunitune")


def publish_share(pool_size: int, max_overflow: int) -> None:
    """Master, before fork: every worker (reloads included) inherits the share."""
    os.environ[SHARE_ENV] = f"{pool_size}+{max_overflow}"


def pool_options(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """``{"pool_size": ..., "max_overflow": ...}`` of this worker's share, or ``{}``.

    For ``create_engine(url, **gunitune.pool_options())``: empty outside a
    gunitune master that read the budget (SQLAlchemy's defaults then apply).
    """
    raw = (os.environ if environ is None else environ).get(SHARE_ENV, "")
    size, plus, overflow = raw.partition("+")
    if not (plus and size.isdigit() and overflow.isdigit()):
        return {}
    return {"pool_size": int(size), "max_overflow": int(overflow)}


def explicit_in_config(app_config: Mapping[str, Any]) -> bool:
    """Whether Flask-SQLAlchemy's engine options (or a bind's) name a pool size."""
    options = [app_config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}]
    binds = app_config.get("SQLALCHEMY_BINDS") or {}
    if isinstance(binds, Mapping):
        options += [b for b in binds.values() if isinstance(b, Mapping)]
    return any(isinstance(o, Mapping) and any(k in o for k in _SIZE_OPTIONS) for o in options)


def _sizes(pool: QueuePool) -> tuple[int, int]:
    return pool.size(), pool._max_overflow  # no public accessor; stable since SQLAlchemy 1.x


def _resized(pool: QueuePool, pool_size: int, max_overflow: int) -> QueuePool:
    """``pool.recreate()`` with another size: same creator, options and listeners."""
    return pool.__class__(
        pool._creator,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pre_ping=pool._pre_ping,
        use_lifo=pool._pool.use_lifo,
        timeout=pool._timeout,
        recycle=pool._recycle,
        echo=pool.echo,
        logging_name=pool._orig_logging_name,
        reset_on_return=pool._reset_on_return,
        # Keeps every listener (gunitune's checkout/checkin/connect ones too),
        # as Engine.dispose() does when it recreates the pool.
        _dispatch=pool.dispatch,
        dialect=pool._dialect,
    )


def _server(url: Any) -> tuple[str, int, str]:
    parsed = parse(url)
    return (parsed.host or "", parsed.port or 5432, parsed.database or "")


def _split(share: Mapping[str, int], engines: int) -> tuple[int, int]:
    """One worker's share over ``engines`` pools on the same server (each at least 1 + 0)."""
    total = share["pool_size"] + share["max_overflow"]
    each = max(1, total // max(1, engines))
    pool_size = max(1, min(share["pool_size"], round(each * share["pool_size"] / total)))
    return pool_size, each - pool_size


def apply_share(
    engines: Iterable[Engine],
    share: Mapping[str, int],
    *,
    explicit: bool,
    pid: int,
    budget_url: str | None = None,
) -> list[dict[str, Any]]:
    """Resize the default-sized QueuePools of ``engines`` to ``share``; report each engine.

    ``explicit``: the app's configuration named a pool size, so SQLAlchemy's
    5 + 10 was chosen, not defaulted. Other pool classes (NullPool, StaticPool)
    are never changed. With ``budget_url`` (the DATABASE_URL whose budget was
    read), only engines on that server are resized, and several of them split
    the share: two binds on one server must not take it twice.
    """
    engines = list(engines)
    server = _server(budget_url) if budget_url else None
    ours = [e for e in engines if server is None or _server(e.url) == server]
    defaults = [e for e in ours if isinstance(e.pool, QueuePool) and _sizes(e.pool) ==
                SQLALCHEMY_DEFAULT]  # fmt: skip
    pool_size, max_overflow = _split(share, len(defaults) if not explicit else 1)
    report: list[dict[str, Any]] = []
    for engine in engines:
        pool = engine.pool
        entry: dict[str, Any] = {"url": masked(engine.url), "pool": type(pool).__name__}
        if engine not in ours:
            entry["kept"] = "another server than DATABASE_URL: its budget was not read"
        elif not isinstance(pool, QueuePool):
            entry["kept"] = "not a QueuePool"
        elif _sizes(pool) == (pool_size, max_overflow):
            entry["kept"] = "already the share"
        elif explicit or _sizes(pool) != SQLALCHEMY_DEFAULT:
            size, overflow = _sizes(pool)
            entry["kept"] = f"set by the app: {size} + {overflow}"
            log.warning(
                "pool_explicit_kept",
                pid=pid,
                url=entry["url"],
                pool_size=size,
                max_overflow=overflow,
                advice=(
                    f"GUNITUNE_POOL=auto would give {pool_size} + {max_overflow}: drop"
                    " pool_size/max_overflow from the engine options, or pass"
                    " **gunitune.pool_options() to create_engine"
                ),
            )
        else:
            # Nothing checked out yet: the worker has not served. The old pool
            # holds at most the app's import-time connections: closed here.
            engine.pool = _resized(pool, pool_size, max_overflow)
            pool.dispose()
            entry["resized"] = f"{SQLALCHEMY_DEFAULT[0]} + {SQLALCHEMY_DEFAULT[1]}" \
                f" -> {pool_size} + {max_overflow}"
        report.append(entry)
    return report


def apply_in_worker(
    engines: Iterable[Engine], app_config: Mapping[str, Any], environ: Mapping[str, str],
    *, pid: int,
) -> None:
    """A worker with its app loaded: apply the master's share when the pool mode is auto
    (``app.config`` over the environment); log ``pool_share_applied``."""
    share = pool_options(environ)
    if not share:
        return  # app mode in the master, or it could not read the budget
    if settings_from(environ, app_config).pool != "auto":
        return
    explicit = explicit_in_config(app_config)
    budget_url = environ.get("DATABASE_URL") or None
    report = apply_share(engines, share, explicit=explicit, pid=pid, budget_url=budget_url)
    log.info("pool_share_applied", pid=pid, **share, engines=report)
