"""What ``gunitune.conf`` derives, as testable functions.

:func:`derive` turns the environment and the machine into Gunicorn settings
(with a reason for each); :func:`check_database_budget` compares them with
what Postgres can hold. ``gunitune.conf`` only assigns the results to the
names Gunicorn reads.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from gunitune import database_url
from gunitune._isolated import run_in_child
from gunitune.core.budget import ServerBudget, check_budget
from gunitune.core.cpus import CpuCount, read_somaxconn, usable_cpus
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.fleet import fleet_share
from gunitune.core.planner import Plan, make_plan
from gunitune.core.settings import MAX_WORKERS, Settings
from gunitune.core.urls import UnsupportedDatabaseURL
from gunitune.database_url import masked, with_driver
from gunitune.pool_share import publish_share
from gunitune.postgres import DatabaseUnreachable

__all__ = [
    "WORKER_CLASS",
    "Derived",
    "check_database_budget",
    "derive",
    "exit_with",
    "load",
    "read_budget",
    "start",
    "with_workers",
]

WORKER_CLASS = "gunitune.worker.GuniTuneWorker"
_CONNECT_TIMEOUT = 5.0
# Unreachable for reasons waiting will not fix: stop with one line at start.
_MISCONFIGURED = frozenset({"auth", "no_database", "invalid"})
# Connect, one query, and a fork: generous, but a hung database must not hang the start.
_BUDGET_READ_TIMEOUT = 3 * _CONNECT_TIMEOUT
log = structlog.get_logger("gunitune")


@dataclass(frozen=True)
class Derived:
    """Settings and the plan they came from."""

    settings: Settings
    plan: Plan

    def gunicorn_settings(self) -> dict[str, Any]:
        """The values assigned to Gunicorn's setting names."""
        return {
            "worker_class": WORKER_CLASS,
            "workers": self.plan.workers,
            "worker_connections": self.plan.worker_connections,
            "backlog": self.plan.backlog,
            "timeout": self.plan.timeout,
            "graceful_timeout": self.plan.graceful_timeout,
        }


def _workers_from_env(settings: Settings, environ: Mapping[str, str]) -> int | None:
    if settings.workers is not None:
        return settings.workers
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return None
    workers = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= workers <= MAX_WORKERS:
        # The same bound as GUNITUNE_WORKERS: a worker beyond the load board's seats cannot boot.
        raise ConfigError(
            f"WEB_CONCURRENCY={raw!r} is invalid: expected an integer from 1 to {MAX_WORKERS}"
        )
    return workers


def derive(environ: Mapping[str, str], cpus: CpuCount | None = None) -> Derived:
    """Settings from ``environ`` (``GUNITUNE_*``, ``WEB_CONCURRENCY``) and the machine."""
    settings = Settings.from_sources(environ)
    cpu = cpus or usable_cpus()
    plan = make_plan(
        cpus=cpu.count,
        cpu_source=cpu.source,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        workers=_workers_from_env(settings, environ),
        burst=settings.burst,
        max_held=settings.max_held,
        timeout=settings.timeout,
        somaxconn=read_somaxconn(),
    )
    return Derived(settings, plan)


def with_workers(derived: Derived, workers: int) -> Derived:
    """The same plan for another worker count (a ``--workers`` given on the command line)."""
    if workers == derived.plan.workers:
        return derived
    plan = derived.plan
    replanned = make_plan(
        cpus=plan.cpus,
        cpu_source=plan.cpu_source,
        pool_size=plan.pool_size,
        max_overflow=plan.max_overflow,
        workers=workers,
        burst=plan.burst,
        max_held=plan.worker_connections,
        timeout=plan.timeout,
        somaxconn=plan.somaxconn,
    )
    return Derived(derived.settings, replanned)


