"""What the storm benchmark measures besides the client: the server side and the machine.

* :class:`ServerProbe` polls, every 0.25 s in a background thread, the app's
  database connections (``pg_stat_activity``) and the listening socket's accept
  queue, and keeps the peaks.
* :func:`cpu_seconds_per_request` times the ``/cpu`` route's work unloaded.
* :class:`Progress` is the stderr progress bar (tqdm) of a run in flight.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO

import psycopg2
from tqdm import tqdm

__all__ = [
    "Progress",
    "ServerProbe",
    "accept_queue",
    "cpu_samples",
    "package_versions",
]

POLL_SECONDS = 0.25
_APP_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)


def _accept_queue_proc(port: int) -> int | None:
    # For a LISTEN socket (state 0A) the kernel reports the accept queue as rx_queue.
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)
    return None


def accept_queue(port: int) -> int | None:
    """Connections waiting in the accept queue of the socket listening on ``port``.

    ``ss`` asks the kernel through netlink with the port as filter, which stays cheap
    while thousands of sockets are open; /proc/net/tcp (a full text dump) is the fallback.
    """
    try:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
        queues = [int(line.split()[1]) for line in out.splitlines() if line.strip()]
        if queues:
            return max(queues)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    return _accept_queue_proc(port)


def listen_overflows() -> dict[str, int] | None:
    """The kernel's counts of connections its full listen queues refused (all sockets).

    ``ListenOverflows``: a connection found the accept queue full; ``ListenDrops``:
    a SYN dropped for that or another reason. Each one costs its client a
    retransmission (1 s, then 3 s...) or, in the end, a reset. None off Linux.
    """
    try:
        with open("/proc/net/netstat") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return {key: int(table.get(key, 0)) for key in ("ListenOverflows", "ListenDrops")}
    return None


class ServerProbe:
    """Peak DB connections of the app's database and peak accept queue during a run."""

    def __init__(self, database_url: str, port: int) -> None:
        self.database_url = database_url
        self.port = port
        self.peak_db: int | None = None
        self.peak_queue: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def db_connections(self) -> int | None:
        """Client backends on the app's database right now (not counting the probe)."""
        try:
            if self._conn is None:
                self._conn = psycopg2.connect(
                    self.database_url, connect_timeout=5, application_name="gunitune-bench-probe"
                )
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(_APP_BACKENDS)
                return int(cur.fetchone()[0])
        except psycopg2.Error:
            # A full max_connections must not end the run: reconnect at the next sample.
            self._close()
            return None

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.is_set():
            db, queue = self.db_connections(), accept_queue(self.port)
            if db is not None:
                self.peak_db = max(self.peak_db or 0, db)
            if queue is not None:
                self.peak_queue = max(self.peak_queue or 0, queue)
            self.samples += 1
            self._stop.wait(POLL_SECONDS)

    def start(self) -> ServerProbe:
        """Open the probe's DB connection now (before the storm), then poll in a thread."""
        self.db_connections()
        self._thread = threading.Thread(target=self._run, name="server-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the probe's connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()


_CPU_TIMER = """
import json, sys, time
n, reps, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
warm_up = time.process_time() + seconds / 4
while True:
    sum(range(n))
    if time.process_time() > warm_up:
        break
times = []
while len(times) < reps or (sum(times) < seconds and len(times) < 1000):
    t = time.process_time()
    sum(range(n))
    times.append(time.process_time() - t)
print(json.dumps(times))
"""


def cpu_samples(
    cpu_loop: int, repetitions: int = 5, seconds: float = 2.0, timeout: float = 900
) -> list[float]:
    """CPU seconds of ``sum(range(cpu_loop))``, repeated, in a fresh interpreter.

    A subprocess so this process's threads and imports don't disturb the timing;
    process time, not wall time, so a busy neighbour doesn't inflate it. Short
    loops are repeated for ``seconds`` after a warm-up: on a VM the first tens of
    milliseconds of a fresh process measured up to 40% slower than the rest.
    """
    out = subprocess.run(
        [sys.executable, "-c", _CPU_TIMER, str(cpu_loop), str(repetitions), str(seconds)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return [float(t) for t in json.loads(out.stdout)]


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``names`` ("missing" when not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


class _LogLines:
    """tqdm's output off a terminal: each redraw as a line of its own.

    tqdm redraws in place with ``\r``, which a CI log keeps as one ever-growing
    line (or shows only the last state); a log wants separate lines.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self._out.write(line + "\n")

    def flush(self) -> None:
        self._out.flush()


class Progress:
    """A tqdm progress bar on stderr while a run is in flight: done/total (or just
    done when ``total`` is None or 0), elapsed time, rate, and ok/failed counts.

    :meth:`add` only counts, since it runs for each of thousands of requests a
    second on the client's event loop; a ticker thread copies the counts into the
    bar and redraws it, every 0.25 s on a terminal and every 10 s elsewhere (a CI
    log gets a line per redraw, see :class:`_LogLines`). The ticker also keeps the
    clock moving while nothing completes (stock waiting out a worker timeout).
    """

    def __init__(self, label: str, total: int | None, file: TextIO | None = None) -> None:
        self.label, self.total = label, total or None
        self.done = self.ok = 0
        self._file = sys.stderr if file is None else file
        self._tty = self._file.isatty()
        self._bar: tqdm[Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)

    def add(self, ok: bool) -> None:
        """Count one finished request (called from the client's event loop)."""
        self.done += 1
        self.ok += ok

    def draw(self) -> None:
        """Copy the counts into the bar and redraw it (the ticker's job; no-op
        outside the ``with`` block)."""
        bar = self._bar
        if bar is not None:
            self._copy_counts(bar)
            bar.refresh()

    def _copy_counts(self, bar: tqdm[Any]) -> None:
        done, ok = self.done, self.ok
        # Set n rather than call update(): update() redraws on a schedule of its
        # own, which would double the lines in a log; the ticker alone decides.
        bar.n = done
        bar.set_postfix_str(f"ok {ok} failed {done - ok}", refresh=False)

    def _tick(self) -> None:
        interval = 0.25 if self._tty else 10.0
        while not self._stop.wait(interval):
            self.draw()

    def __enter__(self) -> Progress:
        self._bar = tqdm(
            desc=self.label,
            total=self.total,
            unit="req",
            file=self._file if self._tty else _LogLines(self._file),
            ncols=None if self._tty else 100,
            dynamic_ncols=self._tty,
            ascii=None if self._tty else True,
            smoothing=0,  # the rate is the run's average, not a recent burst
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._bar is not None:
            bar, self._bar = self._bar, None
            self._copy_counts(bar)
            bar.close()  # draws the final state and ends the line
