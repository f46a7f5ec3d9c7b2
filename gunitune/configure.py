"""What ``gunitune.conf`` derives, as testable functions.

:func:`derive` turns the environment and the machine into Gunicorn settings
(with a reason for each); :func:`check_database_budget` compares them with
what Postgres can hold. ``gunitune.conf`` only assigns the results to the
names Gunicorn reads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from gunitune import database_url
from gunitune import fleet_start as fleet
from gunitune.core.budget import ServerBudget
from gunitune.core.cpus import CpuCount, read_somaxconn, usable_cpus
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.planner import Plan, make_plan
from gunitune.core.settings import MAX_WORKERS, Settings
from gunitune.core.urls import UnsupportedDatabaseURL
from gunitune.database_url import masked, with_driver
from gunitune.fleet_start import check_database_budget, read_budget
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
# Unreachable for reasons waiting will not fix: stop with one line at start.
_MISCONFIGURED = frozenset({"auth", "no_database", "invalid"})
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
    auto = derived.settings.pool == "auto"
    if not url or (mode == "off" and not auto):
        return
    complaint: str | None = None
    try:
        server: ServerBudget | None = read_budget(url)
    except DatabaseUnreachable as exc:
        if exc.kind not in _MISCONFIGURED:
            # Start anyway: health checks and routes without a database serve,
            # and database routes answer 503 + Retry-After until it is back: a
            # host must be able to start during an outage. A measured shortfall
            # or a wrong URL still stops it. GUNITUNE_POOL=auto: no budget to
            # share, so the workers keep the app's pools.
            log.warning("postgres_budget_unchecked", problem=str(exc), kind=exc.kind)
            return
        server, complaint = None, str(exc)
    except GunituneError as exc:
        server, complaint = None, str(exc)
    if server is not None:
        share = fleet.share_or_none(derived, server)
        fleet.announce_pooler(derived, server, share)
        # With auto the share fits the budget by construction: it replaces the check.
        complaint = fleet.pool_auto(derived, server, share) if auto else (
            check_database_budget(derived, url, server)
        )
        if auto and complaint is None:
            return
    if complaint is None:
        log.info("postgres_budget_ok", needed=plan.total_db_connections * derived.settings.hosts)
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
