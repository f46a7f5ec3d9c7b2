"""Every gunitune setting, declared once: name, default, validator and doc.

The declaration is read by the Gunicorn config module (environment), the Flask
extension (``app.config``, with the environment as its default), the CLI and
the README's settings table (``gunitune settings --markdown``). Unlike
Gunicorn, which ignores unknown names, we reject unknown ``GUNITUNE_*`` keys:
a typo in a tuning knob otherwise silently changes nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, overload

from gunitune.core.errors import ConfigError

__all__ = ["PREFIX", "Setting", "Settings", "render_markdown"]

PREFIX = "GUNITUNE_"
T = TypeVar("T")
Parser = Callable[[object], T]
_AUTO = {"", "auto", "none"}
_OFF = {"", "off", "none"}


def _int_at_least(low: int) -> tuple[Parser[int], str]:
    def parse(raw: object) -> int:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
        if value < low:
            raise ValueError
        return value

    return parse, f"an integer >= {low}"


def _float_above(low: float) -> tuple[Parser[float], str]:
    def parse(raw: object) -> float:
        if isinstance(raw, bool):
            raise ValueError
        value = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
        if not value > low or value != value or value == float("inf"):
            raise ValueError
        return value

    return parse, f"a number > {low:g}"


def _auto(inner: tuple[Parser[T], str]) -> tuple[Parser[T | None], str]:
    parse_inner, allowed = inner

    def parse(raw: object) -> T | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _AUTO):
            return None
        return parse_inner(raw)

    return parse, f"{allowed}, or 'auto'"


def _off(inner: tuple[Parser[T], str]) -> tuple[Parser[T | None], str]:
    parse_inner, allowed = inner

    def parse(raw: object) -> T | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _OFF):
            return None
        return parse_inner(raw)

    return parse, f"{allowed}, or 'off'"


def _fraction() -> tuple[Parser[float], str]:
    def parse(raw: object) -> float:
        if isinstance(raw, bool):
            raise ValueError
        value = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
        if not 0 < value < 1:
            raise ValueError
        return value

    return parse, "a number between 0 and 1 (exclusive)"


def _choice(*choices: str) -> tuple[Parser[str], str]:
    def parse(raw: object) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError
        return value

    return parse, "one of " + ", ".join(choices)


def _path_or_off() -> tuple[Parser[str], str]:
    def parse(raw: object) -> str:
        value = "" if raw is None else str(raw).strip()
        if value and not value.startswith("/"):
            raise ValueError
        return value

    return parse, "a URL path starting with '/', or empty (off)"


def _text() -> tuple[Parser[str], str]:
    return (lambda raw: "" if raw is None else str(raw)), "any string"


class Setting(Generic[T]):
    """One declared setting; a descriptor on :class:`Settings` returning its value."""

    def __init__(self, kind: tuple[Parser[T], str], default: T, doc: str) -> None:
        self.parse_raw, self.allowed = kind
        self.default = default
        self.doc = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def key(self) -> str:
        """The environment / ``app.config`` key, e.g. ``GUNITUNE_POOL_SIZE``."""
        return PREFIX + self.name.upper()

    def parse(self, raw: object) -> T:
        """Validate ``raw``; raise :class:`ConfigError` naming key, value and what is allowed."""
        try:
            return self.parse_raw(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.key}={raw!r} is invalid: expected {self.allowed}"
            ) from None

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: Settings, owner: type) -> T: ...
    def __get__(self, obj: Settings | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        value: T = obj.values[self.name]
        return value


class Settings:
    """Validated gunitune settings; build with :meth:`from_sources`."""

    workers = Setting(
        _auto(_int_at_least(1)), None,
        "Gunicorn workers. Auto: usable CPUs (cgroup quota, affinity) + 1; "
        "WEB_CONCURRENCY is honoured when this is unset.",
    )
    pool_size = Setting(
        _int_at_least(0), 5,
        "SQLAlchemy pool_size the config module plans with before the app is loaded; "
        "workers follow the app's real engine once it is.",
    )
    max_overflow = Setting(
        _int_at_least(-1), 10, "SQLAlchemy max_overflow to plan with (-1: unlimited).",
    )
    pool_timeout = Setting(
        _float_above(0), 30.0, "SQLAlchemy pool_timeout to plan with, in seconds.",
    )
    burst = Setting(
        _int_at_least(1), 3000,
        "Concurrent connections the box must hold without SYN retries; sizes the listen backlog.",
    )
    timeout = Setting(
        _int_at_least(1), 30, "Gunicorn worker timeout (heartbeat), in seconds.",
    )
    budget_check = Setting(
        _choice("error", "warn", "off"), "error",
        "What to do when workers x connections per worker do not fit Postgres max_connections.",
    )
    green_check = Setting(
        _choice("error", "warn", "off"), "error",
        "What to do when the database driver does not yield to gevent at worker start.",
    )
    queue_timeout = Setting(
        _off(_float_above(0)), None,
        "Longest wait in a lane before a 503 + Retry-After; off (the default): a held "
        "request waits as long as it takes, as it would in the kernel's queue.",
    )
    max_held = Setting(
        _int_at_least(1), 5000,
        "Connections one worker holds (accepted, read and queued by lane; an idle keep-alive "
        "connection counts too); beyond it connections wait in the kernel's listen queue. "
        "Sets Gunicorn's worker_connections.",
    )
    fast_seconds = Setting(
        _float_above(0), 0.1,
        "A database route whose requests take at most this many seconds is fast: it is "
        "served ahead of slow ones (a slow route comes back under half of it).",
    )
    adaptive = Setting(
        _choice("on", "off"), "on",
        "on: each worker finds at run time how many queries the database serves well at once "
        "(at most its pool) and queues the rest; off: a worker runs as many as its pool holds.",
    )
    fast_share = Setting(
        _fraction(), 0.3,
        "Share of a worker's database slots guaranteed to fast routes; the slow lane borrows "
        "what they leave unused, and the other way round.",
    )
    retry_after = Setting(
        _auto(_int_at_least(1)), None,
        "Retry-After seconds on a 503; auto: estimated from the queue and recent latency.",
    )
    cpu_concurrency = Setting(
        _int_at_least(1), 1, "CPU-bound requests running at once per worker (the CPU lane).",
    )
    cpu_bound_ratio = Setting(
        _float_above(0), 0.5,
        "A route whose requests spend more than this fraction of wall time on CPU is CPU-bound.",
    )
    block_threshold = Setting(
        _float_above(0), 0.5,
        "Report a request that holds the event loop longer than this many seconds.",
    )
    pressure_interval = Setting(
        _float_above(0), 1.0,
        "Seconds between QueuePool pressure checks when idle, and between two "
        "publications of a worker's gauges when metrics are on.",
    )
    stats_path = Setting(
        _path_or_off(), "", "URL path of the JSON stats endpoint; empty: off.",
    )
    stats_token = Setting(
        _text(), "",
        "Bearer token for the stats and metrics endpoints; empty: loopback clients only.",
    )
    metrics_path = Setting(
        _path_or_off(), "",
        "URL path of the Prometheus metrics endpoint (all workers of the master, "
        "PROMETHEUS_MULTIPROC_DIR); empty: off.",
    )

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    @classmethod
    def declared(cls) -> list[Setting[Any]]:
        """All declared settings, in declaration order."""
        return [v for v in vars(cls).values() if isinstance(v, Setting)]

    @classmethod
    def keys(cls) -> list[str]:
        """All ``GUNITUNE_*`` keys."""
        return [s.key for s in cls.declared()]

    @classmethod
    def from_sources(cls, *sources: Mapping[str, Any]) -> Settings:
        """Build from mappings of ``GUNITUNE_*`` keys, the first mapping that has a key wins.

        Unknown ``GUNITUNE_*`` keys in any source raise :class:`ConfigError`
        with the closest known name.
        """
        for source in sources:
            reject_unknown(source)
        values: dict[str, Any] = {}
        for setting in cls.declared():
            raw = next((s[setting.key] for s in sources if setting.key in s), None)
            values[setting.name] = setting.default if raw is None else setting.parse(raw)
        return cls(values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values replaced (validated like any other source)."""
        values = dict(self.values)
        declared = {s.name: s for s in self.declared()}
        for name, raw in changes.items():
            if name not in declared:
                close = difflib.get_close_matches(name, list(declared), n=1)
                hint = f"did you mean {close[0]}?" if close else "see `gunitune settings`"
                raise ConfigError(f"{name}={raw!r} is not a gunitune setting: {hint}")
            values[name] = declared[name].parse(raw)
        return Settings(values)

    def as_dict(self) -> dict[str, Any]:
        """Values keyed by setting name."""
        return dict(self.values)


def reject_unknown(source: Mapping[str, Any] | Iterable[str]) -> None:
    """Raise :class:`ConfigError` for the first unknown ``GUNITUNE_*`` key."""
    known = Settings.keys()
    for key in source:
        if key.startswith(PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "run `gunitune settings` for the list"
            raise ConfigError(f"{key} is not a gunitune setting: {hint}")


def render_markdown() -> str:
    """The README's settings table, generated from the declarations."""
    lines = ["| Key | Default | Allowed | What it does |", "| --- | --- | --- | --- |"]
    for s in Settings.declared():
        none_means = "off" if "'off'" in s.allowed else "auto"
        default = none_means if s.default is None else repr(s.default)
        if s.default == "":
            default = "(empty)"
        lines.append(f"| `{s.key}` | `{default}` | {s.allowed} | {s.doc} |")
    return "\n".join(lines) + "\n"
