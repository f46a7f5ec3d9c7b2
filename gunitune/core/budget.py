"""Does PostgreSQL have room for every worker's pool? A pure check.

If ``workers * (pool_size + max_overflow)`` exceeds the free connection slots,
the app works fine at low load and then fails under exactly the overload it
was tuned for, with ``FATAL: sorry, too many clients already``. Checking at
startup turns that into one clear message before traffic arrives. The caller
queries the server (``SHOW max_connections`` etc.) and passes the numbers in.
"""

from __future__ import annotations

from dataclasses import dataclass

from gunitune.core.planner import require_int, round_up

__all__ = ["BudgetVerdict", "ServerBudget", "check_budget"]


@dataclass(frozen=True)
class ServerBudget:
    """Connection numbers reported by one PostgreSQL server.

    ``reserved_connections`` is PostgreSQL 16's setting of that name (0 on
    older servers); ``in_use_by_others`` counts connections currently held by
    clients other than this app (other services, psql sessions, replication);
    ``own_connections`` those tagged ``application_name = gunitune/...``: this
    fleet's, other hosts' included, which are part of its share.
    """

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    in_use_by_others: int
    server_version: str = ""
    own_connections: int = 0
    pooler: str = "none"  # gunitune.pooler: "none", "proxy", "transaction" or "unknown"

    @property
    def available(self) -> int:
        """Slots this app can use; never negative (superusers may eat reserved slots)."""
        used = self.superuser_reserved_connections + self.reserved_connections
        return max(0, self.max_connections - used - self.in_use_by_others)


@dataclass(frozen=True)
class BudgetVerdict:
    """Result of :func:`check_budget`: ``ok`` and a one-line ``message`` with the numbers."""

    ok: bool
    needed: int
    available: int
    message: str


def check_budget(
    needed: int, server: ServerBudget, *, workers: int, per_worker: int, hosts: int = 1
) -> BudgetVerdict:
    """Compare the connections the app may open with the server's free slots.

    Args:
        needed: connections all workers may hold at once, normally
            ``workers * per_worker``; more if other processes share the budget.
        server: numbers read from the server.
        workers: Gunicorn worker count (only for the message).
        per_worker: ``pool_size + max_overflow`` (only for the message).
        hosts: hosts sharing the server, each with ``workers`` (only for the message).

    Raises:
        ConfigError: a negative count, or zero workers / per-worker connections.
    """
    require_int("needed", needed, 0)
    require_int("workers", workers, 1)
    require_int("per_worker", per_worker, 1)
    require_int("max_connections", server.max_connections, 1)
    require_int("superuser_reserved_connections", server.superuser_reserved_connections, 0)
    require_int("reserved_connections", server.reserved_connections, 0)
    require_int("in_use_by_others", server.in_use_by_others, 0)

    require_int("hosts", hosts, 1)
    available = server.available
    product = hosts * workers * per_worker
    fleet = f"{hosts} hosts x " if hosts > 1 else ""
    demand = f"{fleet}{workers} workers x {per_worker} connections = {product} needed"
    if needed > product:
        demand += f" plus {needed - product} more = {needed}"
    elif needed < product:
        demand = f"{needed} needed ({fleet}{workers} workers x {per_worker} connections at most)"
    supply = (
        f"max_connections={server.max_connections} leaves {available}"
        f" ({server.superuser_reserved_connections} superuser-reserved,"
        f" {server.reserved_connections} reserved,"
        f" {server.in_use_by_others} in use by other clients)"
    )
    if needed <= available:
        return BudgetVerdict(True, needed, available, f"Postgres budget ok: {demand}, {supply}")

    # Smallest max_connections that fits today's other clients, rounded like
    # the planner's recommendation so both commands suggest the same figures.
    minimum = round_up(
        needed
        + server.superuser_reserved_connections
        + server.reserved_connections
        + server.in_use_by_others
    )
    message = (
        f"Postgres budget too small: {demand}, but {supply};"
        f" raise max_connections to at least {minimum},"
        f" or lower GUNITUNE_WORKERS / pool_size + max_overflow,"
        f" or set GUNITUNE_BUDGET_CHECK=warn"
    )
    return BudgetVerdict(False, needed, available, message)
