"""Scrubbing passwords out of free text: driver errors, log lines, tracebacks.

A URL we hold is parsed and masked by SQLAlchemy (:mod:`gunitune.database_url`).
Text we did not write (a driver's error message) may hold URLs or ``password=``
parameters we never parsed: a pattern is all there is for those.
"""

from __future__ import annotations

import re

__all__ = ["UnsupportedDatabaseURL", "mask_urls_in"]

# A URL token: scheme:// and everything up to white space or a quote.
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")
# Passwords given as parameters: ?password=..., &password=..., or libpq's password=...
_PASSWORD_PARAM = re.compile(r"(?P<key>\b(?:ssl)?(?:password|passwd|pwd)=)(?P<pw>[^&\s'\"]*)", re.I)


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


def mask_urls_in(text: str) -> str:
    """Mask every password found anywhere in ``text``: URLs and ``password=`` parameters."""
    return _PASSWORD_PARAM.sub(lambda m: m.group("key") + "***", _URL.sub(_mask_userinfo, text))
