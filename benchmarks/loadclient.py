"""A loopback-only HTTP/1.1 load client that makes exactly one attempt per request.

Like ``for i in $(seq 3000); do curl ... & done``: every request is its own TCP
connection with ``Connection: close``, and a failure is recorded, never retried.
Higher-level clients (aiohttp) silently retry idempotent requests after a reset,
which would hide exactly the failures the benchmarks are meant to count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.figures import summarize as summarize  # re-exported for callers

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_MAX_HEAD = 64 * 1024


@dataclass
class RequestResult:
    """Outcome of one request.  Times are ``time.monotonic()`` values.

    ``error`` is None on a complete response, else one of: ``refused`` (connect
    refused), ``reset`` (RST / broken pipe), ``timeout``, ``closed`` (EOF before any
    response byte), ``incomplete`` (EOF mid-response), ``invalid`` (unparseable
    response) or ``oserror:<ERRNO>`` for anything else (e.g. ``oserror:EMFILE``).
    """

    index: int
    path: str
    status: int | None = None
    body: bytes = b""
    body_ok: bool = False
    error: str | None = None
    started: float = 0.0
    connected: float | None = None
    finished: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    connect_started: float | None = None

    @property
    def latency(self) -> float:
        """Seconds from starting the request to the end of the response (or failure)."""
        return self.finished - self.started

    @property
    def connect_time(self) -> float | None:
        """Seconds from the connect call to the connection established; None if it never was.

        Taken apart from ``latency``: a SYN dropped by a full accept queue shows up
        here as the kernel's retransmission delays (1 s, 3 s, 7 s...).
        """
        if self.connected is None or self.connect_started is None:
            return None
        return self.connected - self.connect_started

    @property
    def served_by(self) -> int | None:
        """The worker pid of the demo's ``X-Served-By`` header (None without one)."""
        raw = self.headers.get("x-served-by", "").strip()
        return int(raw) if raw.isdigit() else None