def exit_with(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr, no traceback, then exit."""
    print(f"gunitune: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _read_budget(url: str) -> ServerBudget:
    from gunitune.postgres import read_server_budget  # imports a driver: in the child only

    return read_server_budget(url, connect_timeout=_CONNECT_TIMEOUT)


def read_budget(url: str) -> ServerBudget:
    """The server's budget, read in a forked child (raises :class:`DatabaseUnreachable`)."""
    # In a child: a driver imported by the master spoils psycopg 3 in every worker.
    return run_in_child(
        functools.partial(_read_budget, url),
        timeout=_BUDGET_READ_TIMEOUT,
        what="reading the PostgreSQL connection budget",
    )


def check_database_budget(
    derived: Derived, url: str, server: ServerBudget | None = None
) -> str | None:
    """Compare the plan, for every host of the fleet, with the server's connection budget.

    Returns ``None`` when it fits, else the one-line complaint. An unreachable
    database raises :class:`gunitune.core.errors.GunituneError` (one line).
    """
    plan = derived.plan
    hosts = derived.settings.hosts
    server = read_budget(url) if server is None else server
    verdict = check_budget(
        hosts * plan.total_db_connections,
        server,
        workers=plan.workers,
        per_worker=plan.connections_per_worker,
        hosts=hosts,
    )
    if verdict.ok:
        return None
    try:
        share = fleet_share(server, hosts=hosts, workers=plan.workers)
    except ConfigError:
        return verdict.message
    return (
        f"{verdict.message}, or GUNITUNE_POOL=auto"
        f" ({share.pool_size} + {share.max_overflow} per worker)"
    )


def _pool_auto(derived: Derived, url: str, mode: str) -> None:
    """``GUNITUNE_POOL=auto``: each worker's share of the budget, logged and handed over."""
    plan = derived.plan
    try:
        server = read_budget(url)
        share = fleet_share(server, hosts=derived.settings.hosts, workers=plan.workers)
    except DatabaseUnreachable as exc:
        if exc.kind in _MISCONFIGURED:
            exit_with(str(exc))
        log.warning(
            "pool_auto_unchecked", problem=str(exc), kind=exc.kind,
            why="no budget to share: the workers keep the app's own pools",
        )  # fmt: skip
        return
    except GunituneError as exc:  # ConfigError: under one connection per worker
        if mode == "error":
            exit_with(str(exc))
        log.warning("pool_auto_unchecked", problem=str(exc), why="the workers keep their pools")
        return
    publish_share(share.pool_size, share.max_overflow)
    log.info(
        "pool_auto",
        pool_size=share.pool_size,
        max_overflow=share.max_overflow,
        per_worker=share.per_worker,
        per_host=share.per_host,
        hosts=share.hosts,
        workers=share.workers,
        headroom=share.headroom,
        fleet_connections_now=server.own_connections,
        why=share.reason,
    )


def start(derived: Derived, environ: Mapping[str, str]) -> None:
    """Gunicorn's ``on_starting``: explain the derived values, then check the database."""
    plan = derived.plan
    url = environ.get("DATABASE_URL", "")
    driver = ""
    if url:
        try:
            _, driver = with_driver(url)
        except UnsupportedDatabaseURL as exc:
            exit_with(str(exc))
    log.info(
        "gunitune_config",
        **derived.gunicorn_settings(),
        cpus=plan.cpus,
        cpu_source=plan.cpu_source,
        pool_size=plan.pool_size,
        max_overflow=plan.max_overflow,
        total_db_connections=plan.total_db_connections,
        recommended_max_connections=plan.recommended_max_connections,
        somaxconn=plan.somaxconn,
        database_url=masked(url) if url else None,
        driver=driver or None,
        why=plan.reasons,
    )
    for line in plan.advice():
        if "clips backlog" in line:
            log.warning("backlog_clipped", advice=line)
    mode = derived.settings.budget_check
    if url and derived.settings.pool == "auto":
        # The share fits the budget by construction: it replaces the check.
        _pool_auto(derived, url, mode)
        return
    if not url or mode == "off":
        return
    try:
        complaint = check_database_budget(derived, url)
    except DatabaseUnreachable as exc:
        if exc.kind not in _MISCONFIGURED:
            # Start anyway: health checks and routes without a database serve,
            # and database routes answer 503 + Retry-After until it is back: a
            # host must be able to start during an outage. A measured shortfall
            # or a wrong URL still stops it.
            log.warning("postgres_budget_unchecked", problem=str(exc), kind=exc.kind)
            return
        complaint = str(exc)
    except GunituneError as exc:
        complaint = str(exc)
    if complaint is None:
        log.info("postgres_budget_ok", needed=plan.total_db_connections)
    elif mode == "error":
        exit_with(complaint)
    else:
        log.warning("postgres_budget", problem=complaint)


def use_installed_driver() -> None:
    """Plain ``postgresql://`` URLs use the installed driver in this process (logged once).

    Called by the config module before the app loads (``preload_app`` too) and
    by each worker before it imports the app.
    """
    try:
        driver = database_url.use_installed_driver()
    except UnsupportedDatabaseURL:
        return  # no PostgreSQL driver at all: the start check names the fix
    if driver is not None:
        log.info(
            "postgresql_driver",
            driver=driver,
            why=(
                f"SQLAlchemy maps postgresql:// to {database_url.sqlalchemy_default_driver()}, "
                f"which is not installed; plain postgresql:// URLs use {driver} here"
            ),
        )


def load(environ: Mapping[str, str] | None = None) -> Derived:
    """:func:`derive` for the config module: a bad setting exits with one line."""
    try:
        return derive(os.environ if environ is None else environ)
    except ConfigError as exc:
        exit_with(str(exc))
