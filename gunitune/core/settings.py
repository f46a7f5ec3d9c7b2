"""Every gunitune setting, declared once: name, default, validator and doc.

The declaration is read by the Gunicorn config module (environment), the Flask
extension (``app.config``, with the environment as its default), the CLI and
the README's settings table (``gunitune settings --markdown``). Unlike
Gunicorn, which ignores unknown names, we reject unknown ``GUNITUNE_*`` keys:
a typo in a tuning knob otherwise silently changes nothing. Every number is
bounded above as well as below, each bound explained in its setting's doc: a
value that parses is one that works. Errors never print a secret setting, and
mask any URL password in a value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar, overload

from gunitune.core.errors import ConfigError
from gunitune.core.kinds import Kind, auto, choice, fraction, int_range, number_range, off, token
from gunitune.core.kinds import path_or_off as path
from gunitune.core.urls import mask_urls_in

__all__ = [
    "DAY", "HOUR", "MAX_BACKENDS", "MAX_FDS", "MAX_WORKERS", "MIN_TIMEOUT", "PREFIX",
    "Setting", "Settings", "render_markdown",
]

PREFIX = "GUNITUNE_"
T = TypeVar("T")

# Upper bounds shared with the code they protect; each setting's doc says why.
MAX_WORKERS = 256
"""Seats on the workers' load board (:mod:`gunitune._board`): one more cannot boot."""
MAX_BACKENDS = 262_143
"""PostgreSQL's hard ceiling on connections (``MAX_BACKENDS``, 2^18 - 1)."""
MAX_FDS = 1_048_576
"""Linux's default per-process file descriptor ceiling (``fs.nr_open``, 2^20)."""
MIN_TIMEOUT = 5
"""Smallest worker timeout that does not kill healthy workers (see ``timeout``)."""
HOUR = 3600
DAY = 86_400


_LONGEST_SHOWN = 80


def show_value(raw: object, *, secret: bool = False) -> str:
    """``raw`` as an error message may print it: one line, short, with no password in it."""
    if secret:
        # Not even a prefix: a token's length is all a log may learn of it.
        return "<hidden>" if not isinstance(raw, str) else f"<hidden, {len(raw)} characters>"
    shown = mask_urls_in(repr(raw))  # repr escapes newlines: the message stays one line
    if len(shown) > _LONGEST_SHOWN:
        shown = f"{shown[:_LONGEST_SHOWN - 20]}... ({len(shown)} characters)"
    return shown


