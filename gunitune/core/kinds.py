"""What a setting's value may be: parsers paired with the sentence that says so.

A *kind* is ``(parse, allowed)``: ``parse`` turns a raw value (a string from
the environment, or any object from ``app.config``) into the typed value or
raises ``ValueError`` / ``TypeError`` / ``OverflowError``; ``allowed`` is the
phrase :class:`gunitune.core.settings.Setting` puts in its one-line error.
Every number has an upper bound: a setting that parses is one that works.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "Kind",
    "Parser",
    "auto",
    "choice",
    "fraction",
    "int_range",
    "number_range",
    "off",
    "path_or_off",
    "token",
]

T = TypeVar("T")
Parser = Callable[[object], T]
Kind = tuple[Parser[T], str]
_AUTO = {"", "auto", "none"}
_OFF = {"", "off", "none"}
# Characters a Flask rule treats specially ('<' starts a converter) or that
# never reach a view (query, fragment), and white space, which no client sends.
_PATH_REFUSED = re.compile(r"[<>?#\s]")


def _number(raw: object) -> float:
    # bool subclasses int: True for a timeout is a bug, not 1.
    if isinstance(raw, bool):
        raise TypeError
    # float(10**400) raises OverflowError; float("1e400") is inf, refused below.
    value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
    if not math.isfinite(value):
        raise ValueError
    return value


def int_range(low: int, high: int) -> Kind[int]:
    """An integer from ``low`` to ``high``; a float (``2.0``) or a bool is refused."""

    def parse(raw: object) -> int:
        if isinstance(raw, bool | float):
            raise TypeError
        value = raw if isinstance(raw, int) else int(str(raw).strip())
        if not low <= value <= high:
            raise ValueError
        return value

    return parse, f"an integer from {low} to {high}"


def number_range(low: float, high: float, *, include_low: bool = True) -> Kind[float]:
    """A finite number from ``low`` (excluded unless ``include_low``) to ``high``."""

    def parse(raw: object) -> float:
        value = _number(raw)
        if not (low <= value if include_low else low < value) or value > high:
            raise ValueError
        return value

    if include_low:
        return parse, f"a number from {low:g} to {high:g}"
    return parse, f"a number > {low:g} and <= {high:g}"


def fraction() -> Kind[float]:
    """A number strictly between 0 and 1."""

    def parse(raw: object) -> float:
        value = _number(raw)
        if not 0 < value < 1:
            raise ValueError
        return value

    return parse, "a number between 0 and 1 (exclusive)"


def auto(inner: Kind[T]) -> Kind[T | None]:
    """``inner``, or ``auto`` / empty / ``None`` for "decide for me" (``None``)."""
    parse_inner, allowed = inner

    def parse(raw: object) -> T | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _AUTO):
            return None
        return parse_inner(raw)

    return parse, f"{allowed}, or 'auto'"


def off(inner: Kind[T]) -> Kind[T | None]:
    """``inner``, or ``off`` / empty / ``None`` for "no limit" (``None``)."""
    parse_inner, allowed = inner

    def parse(raw: object) -> T | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _OFF):
            return None
        return parse_inner(raw)

    return parse, f"{allowed}, or 'off'"


def choice(*choices: str) -> Kind[str]:
    """One of ``choices``, any case, surrounding white space ignored."""

    def parse(raw: object) -> str:
        if not isinstance(raw, str):  # str(True) would read as 'true'
            raise TypeError
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse, "one of " + ", ".join(choices)


def path_or_off() -> Kind[str]:
    """A plain URL path (no converter, query or space), or empty for off."""

    def parse(raw: object) -> str:
        if raw is not None and not isinstance(raw, str):
            raise TypeError
        value = (raw or "").strip()
        if value and (not value.startswith("/") or _PATH_REFUSED.search(value)):
            raise ValueError
        return value

    return parse, "a URL path starting with '/' (no '<', '>', '?', '#' or spaces), or empty (off)"


def token() -> Kind[str]:
    """A bearer token as a client can send it: printable ASCII, no white space at either end."""

    def parse(raw: object) -> str:
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise TypeError
        # The view strips what the client sends, and a header is Latin-1: a
        # token with edge spaces or non-ASCII could never match.
        if raw != raw.strip() or not all(" " <= c <= "~" for c in raw):
            raise ValueError
        return raw

    return parse, "printable ASCII without spaces at either end, or empty (no token)"
