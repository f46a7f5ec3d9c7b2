"""A fleet's share of one PostgreSQL: how many connections each worker may pool. Pure.

A managed database has a fixed ``max_connections`` that every host of the app
shares. The rule (``GUNITUNE_POOL=auto``, ``gunitune plan --hosts``, the start
check)::

    free       = max_connections - superuser_reserved - reserved - other clients
    headroom   = 2 x workers + 10 % of free
    per_worker = (free - headroom) // (hosts x workers)

"Other clients" are connections not tagged ``gunitune/...`` (``application_name``):
the fleet's own connections, other hosts' included, are part of its share, so a
host starting next to running ones does not count them against itself.

The headroom, and why:

* ``2 x workers``: each worker's boot check opens two connections outside its
  pool (two overlapping ``pg_sleep``). Hosts are deployed one at a time, so one
  host's workers boot at once, while the others serve with full pools.
* ``10 % of free``: a reload's old workers drain while the new ones serve (each
  keeps its idle ``pool_size`` connections until it exits), the worker's stall
  probe, and a psql session or a migration. A reload under a storm that fills
  every pool can still overlap more for a few seconds; behind PgBouncer the
  overlap waits in PgBouncer's queue instead (see :func:`pgbouncer_plan`).

``per_worker`` is split like SQLAlchemy's own default (5 + 10): a third kept
open (``pool_size``), the rest opened on demand and closed when idle
(``max_overflow``), so a draining worker holds a third of its share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from gunitune.core.budget import ServerBudget
from gunitune.core.errors import ConfigError
from gunitune.core.planner import require_int, round_up

__all__ = [
    "APPLICATION_PREFIX",
    "BOOT_CONNECTIONS",
    "RELOAD_SHARE",
    "FleetShare",
    "PgBouncerPlan",
    "fleet_share",
    "minimum_max_connections",
    "pgbouncer_plan",
    "split",
]

APPLICATION_PREFIX = "gunitune/"
"""``application_name`` prefix of every connection a gunitune process opens."""
BOOT_CONNECTIONS = 2
"""Connections a worker opens outside its pool while it boots (the driver check)."""
RELOAD_SHARE = 0.1
"""Part of the free slots kept for a reload's overlap, probes and admin sessions."""
POOLED_SHARE = 3
"""``pool_size`` is one part in this many of a worker's share (SQLAlchemy's 5 of 15)."""


@dataclass(frozen=True)
class FleetShare:
    """Each worker's connections under the fleet rule, and the figures behind them."""

    hosts: int
    workers: int
    free: int
    headroom: int
    per_worker: int
    pool_size: int
    max_overflow: int
    reason: str

    @property
    def per_host(self) -> int:
        """Connections one host's workers pool together."""
        return self.workers * self.per_worker

    @property
    def fleet_total(self) -> int:
        """Connections every host's workers pool together."""
        return self.hosts * self.per_host

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable figures, the derived totals included."""
        return {**asdict(self), "per_host": self.per_host, "fleet_total": self.fleet_total}


def split(per_worker: int) -> tuple[int, int]:
    """``pool_size, max_overflow`` for a worker's share: a third kept open, at least one."""
    require_int("per_worker", per_worker, 1)
    pool_size = max(1, math.ceil(per_worker / POOLED_SHARE))
    return pool_size, per_worker - pool_size


def _headroom(free: int, workers: int) -> int:
    return BOOT_CONNECTIONS * workers + math.ceil(RELOAD_SHARE * free)


def minimum_max_connections(
    server: ServerBudget, *, hosts: int, workers: int, per_worker: int = 1
) -> int:
    """Smallest ``max_connections`` (a multiple of 50) giving each worker ``per_worker``."""
    fixed = (
        server.superuser_reserved_connections
        + server.reserved_connections
        + server.in_use_by_others
    )
    # free - ceil(0.1 free) - 2 workers >= hosts x workers x per_worker.
    wanted = hosts * workers * per_worker + BOOT_CONNECTIONS * workers
    free = math.ceil(wanted / (1 - RELOAD_SHARE)) + 1
    return round_up(free + fixed)


def fleet_share(server: ServerBudget, *, hosts: int, workers: int) -> FleetShare:
    """Each worker's share of ``server``; :class:`ConfigError` when under one connection.

    ``server.in_use_by_others`` must not count the fleet's own (tagged) connections.
    """
    require_int("hosts", hosts, 1)
    require_int("workers", workers, 1)
    free = server.available
    headroom = _headroom(free, workers)
    fleet_workers = hosts * workers
    per_worker = max(0, free - headroom) // fleet_workers
    supply = (
        f"max_connections={server.max_connections} leaves {free}"
        f" ({server.superuser_reserved_connections} superuser-reserved,"
        f" {server.reserved_connections} reserved,"
        f" {server.in_use_by_others} in use by other clients)"
    )
    hosts_text = f"{hosts} host{'s' if hosts != 1 else ''} x {workers} workers"
    if per_worker < 1:
        least = minimum_max_connections(server, hosts=hosts, workers=workers)
        raise ConfigError(
            f"Postgres budget too small for GUNITUNE_POOL=auto: {supply}, minus {headroom}"
            f" headroom, is under one connection for each of {hosts_text}; raise"
            f" max_connections to at least {least}, or lower GUNITUNE_WORKERS"
        )
    pool_size, max_overflow = split(per_worker)
    reason = (
        f"{supply}; minus {headroom} headroom ({BOOT_CONNECTIONS} per worker for one"
        f" host's boot checks + {RELOAD_SHARE:.0%} for a reload's overlap, probes and"
        f" admin sessions) = {free - headroom}, / ({hosts_text}) = {per_worker} per worker:"
        f" pool_size {pool_size} + max_overflow {max_overflow}"
    )
    return FleetShare(
        hosts=hosts,
        workers=workers,
        free=free,
        headroom=headroom,
        per_worker=per_worker,
        pool_size=pool_size,
        max_overflow=max_overflow,
        reason=reason,
    )


@dataclass(frozen=True)
class PgBouncerPlan:
    """PgBouncer settings (``pool_mode = transaction``) for a fleet's share."""

    default_pool_size: int
    max_db_connections: int
    max_client_conn: int
    query_wait_timeout: int
    pool_mode: str = "transaction"

    def ini_lines(self) -> list[str]:
        """The ``[pgbouncer]`` lines to set."""
        return [f"{name} = {value}" for name, value in asdict(self).items()]


def pgbouncer_plan(share: FleetShare, *, timeout: int) -> PgBouncerPlan:
    """PgBouncer in front of the server for ``share``'s fleet.

    Server side, PgBouncer opens at most what the fleet pools plus one host's
    boot checks (``max_db_connections``; one database/user pair:
    ``default_pool_size`` the same), so the rest of the headroom stays free for
    psql and migrations, and a booting worker's check never queues behind a
    storm on the other hosts. Client side,
    room for every worker's pool twice plus its boot connections: during a
    reload old and new workers are connected at once, and their queries wait in
    PgBouncer instead of being refused with "too many clients". A query that
    waits longer than the worker ``timeout`` is lost anyway: ``query_wait_timeout``.
    """
    require_int("timeout", timeout, 1)
    fleet_workers = share.hosts * share.workers
    clients = 2 * fleet_workers * (share.per_worker + BOOT_CONNECTIONS)
    server = share.fleet_total + BOOT_CONNECTIONS * share.workers
    return PgBouncerPlan(
        default_pool_size=server,
        max_db_connections=server,
        max_client_conn=clients,
        query_wait_timeout=timeout,
    )
