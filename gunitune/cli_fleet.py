"""``gunitune plan --hosts N [--max-connections M] [--pgbouncer]``: a fleet on one database.

The same rule as ``GUNITUNE_POOL=auto`` and the start check
(:func:`gunitune.core.fleet.fleet_share`), printed with what to set on each
side: the hosts, PostgreSQL, and PgBouncer in front of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from gunitune.core.budget import ServerBudget
from gunitune.core.errors import ConfigError
from gunitune.core.fleet import fleet_share, pgbouncer_plan
from gunitune.core.planner import Plan, require_int, round_up
from gunitune.core.settings import MAX_BACKENDS

__all__ = ["add_fleet_arguments", "fleet_section"]

_FLAGS = {
    "--hosts": ("hosts", 1, "hosts (Gunicorn masters) sharing the database (default 1)"),
    "--max-connections": (
        "max_connections", 1,
        "the database's max_connections, fixed by a managed instance (default: recommend one)",
    ),
    "--other-clients": (
        "other_clients", 0, "connections other clients hold on the database (default 0)",
    ),
}  # fmt: skip


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The fleet's flags on ``gunitune plan``."""
    for flag, (_, _, text) in _FLAGS.items():
        parser.add_argument(flag, metavar="N", dest=_FLAGS[flag][0], help=text)
    parser.add_argument(
        "--pgbouncer", action="store_true",
        help="also print PgBouncer's settings (pool_mode = transaction) for the fleet",
    )  # fmt: skip


def _ints(args: argparse.Namespace) -> dict[str, int | None]:
    values: dict[str, int | None] = {}
    for flag, (key, minimum, _) in _FLAGS.items():
        raw: str | None = getattr(args, key)
        if raw is None:
            values[key] = None
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{flag}={raw} is invalid: expected an integer >= {minimum}"
            ) from None
        values[key] = require_int(flag, value, minimum)
    hosts = values["hosts"]
    if hosts is not None and hosts > MAX_BACKENDS:
        raise ConfigError(
            f"--hosts={hosts} is invalid: expected an integer from 1 to {MAX_BACKENDS}"
            f" (each host needs a connection)"
        )
    return values


def fleet_section(
    plan: Plan, args: argparse.Namespace, reserved: int
) -> tuple[str, dict[str, Any]] | None:
    """The fleet's lines and JSON, or ``None`` when no fleet flag was given."""
    values = _ints(args)
    if all(v is None for v in values.values()) and not args.pgbouncer:
        return None
    hosts = values["hosts"] or 1
    max_connections = values["max_connections"]
    others = values["other_clients"] or 0
    host_word = "host" if hosts == 1 else "hosts"
    env = f"GUNITUNE_HOSTS={hosts}"
    if max_connections is None:
        # No fixed budget: size the database to the app's pools on every host.
        total = hosts * plan.total_db_connections
        wanted = round_up(total * 1.2 + reserved + others)
        lines = [
            f"Fleet: {hosts} {host_word} x {plan.workers} workers x"
            f" {plan.connections_per_worker} connections = {total}",
            f"  - each host: {env}; its {plan.workers} workers pool"
            f" {plan.total_db_connections} connections",
            f"  - Postgres: max_connections >= {wanted} ({total} + 20% headroom + {reserved}"
            f" reserved + {others} other clients, rounded up to a multiple of 50)",
        ]
        return "\n".join(lines) + "\n", {"hosts": hosts, "fleet_total": total,
                                         "recommended_max_connections": wanted}  # fmt: skip
    server = ServerBudget(max_connections, reserved, 0, others)
    share = fleet_share(server, hosts=hosts, workers=plan.workers)
    lines = [
        f"Fleet: {hosts} {host_word} x {plan.workers} workers on max_connections={max_connections}"
        f" ({reserved} reserved, {others} other clients): {share.free} free",
        f"  per worker: {share.per_worker} connections (pool_size {share.pool_size}"
        f" + max_overflow {share.max_overflow})",
        f"  per host:   {share.per_host} connections ({plan.workers} workers)",
        f"  fleet:      {share.fleet_total} connections + {share.headroom} headroom"
        f" <= {share.free} free",
        f"  why:        {share.reason}",
        "",
        "What to set for the fleet:",
        f"  - each host: {env} GUNITUNE_POOL=auto (the master reads the budget and sizes"
        f" default pools), or pool_size={share.pool_size}, max_overflow={share.max_overflow}"
        f" in the engine options",
        f"  - Postgres: max_connections={max_connections} as it is; the fleet never asks for"
        f" more than {share.fleet_total + share.headroom}",
    ]
    data: dict[str, Any] = {"fleet": share.as_dict()}
    if args.pgbouncer:
        bouncer = pgbouncer_plan(share, timeout=plan.timeout)
        lines.append(
            "  - PgBouncer (every host's DATABASE_URL points at it; with psycopg 3 add"
            " prepare_threshold=None to the connect arguments):"
        )
        lines += [f"      {line}" for line in bouncer.ini_lines()]
        data["pgbouncer"] = dict(vars(bouncer))
    return "\n".join(lines) + "\n", data
