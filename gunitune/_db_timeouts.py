"""A bound on every wait for the database, for connections the app opens through us.

Without them a database host that drops packets (no reset) holds each
connection, and each request on it, until the kernel gives up: about two hours
for an idle socket with default keepalives, minutes for a connect. The values
go into each new connection's libpq parameters unless the app set its own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["CONNECT_DEFAULTS", "add_connect_defaults"]

CONNECT_DEFAULTS: dict[str, int] = {
    # libpq's own connect deadline (gunitune's green wait enforces it for psycopg2).
    "connect_timeout": 5,
    # A silent peer is found after 5 s idle + 3 probes 2 s apart, waiting for a
    # reply included: probes go out while a query runs, and a live server's
    # kernel answers them however long the query takes.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    # Data sent and not acknowledged for 10 s: the peer is gone (Linux).
    "tcp_user_timeout": 10_000,
}
_LIBPQ_DRIVERS = ("psycopg2", "psycopg")


def add_connect_defaults(engine: Engine) -> bool:
    """Give ``engine``'s new connections :data:`CONNECT_DEFAULTS` (libpq drivers only)."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver not in _LIBPQ_DRIVERS:
        return False
    if not event.contains(engine, "do_connect", _set_defaults):
        event.listen(engine, "do_connect", _set_defaults)
    return True


def _set_defaults(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    for key, value in CONNECT_DEFAULTS.items():
        cparams.setdefault(key, value)
