"""The directory prometheus_client's multiprocess mode writes to, seen from the master.

``gunitune.conf`` calls :func:`prepare` in ``on_starting`` and has a ``child_exit``
hook calling :func:`fold_dead`. A Gunicorn config of your own (not importing
``gunitune.conf``) with ``GUNITUNE_METRICS_PATH`` needs the same two hooks::

    from gunitune import multiproc
    on_starting = multiproc.on_starting
    child_exit = multiproc.child_exit

Gunicorn's master makes it (or cleans the user's) before the workers fork, so
every worker inherits ``PROMETHEUS_MULTIPROC_DIR``; when a worker exits, it drops
the worker's live gauges and folds its counters and histograms into one archive
file per type (:mod:`gunitune.core.metrics` says why). Scrapes read the files
under a shared lock, the fold replaces them under an exclusive one: a scrape
sees a dead worker's counts exactly once, before the fold or after it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from gunitune.core.metrics import ARCHIVE, ARCHIVED_TYPES, sum_values

__all__ = [
    "ENV",
    "LOCK_NAME",
    "child_exit",
    "clean",
    "fold_dead",
    "locked",
    "multiproc_dir",
    "on_starting",
    "prepare",
]

log = structlog.get_logger("gunitune")
ENV = "PROMETHEUS_MULTIPROC_DIR"
_OLD_ENV = "prometheus_multiproc_dir"  # prometheus_client still honours the old name
# Made by a worker serving gunitune's metrics endpoint: its presence says every
# reader of this directory takes the lock, so the master may fold files in it.
LOCK_NAME = "gunitune-scrape.lock"


def multiproc_dir(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The multiprocess directory in ``environ`` (default: this process's), if any."""
    env = os.environ if environ is None else environ
    return env.get(ENV) or env.get(_OLD_ENV) or None


def prepare(environ: MutableMapping[str, str], metrics_on: bool) -> tuple[str | None, bool]:
    """Master, before fork: (the directory, whether gunitune made it).

    The user's directory is created if missing and cleaned of a previous run's
    files (prometheus_client would add them to this run's totals). Without
    one and with gunitune's metrics on, a private temporary directory is made,
    exported in ``environ`` and removed when the master exits.
    """
    path = multiproc_dir(environ)
    if path is not None:
        os.makedirs(path, exist_ok=True)
        clean(path)
        return path, False
    if not metrics_on:
        return None, False
    path = tempfile.mkdtemp(prefix="gunitune-metrics-")
    environ[ENV] = path
    # Forked workers run atexit handlers too (Gunicorn ends them with sys.exit):
    # only the master may remove what every worker writes to.
    atexit.register(_remove_from, os.getpid(), path)
    return path, True


def _remove_from(owner: int, path: str) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def clean(path: str) -> int:
    """Remove the metric files (and half-written archives) in ``path``; how many."""
    removed = 0
    for entry in Path(path).iterdir():
        if entry.name.endswith((".db", ".db.tmp")) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the directory's lock: shared to read the files, exclusive to fold them."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fold_dead(pid: int, path: str) -> list[str]:
    """A worker ``pid`` exited: drop its live gauges, fold its counters into the archive.

    Folding only happens where gunitune's endpoint reads (its lock file exists):
    another reader would not take the lock and could count a file twice or
    miss one. Returns the names of the files folded.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)
    if not os.path.exists(os.path.join(path, LOCK_NAME)):
        return []
    folded = []
    with locked(path, exclusive=True):
        for kind in ARCHIVED_TYPES:
            dead = Path(path, f"{kind}_{pid}.db")
            if not dead.exists():
                continue
            _fold(dead, Path(path, f"{kind}_{ARCHIVE}.db"))
            folded.append(dead.name)
    return folded


def _fold(dead: Path, archive: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    sources = [archive, dead] if archive.exists() else [dead]
    totals = sum_values(
        [(key, value) for key, value, _, _ in MmapedDict.read_all_values_from_file(str(f))]
        for f in sources
    )
    # Written aside, then renamed over the archive: a crash midway leaves the
    # old archive and the dead file, both still counted.
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.unlink(missing_ok=True)
    merged = MmapedDict(str(tmp))
    try:
        for key, value in totals.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    os.replace(tmp, archive)
    dead.unlink()


def on_starting(server: Any, metrics_on: bool | None = None) -> None:
    """Gunicorn's ``on_starting`` (master, before fork): :func:`prepare` the directory.

    ``metrics_on`` defaults to ``GUNITUNE_METRICS_PATH`` being set in the environment.
    """
    if metrics_on is None:
        metrics_on = bool(os.environ.get("GUNITUNE_METRICS_PATH", "").strip())
    path, made = prepare(os.environ, metrics_on)
    if path is not None:
        log.info("metrics_dir", path=path, made_by_gunitune=made)


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn's ``child_exit`` (master): :func:`fold_dead` the worker's files."""
    path = multiproc_dir()
    if path is None:
        return
    try:
        folded = fold_dead(worker.pid, path)
    except Exception:
        # The master must outlive a metrics failure: the worker is respawned anyway.
        log.exception("metrics_fold_failed", pid=worker.pid, path=path)
        return
    if folded:
        log.debug("metrics_folded", pid=worker.pid, files=folded)
