"""Throwaway PostgreSQL clusters for integration tests and benchmarks.

Each cluster lives in its own temp dir, listens only on 127.0.0.1 on a free port and
requires a password (scram-sha-256) like a real deployment, so connection-pool
behaviour under overload matches production rather than a trust-auth shortcut.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2

from benchmarks.server import free_port

PG_GLOB = "/usr/lib/postgresql/*/bin"
_FALLBACK_USER = "gunitune-pg"

# Durability is pointless for a cluster deleted after the run; turning it off keeps
# disk latency out of the measurements.  extra_conf can override any of these.
_DEFAULT_CONF = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


DRIVERS = ("psycopg2", "psycopg")


def app_driver() -> str:
    """The driver tests and benchmarks use: ``PG_DRIVER`` (psycopg2 unless set)."""
    driver = os.environ.get("PG_DRIVER", "").strip() or "psycopg2"
    if driver not in DRIVERS:
        raise RuntimeError(f"PG_DRIVER={driver!r} is invalid: expected one of {', '.join(DRIVERS)}")
    return driver


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres: highest versioned Debian dir, then PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.name))

    candidates = sorted(glob.glob(PG_GLOB), key=version, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).resolve().parent))
    for cand in candidates:
        if all((Path(cand) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(cand)
    raise RuntimeError(
        f"PostgreSQL server binaries not found under {PG_GLOB}: apt-get install -y postgresql"
    )


def _run_as() -> dict[str, Any]:
    """subprocess kwargs dropping root: PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        try:
            entry = pwd.getpwnam(_FALLBACK_USER)
        except KeyError:
            opts = ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            subprocess.run(["useradd", *opts, _FALLBACK_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(_FALLBACK_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _pg_run(binary: Path, opts: str, *args: str, **kwargs: Any) -> Any:
    """Run a PostgreSQL tool as the unprivileged user; ``opts`` is split on spaces."""
    cmd = [str(binary), *opts.split(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, **_run_as(), **kwargs)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class PostgresCluster:
    """A running temporary PostgreSQL cluster.  Use ``start_cluster()`` to create one."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str
    datadir: Path
    pid: int = 0
    bindir: Path = field(default_factory=find_bindir, repr=False)
    base_dir: Path | None = field(default=None, repr=False)
    startup_timeout: float = field(default=60, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """libpq (and plain SQLAlchemy) URL using TCP and password auth."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    @property
    def app_url(self) -> str:
        """:attr:`url` naming the driver of ``PG_DRIVER``, for the apps under test."""
        return self.driver_url(app_driver())

    def driver_url(self, driver: str) -> str:
        """:attr:`url` naming ``driver`` (``psycopg2`` or ``psycopg``) for SQLAlchemy."""
        return self.url.replace("postgresql://", f"postgresql+{driver}://", 1)

    @property
    def logfile(self) -> Path:
        """Server log (stdout/stderr of the postmaster)."""
        return self.datadir.parent / "postgres.log"

    def connect(self, **kwargs: Any) -> Any:
        """A new psycopg2 connection (caller closes it)."""
        return psycopg2.connect(self.url, **kwargs)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows ([] if none)."""
        conn = self.connect(connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def set_max_connections(self, n: int) -> None:
        """Change max_connections (needs a restart) and wait until it is live again."""
        self.query(f"ALTER SYSTEM SET max_connections = {int(n)}")
        self._pg_ctl_stop()
        self._kill_leftovers(wait=1)
        self._launch()

    def stop_server(self) -> None:
        """``pg_ctl stop -m fast`` (SIGKILL after 10 s): the server goes, its data stays.

        What a database restart or outage looks like to clients: connections are
        closed, new connects are refused.  ``start_server()`` brings it back on the same port.
        """
        self._pg_ctl_stop()
        self._kill_leftovers(wait=1)

    def start_server(self) -> None:
        """Start the server stopped by ``stop_server()``; returns once it accepts logins."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("postgres is already running")
        self._launch()

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _launch(self) -> None:
        """Start the postmaster directly (we own the Popen, so early exits are visible)."""
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir)],
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_run_as(),
            )
        self.pid = self._proc.pid
        self._wait_ready()
        self.pid = int((self.datadir / "postmaster.pid").read_text().split()[0])

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {self._proc.returncode}; log tail:\n"
                    f"{self._log_tail()}"
                )
            try:
                self.connect(connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                last = str(exc).strip()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres not accepting connections after {self.startup_timeout}s "
                    f"({last}); log tail:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _pg_ctl_stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg_ctl = self.bindir / "pg_ctl"
            _pg_run(
                pg_ctl, "stop -m fast -w -t 10 -D", str(self.datadir), cwd=self.base_dir, timeout=15
            )

    def _kill_leftovers(self, wait: float) -> None:
        """SIGKILL the postmaster's process group if it is still alive after ``wait`` s."""
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        """Fast shutdown, SIGKILL after 10 s if needed, then delete the temp dir.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self._proc is not None and self._proc.poll() is None:
            self._pg_ctl_stop()  # waits up to 10 s itself
        self._kill_leftovers(wait=1)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_cluster(
    max_connections: int = 200,
    extra_conf: dict[str, str] | None = None,
    base_dir: Path | None = None,
    startup_timeout: float = 60,
) -> PostgresCluster:
    """initdb + start a private cluster on 127.0.0.1; returns once it accepts logins.

    ``base_dir`` is the parent of the temp dir (default: the system temp dir); it must
    be traversable by the unprivileged user PostgreSQL runs as when we are root.
    """
    bindir = find_bindir()
    run_as = _run_as()
    tmp = Path(tempfile.mkdtemp(prefix="gunitune-pg-", dir=base_dir))
    datadir, sockdir = tmp / "data", tmp / "sock"
    sockdir.mkdir()
    password = secrets.token_urlsafe(18)
    pwfile = tmp / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        for path in (tmp, sockdir, pwfile):
            os.chown(path, run_as["user"], run_as["group"])
    try:
        opts = "-U gunitune -A scram-sha-256 -E UTF8 --locale=C --no-sync --no-instructions"
        args = ("-D", str(datadir), f"--pwfile={pwfile}")
        _pg_run(bindir / "initdb", opts, *args, cwd=tmp, check=True, timeout=120)
    except subprocess.SubprocessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = (getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or "").strip()
        raise RuntimeError(f"initdb failed: {exc} {detail}".rstrip()) from exc
    pwfile.unlink()
    cluster = PostgresCluster("127.0.0.1", 0, "gunitune", password, "postgres", datadir, 0, bindir)
    cluster.base_dir, cluster.startup_timeout = tmp, startup_timeout
    atexit.register(cluster.stop)
    conf = {
        **_DEFAULT_CONF,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(sockdir),
        "max_connections": str(max_connections),
        **(extra_conf or {}),
    }
    # Our settings live in their own file so postgresql.conf stays stock and
    # ALTER SYSTEM (postgresql.auto.conf, read last) can still override them.
    with open(datadir / "postgresql.conf", "a") as main_conf:
        main_conf.write("\ninclude = 'gunitune.conf'\n")
    try:
        for attempt in range(3):
            # free_port() can race with other processes; retry on "address in use".
            cluster.port = free_port()
            lines = [f"{k} = {_quote(v)}" for k, v in {**conf, "port": str(cluster.port)}.items()]
            (datadir / "gunitune.conf").write_text("\n".join(lines) + "\n")
            try:
                cluster._launch()
                break
            except RuntimeError:
                if attempt == 2 or "already in use" not in cluster._log_tail():
                    raise
        # initdb only creates "postgres"; a dedicated database keeps URLs self-describing.
        cluster.query("CREATE DATABASE gunitune")
        cluster.dbname = "gunitune"
    except BaseException:
        cluster.stop()
        raise
    return cluster
