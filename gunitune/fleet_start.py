"""The master's start against the database: read the budget, share it, check it.

Called by :func:`gunitune.configure.start` (Gunicorn's ``on_starting``). The
budget, and whether a pooler sits in front of the server, are read in a forked
child (:func:`gunitune._isolated.run_in_child`): a driver imported by the
master spoils psycopg 3 in every worker. What the workers need is handed over
in the environment before they fork (:mod:`gunitune.pool_share`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import structlog

from gunitune._isolated import ChildTimeout, run_in_child
from gunitune.core.budget import ServerBudget, check_budget
from gunitune.core.errors import ConfigError
from gunitune.core.fleet import FleetShare, fleet_share, pgbouncer_plan
from gunitune.database_url import masked
from gunitune.pool_share import POOLER_ENV, publish_share
from gunitune.postgres import DatabaseUnreachable

if TYPE_CHECKING:
    from gunitune.configure import Derived

__all__ = [
    "announce_pooler",
    "check_database_budget",
    "pool_auto",
    "read_budget",
    "share_or_none",
]

_CONNECT_TIMEOUT = 5.0
_DETECT_CONNECT_TIMEOUT = 2.0  # libpq's shortest: the detection is advice, it must not crowd out
# The budget's connect and the detection's (up to three), a few queries and a
# fork: generous, but a hung database must not hang the start.
_BUDGET_READ_TIMEOUT = _CONNECT_TIMEOUT + 3 * _DETECT_CONNECT_TIMEOUT + 5.0
log = structlog.get_logger("gunitune")


def _read_budget(url: str) -> ServerBudget:
    # Both import a driver: in the child only.
    from gunitune.pooler import detect_pooler
    from gunitune.postgres import read_server_budget

    budget = read_server_budget(url, connect_timeout=_CONNECT_TIMEOUT)
    pooler = "unknown"
    with contextlib.suppress(Exception):  # the budget is what matters; the pooler is advice
        pooler = detect_pooler(url, connect_timeout=_DETECT_CONNECT_TIMEOUT)
    return dataclasses.replace(budget, pooler=pooler)


def read_budget(url: str) -> ServerBudget:
    """The server's budget and pooler, read in a forked child (raises DatabaseUnreachable)."""
    try:
        return run_in_child(
            functools.partial(_read_budget, url),
            timeout=_BUDGET_READ_TIMEOUT,
            what="reading the PostgreSQL connection budget",
        )
    except ChildTimeout:
        # A server that accepts but answers late is unreachable for the start:
        # the master starts (with a warning) rather than exit.
        raise DatabaseUnreachable(
            masked(url),
            f"no answer within {_BUDGET_READ_TIMEOUT:g}s",
            "the server or the network is slow or dropping packets",
            "timeout",
        ) from None


def share_or_none(derived: Derived, server: ServerBudget) -> FleetShare | None:
    """Each worker's share under the fleet rule, ``None`` when under one connection."""
    try:
        return fleet_share(server, hosts=derived.settings.hosts, workers=derived.plan.workers)
    except ConfigError:
        return None


def check_database_budget(derived: Derived, url: str, server: ServerBudget) -> str | None:
    """Compare the plan, for every host of the fleet, with the server's connection budget.

    Returns ``None`` when it fits, else the one-line complaint, which names
    ``GUNITUNE_POOL=auto``'s share when there is one.
    """
    plan = derived.plan
    hosts = derived.settings.hosts
    verdict = check_budget(
        hosts * plan.total_db_connections,
        server,
        workers=plan.workers,
        per_worker=plan.connections_per_worker,
        hosts=hosts,
    )
    if verdict.ok:
        return None
    share = share_or_none(derived, server)
    if share is None:
        return verdict.message
    return (
        f"{verdict.message}, or GUNITUNE_POOL=auto"
        f" ({share.pool_size} + {share.max_overflow} per worker)"
    )


def pool_auto(derived: Derived, server: ServerBudget, share: FleetShare | None) -> str | None:
    """``GUNITUNE_POOL=auto``: hand each worker its share and log it once; else the complaint."""
    if share is None:
        try:
            fleet_share(server, hosts=derived.settings.hosts, workers=derived.plan.workers)
        except ConfigError as exc:
            return str(exc)
        raise AssertionError("share_or_none() and fleet_share() disagree")
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
        pooler=server.pooler,
        why=share.reason,
    )
    return None


def announce_pooler(derived: Derived, server: ServerBudget, share: FleetShare | None) -> None:
    """A transaction pooler in front: say so with PgBouncer's settings, and tell the
    workers (psycopg 3's server-side prepared statements must be off)."""
    if server.pooler != "transaction":
        os.environ.pop(POOLER_ENV, None)
        return
    os.environ[POOLER_ENV] = server.pooler
    settings = (
        pgbouncer_plan(share, timeout=derived.plan.timeout).ini_lines() if share else []
    )
    log.info(
        "pooler_detected",
        pool_mode="transaction",
        pgbouncer=settings,
        why=(
            "a server backend moved between two clients at a transaction's end:"
            " DATABASE_URL points at a transaction pooler (PgBouncer pool_mode=transaction);"
            " psycopg 3 connections get prepare_threshold=None"
        ),
    )
