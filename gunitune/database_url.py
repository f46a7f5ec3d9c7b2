"""Database URLs through SQLAlchemy's own URL object: the driver, masking, libpq keywords.

Users hand us ``postgres://`` and ``postgresql://`` URLs. SQLAlchemy 2.1 maps a
plain ``postgresql://`` to psycopg 3 and 2.0 to psycopg2, and it rejects
``postgres://``: the driver a URL ends up with depends on versions the user
never chose. We follow SQLAlchemy's own default when that driver is installed,
take the other one when it is not (telling SQLAlchemy so, in this process, with
:func:`use_installed_driver`), and say which one we took.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from gunitune.core.urls import UnsupportedDatabaseURL, mask_urls_in

__all__ = [
    "DRIVER_PACKAGES",
    "connect_kwargs",
    "masked",
    "parse",
    "sqlalchemy_default_driver",
    "use_installed_driver",
    "with_driver",
]

_POSTGRES = ("postgres", "postgresql")
# What pip installs for each libpq driver SQLAlchemy knows as postgresql+<name>.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'"}
# libpq parameters whose value is a secret wherever they appear in a URL's query.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_DIALECT_CLASSES = {"psycopg2": "PGDialect_psycopg2", "psycopg": "PGDialect_psycopg"}


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook that hides the module
        return False


def _encode_raw_at(url: str) -> str:
    """Percent-encode a password that holds a raw ``@`` or ``/``.

    SQLAlchemy would take the part after the first ``@`` for the host; libpq
    users often paste such passwords as they are. The user info ends at the
    last ``@`` before the query string.
    """
    scheme, sep, rest = url.partition("://")
    head, q, query = rest.partition("?")
    userinfo, at, hostpath = head.rpartition("@")
    if not sep or not at or ("@" not in userinfo and "/" not in userinfo):
        return url
    user, colon, password = userinfo.partition(":")
    password = quote(unquote(password), safe="")
    return f"{scheme}://{user}{colon}{password}@{hostpath}{q}{query}"


def parse(url: str | URL) -> URL:
    """SQLAlchemy's URL for ``url``; raise :class:`UnsupportedDatabaseURL` when it is none."""
    if isinstance(url, URL):
        return url
    try:
        return make_url(_encode_raw_at(url.strip()))
    except (ArgumentError, ValueError):
        raise UnsupportedDatabaseURL(
            f"DATABASE_URL={mask_urls_in(url)!r} is not a URL; expected "
            "postgresql://user:password@host:port/dbname"
        ) from None


def masked(url: str | URL) -> str:
    """``url`` rendered by SQLAlchemy with every secret as ``***``; safe to log.

    Hides the password (one with spaces or a raw ``@`` too) and the secret
    query parameters libpq accepts (``password=``, ``sslpassword=``).
    """
    try:
        parsed = parse(url)
    except UnsupportedDatabaseURL:
        # Not a URL SQLAlchemy can read: scrub what looks like one.
        return mask_urls_in(str(url))
    secrets = {key: "***" for key in parsed.query if key.lower() in _SECRET_PARAMS}
    if secrets:
        parsed = parsed.update_query_dict(secrets)
    # The query's "***" comes back percent-encoded; show it as the password's.
    return parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def sqlalchemy_default_driver() -> str:
    """The driver SQLAlchemy gives a plain ``postgresql://`` (no driver imported)."""
    from sqlalchemy.dialects import postgresql

    return str(postgresql.dialect.driver)


def _pick(installed: Callable[[str], bool]) -> str:
    default = sqlalchemy_default_driver()
    others = [name for name in DRIVER_PACKAGES if name != default]
    for name in (default, *others):
        if installed(name):
            return name
    raise UnsupportedDatabaseURL(
        "a postgresql:// URL needs a PostgreSQL driver and none is installed: "
        f"pip install {DRIVER_PACKAGES['psycopg2']} (or {DRIVER_PACKAGES['psycopg']})"
    )


def with_driver(
    url: str | URL, installed: Callable[[str], bool] = _module_installed
) -> tuple[URL, str]:
    """Return ``(url, driver)`` with the PostgreSQL driver made explicit.

    A URL that names a driver keeps it. A plain ``postgres://`` or
    ``postgresql://`` gets SQLAlchemy's default driver when it is installed,
    else the other libpq driver. Other databases come back unchanged, with
    their driver or ``""``.
    """
    parsed = parse(url)
    dialect, _, driver = parsed.drivername.partition("+")
    if dialect not in _POSTGRES:
        return parsed, driver
    driver = driver or _pick(installed)
    return parsed.set(drivername=f"postgresql+{driver}"), driver


def use_installed_driver(installed: Callable[[str], bool] = _module_installed) -> str | None:
    """Make plain ``postgresql://`` and ``postgres://`` URLs use the installed driver.

    Registers the dialect in SQLAlchemy's registry (this process only) when
    SQLAlchemy's default driver is missing, and ``postgres://`` (which
    SQLAlchemy rejects) always. Returns the driver that plain ``postgresql://``
    now means when that differs from SQLAlchemy's default, else ``None`` (also
    on a second call). Call it before the app creates engines.
    """
    from sqlalchemy.dialects import registry

    if "postgres" in registry.impls:
        return None  # done already, in this process or in the master before the fork
    driver = _pick(installed)
    module = f"sqlalchemy.dialects.postgresql.{driver}"
    registry.register("postgres", module, _DIALECT_CLASSES[driver])
    if driver == sqlalchemy_default_driver():
        return None
    registry.register("postgresql", module, _DIALECT_CLASSES[driver])
    return driver


def connect_kwargs(url: URL) -> dict[str, Any]:
    """libpq keyword arguments for ``url`` (psycopg2 and psycopg 3 accept both forms).

    Keywords rather than a URL string: no re-encoding of a password that holds
    ``%``, spaces or ``@``, and the query's libpq parameters pass as they are.
    """
    kwargs: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
    for key, value in url.query.items():
        kwargs[key] = value[-1] if isinstance(value, tuple) else value
    return kwargs
