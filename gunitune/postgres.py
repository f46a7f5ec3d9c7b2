"""Talk to PostgreSQL directly: connect safely and read the connection budget.

Used at startup, before SQLAlchemy engines exist, to check that every worker's
pool fits in the server's ``max_connections``. Errors are one line, with the
URL's password masked: they end up in deploy logs that many people read.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL

from gunitune._db_timeouts import application_name
from gunitune.core.budget import ServerBudget
from gunitune.core.errors import ConfigError, GunituneError
from gunitune.core.urls import UnsupportedDatabaseURL, mask_urls_in
from gunitune.database_url import DRIVER_PACKAGES, connect_kwargs, masked, parse, with_driver

__all__ = [
    "DatabaseUnreachable",
    "connect",
    "read_server_budget",
    "safe_error_text",
    "unreachable_error",
]

# Everything in one round trip. current_setting(name, true) returns NULL where
# the setting does not exist: reserved_connections is new in PostgreSQL 16.
_BUDGET_SQL = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       current_setting('reserved_connections', true),
       current_setting('server_version'),
       count(*) FILTER (WHERE application_name NOT LIKE 'gunitune/%'),
       count(*) FILTER (WHERE application_name LIKE 'gunitune/%')
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""

# libpq prefixes each attempt with where it went; the URL already says that.
# psycopg 3 puts "connection failed: " in front.
_LIBPQ_PREFIX = re.compile(
    r"^(connection failed:\s*)?connection to server (at|on socket) .*? failed:\s*"
)
_SEVERITY = re.compile(r"^(FATAL|ERROR):\s*")
# key=value DSNs (psycopg2 merges kwargs into one) are not URLs: mask them too.
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


_DNS_FAILURES = (
    "translate host name",
    "name or service not known",
    "name resolution",
    "nodename nor servname",
)


class DatabaseUnreachable(GunituneError):
    """The database server could not be reached or refused us.

    ``str()`` is one line: the masked URL, the driver's reason and a hint, e.g.
    ``cannot reach DATABASE_URL=postgresql://app:***@127.0.0.1:5999/app:
    connection refused (is the server running and listening on 127.0.0.1:5999?)``.
    ``kind`` is one of ``refused``, ``auth``, ``dns``, ``timeout``,
    ``no_database``, ``full``, ``starting``, ``invalid``, ``other``. The driver's exception
    is not chained: its text may contain the password.
    """

    def __init__(self, url: str, reason: str, hint: str, kind: str) -> None:
        self.url = url
        self.reason = reason
        self.hint = hint
        self.kind = kind
        super().__init__(f"cannot reach DATABASE_URL={url}: {reason} ({hint})")

    def __reduce__(self) -> tuple[type[DatabaseUnreachable], tuple[str, str, str, str]]:
        # The start-up check runs in a child process and sends its errors back pickled.
        return (type(self), (self.url, self.reason, self.hint, self.kind))


def _hostport(url: URL) -> str:
    """Where ``url`` points, for hints: ``host:port`` (5432 by default) or the Unix socket."""
    if not url.host:
        return "its Unix socket"
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port or 5432}"


def _scrub_literal(text: str, url: URL) -> str:
    """Replace the URL's secrets (raw and percent-encoded) wherever they appear.

    Skipped when the secret is just the user or database name, which messages
    show anyway: masking those would make the message useless and hide nothing.
    """
    secrets = {url.password or ""}
    secrets.update(str(v) for k, v in url.query.items() if k.lower() in ("password", "sslpassword"))
    secrets |= {quote(secret, safe="") for secret in secrets}
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and secret not in (url.username, url.database):
            text = text.replace(secret, "***")
    return text


def _parsed(url: str | URL) -> URL | None:
    try:
        return parse(url)
    except UnsupportedDatabaseURL:
        return None


def safe_error_text(error: BaseException | str, url: str) -> str:
    """First meaningful line of a driver error, with any password removed.

    Masks URL and ``password=`` DSN passwords, and the URL's literal password
    wherever it appears (raw and percent-decoded).
    """
    parsed = _parsed(url)
    text = str(error) if parsed is None else _scrub_literal(str(error), parsed)
    text = _DSN_PASSWORD.sub(r"\1***", mask_urls_in(text))
    for line in text.splitlines():
        line = _SEVERITY.sub("", _LIBPQ_PREFIX.sub("", line.strip()))
        line = " ".join(line.split())
        if line:
            # "Connection refused" -> "connection refused", but keep "SSL ...".
            if len(line) > 1 and line[0].isupper() and line[1].islower():
                line = line[0].lower() + line[1:]
            return line
    return type(error).__name__ if isinstance(error, BaseException) else "unknown error"


def _classify(text: str, hostport: str, connect_timeout: float) -> tuple[str, str]:
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return "auth", "check the user name and password in DATABASE_URL"
    if re.search(r'role ".*" does not exist', low):
        return "auth", "create the role or fix the user name in DATABASE_URL"
    if "pg_hba.conf" in low or "authentication failed" in low:
        return "auth", "the server's pg_hba.conf rejects this user, database or client address"
    if "connection refused" in low or "no such file or directory" in low:
        return "refused", f"is the server running and listening on {hostport}?"
    if any(s in low for s in _DNS_FAILURES):
        return "dns", "check the host name in DATABASE_URL"
    if "timeout expired" in low or "timed out" in low:
        return "timeout", (
            f"no answer from {hostport} within {connect_timeout:g}s: "
            "check the host, the port and any firewall"
        )
    if re.search(r'database ".*" does not exist', low):
        return "no_database", "create the database or fix its name in DATABASE_URL"
    if "too many clients" in low or "connection slots are reserved" in low:
        return "full", (
            "the server has no free connection slots: lower workers or pool sizes, "
            "or raise max_connections"
        )
    if "starting up" in low or "shutting down" in low or "recovery mode" in low:
        return "starting", "the server is starting or stopping; retry shortly"
    if "invalid dsn" in low or "invalid uri" in low or "invalid connection option" in low:
        return "invalid", "fix DATABASE_URL: libpq does not accept it"
    return "other", "check DATABASE_URL and that the server accepts connections from this host"


def unreachable_error(
    url: str, error: BaseException | str, *, connect_timeout: float = 5.0
) -> DatabaseUnreachable:
    """Build the one-line, password-free :class:`DatabaseUnreachable` for ``error``."""
    parsed = _parsed(url)
    hostport = _hostport(parsed) if parsed is not None else "its host"
    full_text = safe_error_text(" ".join(str(error).split()), url)
    kind, hint = _classify(full_text, hostport, connect_timeout)
    return DatabaseUnreachable(masked(url), safe_error_text(error, url), hint, kind)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _libpq_target(url: str | URL) -> tuple[dict[str, Any], str]:
    """Return (libpq keyword arguments, driver to connect with)."""
    try:
        parsed, driver = with_driver(url)
    except UnsupportedDatabaseURL as exc:
        raise ConfigError(str(exc)) from None
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            f"DATABASE_URL={masked(url)} is not a PostgreSQL URL; "
            "expected postgresql://user:password@host:port/dbname"
        )
    if driver not in DRIVER_PACKAGES or not _importable(driver):
        # Another SQLAlchemy driver (asyncpg, pg8000...) or a missing one: any
        # libpq driver reads the same server, so use whichever is installed.
        for candidate in DRIVER_PACKAGES:
            if _importable(candidate):
                return connect_kwargs(parsed), candidate
        raise ConfigError(
            f"DATABASE_URL={masked(url)} needs psycopg2 or psycopg to reach "
            f"PostgreSQL: pip install {DRIVER_PACKAGES['psycopg2']}"
        )
    return connect_kwargs(parsed), driver


def connect(url: str, *, connect_timeout: float = 5.0) -> Any:
    """Open an autocommit DB-API connection to ``url`` with psycopg2 or psycopg 3.

    psycopg 3 is used when the URL names it (``postgresql+psycopg://``) and it
    is installed, or when it is the only driver installed. Raises
    :class:`DatabaseUnreachable` on failure and :class:`ConfigError` for a URL
    that is not PostgreSQL.
    """
    kwargs, driver = _libpq_target(url)
    # libpq takes whole seconds (and treats values below 2 as 2).
    kwargs.setdefault("connect_timeout", max(1, math.ceil(connect_timeout)))
    # Tagged like the pools' connections: boot checks count as the fleet's own.
    kwargs.setdefault("application_name", application_name())
    if driver == "psycopg":
        import psycopg

        try:
            return psycopg.connect(autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise unreachable_error(url, exc, connect_timeout=connect_timeout) from None
    import psycopg2

    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        raise unreachable_error(url, exc, connect_timeout=connect_timeout) from None
    conn.autocommit = True
    return conn


def read_server_budget(url: str, *, connect_timeout: float = 5.0) -> ServerBudget:
    """Read the connection budget of the server behind ``url``.

    Returns ``max_connections``, ``superuser_reserved_connections``,
    ``reserved_connections`` (0 before PostgreSQL 16), the client connections
    other sessions hold right now, and the server version. Raises
    :class:`DatabaseUnreachable` when the server cannot be reached and
    :class:`GunituneError` when the query fails.
    """
    conn = connect(url, connect_timeout=connect_timeout)
    try:
        cur = conn.cursor()
        cur.execute(_BUDGET_SQL)
        row = cur.fetchone()
        cur.close()
    except Exception as exc:
        raise GunituneError(
            f"cannot read the connection budget of DATABASE_URL={masked(url)}: "
            f"{safe_error_text(exc, url)}"
        ) from None
    finally:
        with contextlib.suppress(Exception):  # closing is best effort
            conn.close()
    max_conn, su_reserved, reserved, version, others, own = row
    return ServerBudget(
        max_connections=int(max_conn),
        superuser_reserved_connections=int(su_reserved),
        reserved_connections=int(reserved) if reserved is not None else 0,
        in_use_by_others=int(others),
        own_connections=int(own),
        # "15.4 (Debian 15.4-1.pgdg120+1)" -> "15.4"
        server_version=str(version).split()[0] if version else "",
    )
