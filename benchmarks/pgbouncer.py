"""A throwaway PgBouncer in front of a throwaway PostgreSQL, for tests and benchmarks.

Debian's ``pgbouncer`` binary (``apt-get install -y pgbouncer``; scripts/setup.sh
installs it), run in the foreground as the same unprivileged user as PostgreSQL
when we are root (it refuses to run as root), with its own ini on a free
loopback port and no Unix socket. The package's own service is not used.
Stopped by PID (SIGINT: immediate shutdown), its temp dir removed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psycopg2

from benchmarks.postgres import PostgresCluster, _run_as, app_driver
from benchmarks.server import free_port

__all__ = ["PgBouncer", "find_pgbouncer", "start_pgbouncer"]


def find_pgbouncer() -> str:
    """Path of the pgbouncer binary, or a RuntimeError naming the fix."""
    path = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if path is None:
        raise RuntimeError("pgbouncer not found: apt-get install -y pgbouncer")
    return path


@dataclass
class PgBouncer:
    """A running PgBouncer; use :func:`start_pgbouncer`."""

    cluster: PostgresCluster
    port: int
    base_dir: Path
    settings: dict[str, str]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """The cluster's URL, through PgBouncer."""
        c = self.cluster
        return f"postgresql://{c.user}:{c.password}@127.0.0.1:{self.port}/{c.dbname}"

    @property
    def app_url(self) -> str:
        """:attr:`url` naming the driver of ``PG_DRIVER``, for the apps under test."""
        return self.url.replace("postgresql://", f"postgresql+{app_driver()}://", 1)

    @property
    def logfile(self) -> Path:
        """PgBouncer's log."""
        return self.base_dir / "pgbouncer.log"

    def log_text(self) -> str:
        """Everything PgBouncer logged so far."""
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with code {self.proc.returncode}: {self.log_text()[-2000:]}"
                )
            try:
                psycopg2.connect(self.url, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                last = str(exc).strip()
            time.sleep(0.05)
        raise TimeoutError(f"pgbouncer not ready after {timeout}s ({last})")

    def stop(self) -> None:
        """SIGINT (immediate shutdown) by PID, SIGKILL after 5 s; remove the dir. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_pgbouncer(
    cluster: PostgresCluster,
    *,
    pool_mode: str = "transaction",
    default_pool_size: int = 20,
    max_db_connections: int = 0,
    max_client_conn: int = 1000,
    query_wait_timeout: int = 30,
    extra: dict[str, str] | None = None,
    ready_timeout: float = 20,
) -> PgBouncer:
    """Start PgBouncer on a free 127.0.0.1 port in front of ``cluster``."""
    binary = find_pgbouncer()
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="gunitune-pgb-"))
    port = free_port()
    # Plain text in the auth file: PgBouncer needs the password itself to log in
    # to PostgreSQL with SCRAM on the client's behalf.
    (base / "userlist.txt").write_text(f'"{cluster.user}" "{cluster.password}"\n')
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": str(base / "userlist.txt"),
        "pool_mode": pool_mode,
        "default_pool_size": str(default_pool_size),
        "max_db_connections": str(max_db_connections),
        "max_client_conn": str(max_client_conn),
        "query_wait_timeout": str(query_wait_timeout),
        "logfile": str(base / "pgbouncer.log"),
        "pidfile": str(base / "pgbouncer.pid"),
        "log_connections": "0",
        "log_disconnections": "0",
        **(extra or {}),
    }
    ini = [
        "[databases]",
        f"* = host={cluster.host} port={cluster.port}",
        "[pgbouncer]",
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    (base / "pgbouncer.ini").write_text("\n".join(ini) + "\n")
    if run_as:
        for path in (base, base / "userlist.txt", base / "pgbouncer.ini"):
            os.chown(path, run_as["user"], run_as["group"])
    os.chmod(base / "userlist.txt", 0o600)
    bouncer = PgBouncer(cluster, port, base, settings)
    atexit.register(bouncer.stop)
    with open(base / "stdout.log", "ab") as out:
        bouncer.proc = subprocess.Popen(
            [binary, str(base / "pgbouncer.ini")],
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )
    try:
        bouncer._wait_ready(ready_timeout)
    except BaseException:
        bouncer.stop()
        raise
    return bouncer
