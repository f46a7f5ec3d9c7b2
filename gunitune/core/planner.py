"""Derive Gunicorn, SQLAlchemy and PostgreSQL numbers from CPUs and pool size.

The rules, each explained in :attr:`Plan.reasons`:

* ``workers = cpus + 1``: gevent workers are single-threaded, so one per CPU
  plus one to cover a worker blocked in CPU-bound work or GC.
* ``worker_connections = max_held``: a gunitune worker holds a storm in user
  space, read, routed and queued by lane, so a health check is answered at once
  and nothing waits in the kernel's FIFO listen queue; ``max_held`` bounds the
  memory that costs. What runs at once is the pool's ``pool_size + max_overflow``.
* ``total_db_connections = workers * (pool_size + max_overflow)``: every worker
  has its own pool.
* ``recommended_max_connections``: that total plus ``headroom`` (20% by
  default, for migrations, cron jobs, psql sessions and rolling restarts where
  old and new workers overlap), plus the reserved slots, rounded up to a
  multiple of 50 so the figure reads as a deliberate setting. 32 CPUs with
  5+10 gives 33 * 15 = 495 -> 495 * 1.2 + 3 = 597 -> 600.
* ``backlog = max(2048, burst, somaxconn)``: the listen queue must hold the declared burst
  of concurrent connections; 2048 is Gunicorn's default and never lowered.
  The kernel silently clips it to ``net.core.somaxconn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from gunitune.core.errors import ConfigError
from gunitune.core.settings import MAX_WORKERS

__all__ = [
    "DEFAULT_BACKLOG",
    "HEADROOM_RANGE",
    "MAX_CONNECTIONS_STEP",
    "MINIMUMS",
    "UNLIMITED_OVERFLOW_EXTRA",
    "Plan",
    "make_plan",
    "require_int",
    "require_number",
    "round_up",
]

DEFAULT_BACKLOG = 2048
"""Gunicorn's own default ``backlog``; the plan never goes below it."""

MAX_CONNECTIONS_STEP = 50
"""``max_connections`` recommendations are rounded up to a multiple of this."""

UNLIMITED_OVERFLOW_EXTRA = 10
"""Overflow assumed per worker when SQLAlchemy's ``max_overflow`` is -1 (unlimited)."""

MINIMUMS: Mapping[str, int] = MappingProxyType(
    {
        "cpus": 1,
        "pool_size": 0,
        "max_overflow": -1,  # SQLAlchemy's "unlimited"
        "workers": 1,
        "burst": 1,
        "max_held": 1,
        "timeout": 1,  # Gunicorn's 0 disables the heartbeat; never wanted under overload
        "somaxconn": 0,
        "reserved_connections": 0,
    }
)
"""Smallest allowed value of each integer input of :func:`make_plan` (shared with the CLI)."""

HEADROOM_RANGE = (0.0, 10.0)
"""Allowed ``headroom`` fraction: 0 (none) to 10 (eleven times the app's need)."""


def require_int(key: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise :class:`ConfigError`.

    ``bool`` is refused although it subclasses ``int``: ``workers=True`` is a bug.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is invalid: expected an integer >= {minimum}")
    return value


def require_number(key: str, value: object, minimum: float, maximum: float) -> float:
    """Return ``value`` as float if it is a finite number in range, else raise ConfigError."""
    # NaN fails both comparisons, so it is refused along with the infinities.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= maximum
    ):
        raise ConfigError(
            f"{key}={value!r} is invalid: expected a number between {minimum:g} and {maximum:g}"
        )
    return float(value)


