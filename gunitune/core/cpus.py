"""How many CPUs this process may really use, and the kernel's listen-queue cap.

``os.cpu_count()`` reports the host's CPUs, which is wrong inside a container
or a systemd slice with a CPU quota: a pod limited to 2 CPUs on a 64-CPU node
would get 65 gevent workers fighting over 2 CPUs (and 65 connection pools). So
we take the smallest of the cgroup quota and the CPU affinity mask, and only
fall back to the host count when neither is known.

Everything reads below a ``root`` directory so tests can fake ``/sys`` and
``/proc`` trees in a temporary directory.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CpuCount", "read_somaxconn", "usable_cpus"]

_CGROUP_MOUNT = PurePosixPath("sys/fs/cgroup")
# cgroup v1 mounts the cpu controller under one of these names depending on
# the distribution (often ``cpu`` is a symlink to ``cpu,cpuacct``).
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuCount:
    """A CPU count and where it came from.

    ``source`` is human-readable, e.g. ``"cgroup v2 cpu.max (200000/100000)"``,
    ``"sched_getaffinity"``, ``"psutil"`` or ``"os.cpu_count"``; it is shown
    next to the derived worker count so operators can tell why it is what it is.
    """

    count: int
    source: str


def _read_text(path: Path) -> str | None:
    """Return the stripped file content, or None if it cannot be read."""
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _quota_to_cpus(quota: int, period: int) -> int | None:
    """CPUs granted by ``quota`` microseconds per ``period``; None if unlimited/invalid."""
    if quota <= 0 or period <= 0:
        return None
    # A 1.5 CPU quota can still keep two workers busy part of the time; round up.
    return max(1, math.ceil(quota / period))


def _own_cgroup_paths(root: Path) -> tuple[str | None, str | None]:
    """Return (v2 path, v1 cpu-controller path) from ``<root>/proc/self/cgroup``."""
    text = _read_text(root / "proc/self/cgroup")
    v2: str | None = None
    v1: str | None = None
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _dirs_up(base: Path, cgroup_path: str | None) -> Iterator[tuple[Path, str]]:
    """Yield ``(directory, cgroup path)`` from the process's cgroup up to ``base``.

    A quota on any ancestor caps every descendant, so all levels count. Paths
    that do not exist (e.g. the host path seen from inside a container whose
    own cgroup is mounted at ``base``) are simply skipped by the readers.
    """
    parts = [p for p in PurePosixPath(cgroup_path or "/").parts if p not in ("/", ".", "..")]
    for depth in range(len(parts), -1, -1):
        rel = "/".join(parts[:depth])
        yield (base / rel if rel else base), "/" + rel


def _where(cgroup_path: str) -> str:
    return "" if cgroup_path == "/" else f" in {cgroup_path}"


def _cgroup_v2_limits(root: Path, own_path: str | None) -> Iterator[CpuCount]:
    base = root / _CGROUP_MOUNT
    for directory, path in _dirs_up(base, own_path):
        text = _read_text(directory / "cpu.max")
        fields = (text or "").split()
        if len(fields) != 2 or fields[0] == "max":
            continue
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        count = _quota_to_cpus(quota, period)
        if count is not None:
            yield CpuCount(count, f"cgroup v2 cpu.max ({quota}/{period}){_where(path)}")


def _cgroup_v1_limits(root: Path, own_path: str | None) -> Iterator[CpuCount]:
    for name in _V1_CPU_DIRS:
        base = root / _CGROUP_MOUNT / name
        for directory, path in _dirs_up(base, own_path):
            quota_text = _read_text(directory / "cpu.cfs_quota_us")
            period_text = _read_text(directory / "cpu.cfs_period_us")
            if quota_text is None or period_text is None:
                continue
            try:
                quota, period = int(quota_text), int(period_text)
            except ValueError:
                continue
            count = _quota_to_cpus(quota, period)  # -1 means unlimited -> None
            if count is not None:
                source = f"cgroup v1 cpu.cfs_quota_us ({quota}/{period}){_where(path)}"
                yield CpuCount(count, source)


def _cgroup_limit(root: Path) -> CpuCount | None:
    """The tightest cgroup CPU quota visible to this process, if any."""
    v2_path, v1_path = _own_cgroup_paths(root)
    # Hybrid hosts can expose both hierarchies; whichever is tighter wins.
    found = [*_cgroup_v2_limits(root, v2_path), *_cgroup_v1_limits(root, v1_path)]
    return min(found, key=lambda c: c.count) if found else None


def _default_affinity() -> int | None:
    getaffinity = getattr(os, "sched_getaffinity", None)  # absent on macOS/Windows
    if getaffinity is None:
        return None
    try:
        return len(getaffinity(0))
    except OSError:
        return None


def _default_cpu_count() -> int | None:
    try:
        # Imported lazily and untyped: psutil is optional for this pure module.
        psutil = importlib.import_module("psutil")
    except ImportError:
        return None
    value = psutil.cpu_count(logical=True)
    return value if isinstance(value, int) else None


def _positive(value: int | None) -> int | None:
    return value if isinstance(value, int) and value >= 1 else None


def usable_cpus(
    root: Path = Path("/"),
    affinity: Callable[[], int | None] | None = None,
    cpu_count: Callable[[], int | None] | None = None,
) -> CpuCount:
    """Return how many CPUs this process can actually keep busy, with the reason.

    The result is the minimum of the cgroup CPU quota (v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, on the process's own cgroup and
    its ancestors, rounded up) and the CPU affinity mask. When the affinity is
    unknown the host count is used instead: ``psutil.cpu_count(logical=True)``,
    then ``os.cpu_count()``, then 1.

    Args:
        root: filesystem root holding ``sys/fs/cgroup`` and ``proc`` (tests pass
            a fake tree).
        affinity: replaces ``len(os.sched_getaffinity(0))``.
        cpu_count: replaces ``psutil.cpu_count(logical=True)``.
    """
    quota = _cgroup_limit(root)

    machine: CpuCount | None = None
    n = _positive((affinity or _default_affinity)())
    if n is not None:
        machine = CpuCount(n, "sched_getaffinity")
    else:
        n = _positive((cpu_count or _default_cpu_count)())
        if n is not None:
            machine = CpuCount(n, "psutil")
        else:
            n = _positive(os.cpu_count())
            machine = CpuCount(n, "os.cpu_count") if n is not None else None

    if quota is not None and (machine is None or quota.count <= machine.count):
        return quota  # on a tie the quota is the more telling reason
    if machine is not None:
        return machine
    return CpuCount(1, "fallback (no CPU count available)")


def read_somaxconn(root: Path = Path("/")) -> int | None:
    """Return ``net.core.somaxconn`` (the cap on any listen backlog), or None.

    None means unknown (not Linux, or ``/proc`` not readable), not "no cap".
    """
    text = _read_text(root / "proc/sys/net/core/somaxconn")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
