"""Database URL handling: masking passwords and picking the installed PostgreSQL driver.

Users hand us ``postgres://`` and ``postgresql://`` URLs. SQLAlchemy 2.1 maps a
plain ``postgresql://`` to psycopg 3, SQLAlchemy 2.0 to psycopg2, and rejects
``postgres://`` outright, so the driver a URL ends up with depends on versions
the user never chose. We make the choice explicit and say which one we took.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable

__all__ = ["UnsupportedDatabaseURL", "mask_url", "mask_urls_in", "normalize_url"]

# A URL token: scheme:// and everything up to white space or a quote.
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")
# Passwords given as parameters: ?password=..., &password=..., or libpq's password=...
_PASSWORD_PARAM = re.compile(r"(?P<key>\b(?:password|passwd|pwd)=)(?P<pw>[^&\s'\"]*)", re.I)

_POSTGRES_SCHEMES = ("postgres", "postgresql")
# Preference order when the URL names no driver: psycopg2 is what gunitune
# installs and makes green; psycopg 3 is accepted when it is the only one.
_DRIVERS = (("psycopg2", "psycopg2"), ("psycopg", "psycopg"))


class UnsupportedDatabaseURL(ValueError):
    """A database URL that gunitune cannot use, with the reason and the fix."""


def _mask_userinfo(match: re.Match[str]) -> str:
    rest = match.group("rest")
    # The last '@' ends the user info: a password may hold a raw '@' or '/'.
    at = rest.rfind("@")
    if at > 0 and ":" in rest[:at]:
        user = rest[: rest.index(":")]
        rest = f"{user}:***{rest[at:]}"
    return match.group("scheme") + rest


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; safe to log.

    Covers ``user:password@``, a password holding a raw ``@``, and password
    query parameters (``?password=``, which libpq accepts).
    """
    return mask_urls_in(url)


def mask_urls_in(text: str) -> str:
    """Mask every password found anywhere in ``text``: URLs and ``password=`` parameters."""
    return _PASSWORD_PARAM.sub(lambda m: m.group("key") + "***", _URL.sub(_mask_userinfo, text))


def _module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def normalize_url(
    url: str, installed: Callable[[str], bool] = _module_installed
) -> tuple[str, str]:
    """Return ``(url, driver)`` with the PostgreSQL driver made explicit.

    ``postgres://`` and ``postgresql://`` get ``+psycopg2`` when psycopg2 is
    installed, else ``+psycopg``. A URL that already names a driver is kept.
    Non-PostgreSQL URLs are returned unchanged with driver ``""``.
    """
    if "://" not in url:
        raise UnsupportedDatabaseURL(
            f"DATABASE_URL={mask_url(url)!r} is not a URL; expected "
            "postgresql://user:password@host:port/dbname"
        )
    scheme, rest = url.split("://", 1)
    dialect, _, driver = scheme.partition("+")
    if dialect not in _POSTGRES_SCHEMES:
        return url, driver
    if driver:
        return f"postgresql+{driver}://{rest}", driver
    for module, name in _DRIVERS:
        if installed(module):
            return f"postgresql+{name}://{rest}", name
    raise UnsupportedDatabaseURL(
        f"DATABASE_URL={mask_url(url)!r} needs a PostgreSQL driver; none is installed: "
        "pip install psycopg2-binary"
    )