def round_up(value: float, step: int = MAX_CONNECTIONS_STEP) -> int:
    """Round ``value`` up to the next multiple of ``step`` (``597 -> 600``)."""
    # round() first so 495 * 1.2 = 594.0000000000001 does not become 595.
    return math.ceil(round(value, 6) / step) * step


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class Plan:
    """Every setting gunitune derives, with a one-line reason for each derived value.

    Build it with :func:`make_plan`; use :meth:`as_dict` for JSON and
    :meth:`advice` for the lines to show an operator.
    """

    cpus: int
    cpu_source: str
    workers: int
    worker_connections: int
    pool_size: int
    max_overflow: int
    connections_per_worker: int
    total_db_connections: int
    backlog: int
    somaxconn: int | None
    backlog_clipped: bool
    timeout: int
    graceful_timeout: int
    burst: int
    recommended_max_connections: int
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of every field (``reasons`` copied)."""
        return asdict(self)

    def advice(self) -> list[str]:
        """Return human-readable lines saying what to set where."""
        lines = [
            f"gunicorn: --worker-class gevent --workers {self.workers}"
            f" --worker-connections {self.worker_connections} --backlog {self.backlog}"
            f" --timeout {self.timeout} --graceful-timeout {self.graceful_timeout}",
            f"SQLAlchemy: pool_size={self.pool_size}, max_overflow={self.max_overflow}"
            f" ({self.connections_per_worker} connections per worker,"
            f" {self.total_db_connections} in total)",
            f"set max_connections >= {self.recommended_max_connections} in postgresql.conf"
            f" ({self.reasons['recommended_max_connections']}); it needs a restart",
        ]
        if self.max_overflow == -1:
            lines.append(
                f"max_overflow=-1 lets each pool grow without bound; prefer a fixed value"
                f" such as max_overflow={UNLIMITED_OVERFLOW_EXTRA}"
            )
        wanted = _next_power_of_two(self.backlog)
        if self.backlog_clipped:
            lines.append(
                f"net.core.somaxconn={self.somaxconn} clips backlog {self.backlog} to"
                f" {self.somaxconn}: run `sysctl -w net.core.somaxconn={wanted}` and persist"
                f" it in /etc/sysctl.d/ (in a container: --sysctl net.core.somaxconn={wanted})"
            )
        elif self.somaxconn is None:
            lines.append(
                f"net.core.somaxconn is unknown here: make sure it is >= {self.backlog}"
                f" on the server, e.g. `sysctl -w net.core.somaxconn={wanted}`"
            )
        return lines


def make_plan(
    *,
    cpus: int,
    pool_size: int = 5,
    max_overflow: int = 10,
    workers: int | None = None,
    burst: int = 3000,
    max_held: int = 5000,
    timeout: int = 30,
    somaxconn: int | None = None,
    reserved_connections: int = 3,
    headroom: float = 0.2,
    cpu_source: str = "given",
) -> Plan:
    """Derive a :class:`Plan`; raise :class:`ConfigError` naming any bad input.

    Args:
        cpus: usable CPUs (see :func:`gunitune.core.cpus.usable_cpus`).
        pool_size: SQLAlchemy ``pool_size`` per worker.
        max_overflow: SQLAlchemy ``max_overflow`` per worker; -1 means unlimited.
        workers: force the worker count instead of ``cpus + 1``.
        burst: concurrent connections the listen queue must absorb.
        max_held: connections one worker holds in user space (``worker_connections``).
        timeout: Gunicorn worker ``timeout`` in seconds.
        somaxconn: the kernel's ``net.core.somaxconn``, None if unknown.
        reserved_connections: Postgres slots unavailable to the app
            (``superuser_reserved_connections`` + ``reserved_connections``).
        headroom: extra fraction of connections for other clients and restarts.
        cpu_source: where ``cpus`` came from, repeated in the reasons.
    """
    cpus = require_int("cpus", cpus, MINIMUMS["cpus"])
    pool_size = require_int("pool_size", pool_size, MINIMUMS["pool_size"])
    max_overflow = require_int("max_overflow", max_overflow, MINIMUMS["max_overflow"])
    if workers is not None:
        workers = require_int("workers", workers, MINIMUMS["workers"])
    burst = require_int("burst", burst, MINIMUMS["burst"])
    max_held = require_int("max_held", max_held, MINIMUMS["max_held"])
    timeout = require_int("timeout", timeout, MINIMUMS["timeout"])
    if somaxconn is not None:
        somaxconn = require_int("somaxconn", somaxconn, MINIMUMS["somaxconn"])
    reserved_connections = require_int(
        "reserved_connections", reserved_connections, MINIMUMS["reserved_connections"]
    )
    headroom = require_number("headroom", headroom, *HEADROOM_RANGE)
    if not isinstance(cpu_source, str):
        raise ConfigError(f"cpu_source={cpu_source!r} is invalid: expected a string")

    reasons: dict[str, str] = {}
    cpu_word = "CPU" if cpus == 1 else "CPUs"
    if workers is None:
        workers = cpus + 1
        reasons["workers"] = (
            f"{cpus} usable {cpu_word} ({cpu_source}) + 1: one single-threaded gevent worker"
            f" per CPU, plus one to cover a worker stuck in CPU work"
        )
        if workers > MAX_WORKERS:
            # The load board has a seat per worker; a worker without one cannot boot.
            workers = MAX_WORKERS
            reasons["workers"] = (
                f"{cpus} usable {cpu_word} ({cpu_source}) would give {cpus + 1}; capped at"
                f" {MAX_WORKERS}, the seats of the workers' load board"
            )
    else:
        reasons["workers"] = f"given explicitly ({cpus} usable {cpu_word} would suggest {cpus + 1})"

    if max_overflow == -1:
        per_worker = pool_size + UNLIMITED_OVERFLOW_EXTRA
        reasons["connections_per_worker"] = (
            f"max_overflow=-1 is unlimited, so assume pool_size + {UNLIMITED_OVERFLOW_EXTRA}"
            f" = {per_worker}; capping database work also caps the pool's growth"
        )
    else:
        per_worker = pool_size + max_overflow
        if per_worker < 1:
            raise ConfigError(
                f"pool_size + max_overflow={per_worker} is invalid: expected at least 1"
                f" (pool_size={pool_size}, max_overflow={max_overflow}); a worker needs"
                f" one database connection"
            )
        reasons["connections_per_worker"] = (
            f"pool_size {pool_size} + max_overflow {max_overflow}: each worker has its own"
            f" pool, and never runs more database work than it can serve at once"
        )
    reasons["worker_connections"] = (
        f"GUNITUNE_MAX_HELD {max_held}: connections a worker holds, queued by lane in user"
        f" space instead of the kernel's FIFO listen queue"
    )
    total = workers * per_worker
    reasons["total_db_connections"] = f"{workers} workers x {per_worker} connections"

    backlog = max(DEFAULT_BACKLOG, burst)
    clipped = somaxconn is not None and somaxconn < backlog
    reasons["backlog"] = (
        f"holds the declared burst of {burst} connections"
        if burst >= DEFAULT_BACKLOG
        else f"burst {burst} fits in Gunicorn's default of {DEFAULT_BACKLOG}"
    )
    if somaxconn is not None and somaxconn > backlog:
        # A deeper queue costs nothing until used, and absorbs what arrives
        # faster than the workers accept (they hold the rest in user space).
        reasons["backlog"] = (
            f"net.core.somaxconn {somaxconn}, the deepest queue the kernel allows here"
            f" (>= the declared burst of {burst}): a SYN flood faster than the workers"
            f" accept waits there instead of being dropped"
        )
        backlog = somaxconn
    if somaxconn is None:
        reasons["somaxconn"] = "unknown here: check it on the server"
    elif clipped:
        reasons["somaxconn"] = f"{somaxconn} < backlog {backlog}: the kernel clips the queue"
    else:
        reasons["somaxconn"] = f"{somaxconn} >= backlog {backlog}: not clipped"

    graceful_timeout = timeout
    reasons["graceful_timeout"] = (
        "same as timeout: a restart lets in-flight requests finish, no longer"
    )

    recommended = round_up(total * (1 + headroom) + reserved_connections)
    reasons["recommended_max_connections"] = (
        f"{total} + {headroom * 100:g}% headroom + {reserved_connections} reserved slots,"
        f" rounded up to a multiple of {MAX_CONNECTIONS_STEP}"
    )

    return Plan(
        cpus=cpus,
        cpu_source=cpu_source,
        workers=workers,
        worker_connections=max_held,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connections_per_worker=per_worker,
        total_db_connections=total,
        backlog=backlog,
        somaxconn=somaxconn,
        backlog_clipped=clipped,
        timeout=timeout,
        graceful_timeout=graceful_timeout,
        burst=burst,
        recommended_max_connections=recommended,
        reasons=reasons,
    )