class Setting(Generic[T]):
    """One declared setting; a descriptor on :class:`Settings` returning its value."""

    def __init__(self, kind: Kind[T], default: T, doc: str, *, secret: bool = False) -> None:
        self.parse_raw, self.allowed = kind
        self.default = default
        self.doc = doc
        self.secret = secret
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
        except (TypeError, ValueError, OverflowError):
            shown = show_value(raw, secret=self.secret)
            raise ConfigError(
                f"{self.key}={shown} is invalid: expected {self.allowed}", key=self.key
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


_CHECK = choice("error", "warn", "off")


class Settings:
    """Validated gunitune settings; build with :meth:`from_sources`."""

    workers = Setting(
        auto(int_range(1, MAX_WORKERS)), None,
        "Gunicorn workers. Auto: usable CPUs (cgroup quota, affinity) + 1; "
        "WEB_CONCURRENCY is honoured when this is unset. At most 256: the workers balance "
        "on a load board of 256 seats, and 256 pools already exceed what one Postgres serves.",
    )
    pool_size = Setting(
        int_range(0, MAX_BACKENDS), 5,
        "SQLAlchemy pool_size the config module plans with before the app is loaded; "
        "workers follow the app's real engine once it is. At most 262143, the most "
        "connections PostgreSQL can have (MAX_BACKENDS).",
    )
    max_overflow = Setting(
        int_range(-1, MAX_BACKENDS), 10,
        "SQLAlchemy max_overflow to plan with (-1: unlimited); at most 262143, as pool_size.",
    )
    pool = Setting(
        choice("auto", "app"), "app",
        "app: keep the pools the app's engines have. auto: each worker's pool_size + "
        "max_overflow is its share of the Postgres budget the master reads at start, "
        "(max_connections - reserved - other clients - headroom) / (hosts x workers); "
        "a pool the app set explicitly is kept (and logged).",
    )
    hosts = Setting(
        int_range(1, MAX_BACKENDS), 1,
        "Hosts (Gunicorn masters) sharing one database with the same settings; their "
        "workers split its connection budget. At most 262143 (MAX_BACKENDS): each host "
        "needs one connection.",
    )
    pool_timeout = Setting(
        number_range(0, HOUR, include_low=False), 30.0,
        "SQLAlchemy pool_timeout to plan with, in seconds; at most an hour, as queue_timeout.",
    )
    burst = Setting(
        int_range(1, MAX_FDS), 3000,
        "Concurrent connections the box must hold without SYN retries; sizes the listen "
        "backlog. At most 1048576: each queued connection is a kernel socket (kilobytes), "
        "and listen() fails on anything above 2^31 - 1.",
    )
    timeout = Setting(
        int_range(MIN_TIMEOUT, DAY), 30,
        "Gunicorn worker timeout (heartbeat), in seconds; graceful_timeout follows it. "
        "At least 5: the gevent loop touches the heartbeat once a second and the arbiter "
        "looks once a second, so a healthy worker's heartbeat is up to 2 s old, more while "
        "a request holds the loop or the app boots; below 5 s healthy workers get killed. "
        "At most a day: a stuck worker is found only after this long.",
    )
    budget_check = Setting(
        _CHECK, "error",
        "What to do when workers x connections per worker do not fit Postgres max_connections.",
    )
    green_check = Setting(
        _CHECK, "error",
        "What to do when the database driver does not yield to gevent at worker start.",
    )
    queue_timeout = Setting(
        off(number_range(0, HOUR, include_low=False)), None,
        "Longest wait in a lane before a 503 + Retry-After; off (the default): a held "
        "request waits as long as it takes, as it would in the kernel's queue. At most an "
        "hour: clients and proxies have given up long before.",
    )
    outage_wait = Setting(
        number_range(0, HOUR, include_low=False), 15.0,
        "Longest wait for a database that is away (restarting, unreachable: its circuit is "
        "open) before a 503 + Retry-After; requests queued meanwhile run once it is back. "
        "GUNITUNE_QUEUE_TIMEOUT, when shorter, still applies. At most an hour, as "
        "queue_timeout.",
    )
    max_held = Setting(
        int_range(1, MAX_FDS), 5000,
        "Connections one worker holds (accepted, read and queued by lane; an idle keep-alive "
        "connection counts too); beyond it connections wait in the kernel's listen queue. "
        "Sets Gunicorn's worker_connections. At most 1048576: each is a file descriptor, "
        "and Linux caps a process at that many (fs.nr_open).",
    )
    fast_seconds = Setting(
        number_range(0, 60, include_low=False), 0.1,
        "A database route whose requests take at most this many seconds is fast: it is "
        "served ahead of slow ones (a slow route comes back under half of it). At most 60: "
        "above it every route is fast and the lanes are one.",
    )
    adaptive = Setting(
        choice("on", "off"), "on",
        "on: each worker finds at run time how many queries the database serves well at once "
        "(at most its pool) and queues the rest; off: a worker runs as many as its pool holds.",
    )
    fast_share = Setting(
        fraction(), 0.3,
        "Share of a worker's database slots guaranteed to fast routes; the slow lane borrows "
        "what they leave unused, and the other way round.",
    )
    retry_after = Setting(
        auto(int_range(1, HOUR)), None,
        "Retry-After seconds on a 503; auto: estimated from the queue and recent latency. "
        "At most an hour: clients that obey stay away long after the overload ended.",
    )
    cpu_concurrency = Setting(
        int_range(1, 1024), 1,
        "CPU-bound requests running at once per worker (the CPU lane). At most 1024: a "
        "worker has one thread, so more only interleaves CPU work and slows each request.",
    )
    cpu_bound_ratio = Setting(
        number_range(0, 1, include_low=False), 0.5,
        "A route whose requests spend more than this fraction of wall time on CPU is "
        "CPU-bound; 1: no route is.",
    )
    block_threshold = Setting(
        number_range(0.01, 60), 0.5,
        "Report a request that holds the event loop longer than this many seconds. At least "
        "0.01: shorter runs are ordinary request work and a report each floods the log.",
    )
    pressure_interval = Setting(
        number_range(0.01, 60), 1.0,
        "Seconds between QueuePool pressure checks when idle, and between two publications "
        "of a worker's gauges when metrics are on. At least 0.01: each check reads every "
        "pool, and more often spins a core; at most 60, or pressure goes unseen.",
    )
    stats_path = Setting(
        path(), "",
        "URL path of the JSON stats endpoint; empty: off. Must not be the path of one of the "
        "app's routes: gunitune refuses it (at init_app, worker start or first request) "
        "rather than hide one of the two.",
    )
    stats_token = Setting(
        token(), "",
        "Bearer token for the stats and metrics endpoints; empty: loopback clients only (see "
        "GUNITUNE_STATS_LOOPBACK). Never printed, not even in an error.",
        secret=True,
    )
    stats_loopback = Setting(
        choice("on", "off"), "on",
        "on: without a token, a loopback client that sends no forwarding header reads the "
        "stats and metrics. Turn off behind a proxy on the same host that adds no forwarding "
        "header (HAProxy in TCP mode, a sidecar): every client then looks local.",
    )
    metrics_path = Setting(
        path(), "",
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
        _check_together(values)
        return cls(values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values replaced (validated like any other source)."""
        values = dict(self.values)
        declared = {s.name: s for s in self.declared()}
        for name, raw in changes.items():
            if name not in declared:
                close = difflib.get_close_matches(name, list(declared), n=1)
                hint = f"did you mean {close[0]}?" if close else "see `gunitune settings`"
                raise ConfigError(f"{name}={show_value(raw)} is not a gunitune setting: {hint}")
            values[name] = declared[name].parse(raw)
        _check_together(values)
        return Settings(values)

    def as_dict(self) -> dict[str, Any]:
        """Values keyed by setting name."""
        return dict(self.values)


def _check_together(values: Mapping[str, Any]) -> None:
    """Settings each valid alone but not together."""
    if values["stats_path"] and values["stats_loopback"] == "off" and not values["stats_token"]:
        # Nobody could read the endpoint: surely not what was meant.
        raise ConfigError(
            f"GUNITUNE_STATS_LOOPBACK='off' without GUNITUNE_STATS_TOKEN locks everyone out of "
            f"GUNITUNE_STATS_PATH={values['stats_path']!r}: set a token, or empty the path",
            key="GUNITUNE_STATS_LOOPBACK",
        )


def reject_unknown(source: Mapping[str, Any] | Iterable[str]) -> None:
    """Raise :class:`ConfigError` for the first unknown ``GUNITUNE_*`` key."""
    known = Settings.keys()
    for key in source:
        if isinstance(key, str) and key.startswith(PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "run `gunitune settings` for the list"
            raise ConfigError(f"{key} is not a gunitune setting: {hint}", key=key)


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
