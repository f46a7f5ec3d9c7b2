"""Run a real Gunicorn master as a subprocess for integration tests and benchmarks.

The process is started exactly as an operator would (``python -m gunicorn ...``) so
that what we measure is what production runs; readiness is detected by polling the
listening port and the worker processes, never by sleeping a fixed time.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]

# Asks Gunicorn's own config loader how many workers it will run, so the precedence
# of config file, GUNICORN_CMD_ARGS and CLI flags is exactly Gunicorn's.  It runs in a
# child process because config files may have side effects (e.g. gevent patching).
_WORKERS_PROBE = """
import sys
from gunicorn.app.wsgiapp import WSGIApplication
sys.argv = ["gunicorn", *sys.argv[1:]]
app = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
print(app.cfg.workers)
"""

_DIRTY_ARBITER_RE = re.compile(r"Spawned dirty arbiter \(pid: (\d+)\)")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is currently free on ``host``.

    There is an unavoidable race between closing the probe socket and the server
    binding it; callers that can detect "address in use" should retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@functools.lru_cache(maxsize=1)
def control_socket_disable_args() -> tuple[str, ...]:
    """CLI flag disabling Gunicorn's control socket, or nothing on versions without it.

    Gunicorn >= 25 opens a control socket in ~/.gunicorn by default; concurrent test
    servers would fight over that single path, so stock runs switch it off.
    """
    from gunicorn.config import KNOWN_SETTINGS

    flag = "--no-control-socket"
    supported = any(flag in (getattr(s, "cli", None) or []) for s in KNOWN_SETTINGS)
    return (flag,) if supported else ()


def stock_args(workers: int = 1, worker_connections: int = 1000, timeout: int = 30) -> list[str]:
    """CLI arguments for Gunicorn's stock gevent settings (no gunitune tuning)."""
    return [
        "-k",
        "gevent",
        "--workers",
        str(workers),
        "--worker-connections",
        str(worker_connections),
        "--timeout",
        str(timeout),
        *control_socket_disable_args(),
    ]


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE raised to the hard limit (a storm needs a socket per request).

    Children inherit it: that is how the Gunicorn servers get it (a ``preexec_fn``
    would do the same in the child, but is unsafe once the benchmark's threads run).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` can be established."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_answers(host: str, port: int, path: str, timeout: float = 2) -> bool:
    """True when ``GET path`` gets any HTTP response (even an error status)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class GunicornProcess:
    """A Gunicorn master running ``app`` on 127.0.0.1, as a context manager.

    ``start()`` returns once the port accepts connections and the expected number
    of workers has booted; ``stop()`` terminates the whole process group.
    """

    def __init__(
        self,
        app: str = "demo_app:app",
        config: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.args = list(args)
        self.port = port if port is not None else free_port()
        self.host = "127.0.0.1"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Without an explicit path, a temp log is created by start(); it is kept after
        # stop() because it is the evidence when something went wrong.
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.expected_workers: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def argv(self) -> list[str]:
        """The full command line used to launch the master."""
        return [
            sys.executable,
            "-m",
            "gunicorn",
            *(["-c", self.config] if self.config else []),
            "-b",
            f"{self.host}:{self.port}",
            *self.args,
            self.app,
        ]

    @property
    def pid(self) -> int:
        """PID of the Gunicorn master (raises if never started)."""
        if self._proc is None:
            raise RuntimeError("GunicornProcess not started")
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    def configured_workers(self) -> int:
        """Number of workers Gunicorn will run with this argv, config and env."""
        cmd = [sys.executable, "-c", _WORKERS_PROBE, *self.argv[3:]]
        out = subprocess.run(
            cmd, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot read Gunicorn config for {cmd}: {out.stderr.strip()}")
        return int(out.stdout.strip().splitlines()[-1])

    def start(self, ready_timeout: float = 60, probe_path: str | None = None) -> GunicornProcess:
        """Launch the master and wait until it is ready to serve.

        Ready means: the port accepts TCP connections and every configured worker has
        logged "Booting worker".  A worker may still be importing the app then (and
        could fail to); pass ``probe_path`` to also wait for an HTTP answer on it.
        """
        if self._proc is not None:
            raise RuntimeError("GunicornProcess already started")
        self.expected_workers = self.configured_workers()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        raise_nofile_limit()  # inherited by master and workers
        with open(self.log_path, "wb") as log:
            # A new session puts master and workers in their own process group, so
            # stop() can kill stragglers and Ctrl-C in the test runner doesn't race us.
            self._proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # A benchmark script dying on an exception must not leave a server running.
        atexit.register(self.stop)
        try:
            self._wait_ready(ready_timeout, probe_path)
        except BaseException:
            self.stop(grace=2)
            raise
        return self

    def _wait_ready(self, ready_timeout: float, probe_path: str | None) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + ready_timeout
        expected = self.expected_workers or 1
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"gunicorn exited early with code {code}; log tail:\n{self.log_tail()}"
                )
            booted = self.count("Booting worker")
            # Boot lines are only required when Gunicorn logs to our file at all (its
            # "Listening at" line precedes every boot); a config may route errorlog away.
            logs_here = "Listening at" in self.log_text()
            if (
                (booted >= expected or not logs_here)
                and len(self.worker_pids()) >= expected
                and port_accepts(self.host, self.port)
                and (probe_path is None or http_answers(self.host, self.port, probe_path))
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"gunicorn not ready after {ready_timeout}s ({booted}/{expected} workers "
                    f"booted); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (children of the master)."""
        if self._proc is None:
            return []
        try:
            children = psutil.Process(self._proc.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        excluded = {int(m) for m in _DIRTY_ARBITER_RE.findall(self.log_text())}
        pids = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.pid not in excluded and child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
        return pids

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def count(self, pattern: str) -> int:
        """Number of occurrences of the plain substring ``pattern`` in the log."""
        return self.log_text().count(pattern)

    def send_signal(self, name: str) -> None:
        """Send the master a signal by name (``"HUP"``, ``"TERM"``...), e.g. a reload."""
        if self._proc is None:
            raise RuntimeError("GunicornProcess not started")
        self._proc.send_signal(getattr(signal, f"SIG{name}"))

    @property
    def returncode(self) -> int | None:
        """The master's exit code once it has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        """True while the master process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the master, wait up to ``grace`` s, then SIGKILL its process group.

        Idempotent.  The group kill also catches workers orphaned by a master crash.
        """
        if self._stopped or self._proc is None:
            self._stopped = True
            return
        self._stopped = True
        atexit.unregister(self.stop)
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def __enter__(self) -> GunicornProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"GunicornProcess(app={self.app!r}, port={self.port}, pid={pid})"