class ResponseError(Exception):
    """A response that could not be read; ``kind`` becomes ``RequestResult.error``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def check_loopback(host: str) -> None:
    """Refuse any non-loopback target: load tests must never leave the machine."""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"load client only targets loopback {sorted(LOOPBACK_HOSTS)}, not {host!r}"
        )


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Parse a status line + header block (CRLF separated) into (status, headers).

    Header names are lower-cased; repeated headers are joined with ``", "``.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise ResponseError("invalid", "undecodable head") from exc
    lines = text.rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ResponseError("invalid", f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ResponseError("invalid", f"bad header line {line[:80]!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ResponseError("invalid", f"bad chunk size {size_line[:40]!r}") from exc
        if size == 0:
            # Trailers (rare) end with an empty line, like the head.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ResponseError("invalid", "chunk not followed by CRLF")


async def _exchange(
    host: str, port: int, res: RequestResult, writers: list[asyncio.StreamWriter]
) -> None:
    # Stamped here, not in request_once: wait_for() starts this coroutine a loop
    # iteration later, after every other request of a storm has been created.
    res.connect_started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
    writers.append(writer)
    res.connected = time.monotonic()
    host_header = f"[{host}]" if ":" in host else host
    writer.write(
        f"GET {res.path} HTTP/1.1\r\nHost: {host_header}:{port}\r\n"
        "User-Agent: gunitune-loadclient\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise ResponseError("incomplete" if exc.partial else "closed") from exc
    except asyncio.LimitOverrunError as exc:
        raise ResponseError("invalid", "response head too large") from exc
    res.status, res.headers = parse_head(head)
    try:
        if "chunked" in res.headers.get("transfer-encoding", "").lower():
            res.body = await _read_chunked(reader)
        elif "content-length" in res.headers:
            length = res.headers["content-length"]
            if not length.isdigit():
                raise ResponseError("invalid", f"bad content-length {length!r}")
            res.body = await reader.readexactly(int(length))
        else:
            res.body = await reader.read()  # delimited by EOF
    except asyncio.IncompleteReadError as exc:
        res.body = exc.partial
        raise ResponseError("incomplete") from exc
    except asyncio.LimitOverrunError as exc:
        raise ResponseError("invalid", "chunk header too large") from exc


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ResponseError):
        return exc.kind
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"oserror:{errno.errorcode.get(exc.errno, exc.errno)}"
    if isinstance(exc, OSError) and "refused" in str(exc):
        # "localhost" tries ::1 and 127.0.0.1; asyncio merges both refusals errno-less.
        return "refused"
    return f"exception:{type(exc).__name__}"


async def request_once(
    host: str,
    port: int,
    path: str,
    index: int = 0,
    *,
    expected_body: bytes | None = None,
    timeout: float = 120,
) -> RequestResult:
    """One GET on a fresh connection, bounded by ``timeout`` seconds; never raises."""
    check_loopback(host)
    res = RequestResult(index=index, path=path, started=time.monotonic())
    writers: list[asyncio.StreamWriter] = []
    try:
        if timeout <= 0:
            raise asyncio.TimeoutError
        await asyncio.wait_for(_exchange(host, port, res, writers), timeout)
    except Exception as exc:
        res.error = _classify(exc)
    res.finished = time.monotonic()
    if res.error is None:
        res.body_ok = res.body == expected_body if expected_body is not None else res.status == 200
    for writer in writers:
        # abort() (RST, no lingering) after failures so thousands of dead sockets
        # don't pile up; a normal close otherwise.
        if res.error is None:
            writer.close()
        else:
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)
    return res


async def storm(
    host: str,
    port: int,
    path: str,
    n: int,
    *,
    expected_body: bytes | None = None,
    timeout: float = 120,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[RequestResult]:
    """Open ``n`` connections at once, one GET each; results are in index order.

    ``timeout`` bounds each request; ``deadline`` (seconds after the call) bounds the
    whole storm, requests still running then are recorded as ``timeout``.
    """
    check_loopback(host)
    end = None if deadline is None else time.monotonic() + deadline
    done = 0

    async def one(i: int) -> RequestResult:
        nonlocal done
        budget = timeout if end is None else min(timeout, end - time.monotonic())
        res = await request_once(host, port, path, i, expected_body=expected_body, timeout=budget)
        done += 1
        if progress is not None:
            progress(done, n)
        return res

    # All coroutines are created before the first one runs, so the connects go out
    # together like a shell loop of background curls.
    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def trickle(
    host: str,
    port: int,
    path: str,
    rate_per_s: float,
    duration_s: float,
    *,
    expected_body: bytes | None = None,
    timeout: float = 30,
    delay_s: float = 0.0,
) -> list[RequestResult]:
    """Start one GET every ``1/rate_per_s`` seconds for ``duration_s`` (open loop).

    Requests are launched on schedule whether or not earlier ones finished, so a
    stalled server shows up as latency rather than as a lower request rate.
    """
    check_loopback(host)
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    loop = asyncio.get_running_loop()
    start = loop.time() + delay_s
    tasks: list[asyncio.Task[RequestResult]] = []
    for i in range(int(rate_per_s * duration_s)):
        # Pacing sleep: the schedule itself is what we wait for, not a condition.
        await asyncio.sleep(max(0.0, start + i / rate_per_s - loop.time()))
        coro = request_once(host, port, path, i, expected_body=expected_body, timeout=timeout)
        tasks.append(asyncio.ensure_future(coro))
    return list(await asyncio.gather(*tasks))


def run_storm(
    host: str,
    port: int,
    path: str,
    n: int,
    *,
    expected_body: bytes | None = None,
    timeout: float = 120,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[RequestResult]:
    """Blocking wrapper around :func:`storm` (same arguments)."""
    return asyncio.run(
        storm(host, port, path, n, expected_body=expected_body, timeout=timeout,
              deadline=deadline, progress=progress)
    )  # fmt: skip


def run_storm_and_trickle(
    host: str,
    port: int,
    storm_path: str,
    n: int,
    trickle_path: str,
    rate_per_s: float,
    duration_s: float,
    *,
    expected_body: bytes | None = None,
    trickle_expected_body: bytes | None = None,
    timeout: float = 120,
    trickle_timeout: float = 30,
    deadline: float | None = None,
    trickle_delay_s: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[RequestResult], list[RequestResult]]:
    """Run a storm on ``storm_path`` and a trickle on ``trickle_path`` concurrently.

    Both share one event loop, so the trickle's timings are taken while the storm's
    connections are open.  Returns ``(storm_results, trickle_results)``.
    """

    async def main() -> tuple[list[RequestResult], list[RequestResult]]:
        return await asyncio.gather(
            storm(host, port, storm_path, n, expected_body=expected_body, timeout=timeout,
                  deadline=deadline, progress=progress),
            trickle(host, port, trickle_path, rate_per_s, duration_s,
                    expected_body=trickle_expected_body, timeout=trickle_timeout,
                    delay_s=trickle_delay_s),
        )  # fmt: skip

    return asyncio.run(main())
