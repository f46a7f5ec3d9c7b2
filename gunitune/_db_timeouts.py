"""A bound on every wait for the database, for connections the app opens through us.

Without them a database host that drops packets (no reset) holds each
connection, and each request on it, until the kernel gives up: about two hours
for an idle socket with default keepalives, minutes for a connect. The values
go into each new connection's libpq parameters unless the app set its own.

Each connection is also tagged ``application_name = gunitune/<host>/<pid>``
(unless the app named its own), so the master's budget read tells the fleet's
own connections, boot checks and a reload's draining workers included, from
other clients' (``pg_stat_activity.application_name``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from gunitune.core.fleet import APPLICATION_PREFIX

__all__ = ["CONNECT_DEFAULTS", "add_connect_defaults", "application_name"]

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
_POOLER_ENV = "_GUNITUNE_POOLER"  # gunitune.pool_share.POOLER_ENV, set by the master
# PostgreSQL keeps 63 bytes of application_name (NAMEDATALEN - 1) and cuts the rest.
_NAME_BYTES = 63


def application_name(pid: int | None = None) -> str:
    """``gunitune/<host>/<pid>``, the host name shortened so the pid always fits."""
    tail = f"/{os.getpid() if pid is None else pid}"
    room = _NAME_BYTES - len(APPLICATION_PREFIX) - len(tail)
    host = socket.gethostname().encode("ascii", "replace")[:room].decode("ascii")
    return f"{APPLICATION_PREFIX}{host}{tail}"


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
    # At connect time: the pid of the worker that opens it, not of a preloading master.
    cparams.setdefault("application_name", application_name())
    if dialect.driver == "psycopg" and os.environ.get(_POOLER_ENV) == "transaction":
        # Server-side prepared statements live on one backend; a transaction
        # pooler hands the next transaction another one ("prepared statement
        # _pg3_0 does not exist"). psycopg2 prepares nothing.
        cparams.setdefault("prepare_threshold", None)
