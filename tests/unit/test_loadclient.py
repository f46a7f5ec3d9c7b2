"""Load client: pure figures, response parsing, loopback guard, and failure
classification against tiny in-process asyncio servers."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Awaitable, Callable

import pytest

from benchmarks.figures import percentile
from benchmarks.loadclient import (
    RequestResult,
    ResponseError,
    check_loopback,
    parse_head,
    request_once,
    run_storm,
    run_storm_and_trickle,
    storm,
    summarize,
    trickle,
)

CHUNKS = b"1\r\nh\r\n1;ext=y\r\ni\r\n0\r\n\r\n"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def test_percentile_linear_interpolation() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@pytest.mark.parametrize(
    ("q", "expected"),
    # Hand-computed on 10..50 (five values): rank = q/100 * 4, then a straight
    # line between the two neighbouring values.
    [(0, 10.0), (10, 14.0), (25, 20.0), (50, 30.0), (62, 34.8), (99, 49.6), (100, 50.0)],
)
def test_percentile_matches_hand_computed_ranks(q: int, expected: float) -> None:
    assert percentile([50.0, 10.0, 40.0, 20.0, 30.0], q) == pytest.approx(expected)


def test_percentile_wants_whole_q_and_answers_one_value_at_every_q() -> None:
    assert [percentile([3.5], q) for q in (0, 1, 50, 99, 100)] == [3.5] * 5
    with pytest.raises(ValueError, match="whole number"):
        percentile([1.0, 2.0], 99.5)  # type: ignore[arg-type]


def _result(i: int, status: int | None, error: str | None, t0: float, t1: float) -> RequestResult:
    return RequestResult(
        index=i, path="/", status=status, body_ok=status == 200 and error is None,
        error=error, started=t0, finished=t1,
    )  # fmt: skip


def test_summarize() -> None:
    results = [
        _result(0, 200, None, 10.0, 11.0),
        _result(1, 200, None, 10.0, 13.0),
        _result(2, 503, None, 10.5, 12.0),
        _result(3, None, "reset", 10.0, 15.0),
    ]
    s = summarize(results)
    assert (s["count"], s["ok"], s["failed"]) == (4, 2, 2)
    assert s["by_status"] == {200: 2, 503: 1}
    assert s["by_error"] == {"reset": 1}
    assert s["p50"] == pytest.approx(2.25)  # latencies 1, 1.5, 3, 5
    assert s["max"] == 5.0
    assert s["ok_max"] == 3.0
    assert (s["first_done"], s["last_done"]) == (1.0, 5.0)
    empty = summarize([])
    assert empty["count"] == 0 and empty["p99"] is None and empty["last_done"] is None


def test_loopback_guard() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_loopback(host)
    for host in ("10.0.0.1", "example.com", "0.0.0.0", "127.0.0.2"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(host)
    with pytest.raises(ValueError):
        run_storm("192.0.2.1", 80, "/", 1)


def test_parse_head() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    assert parse_head(head) == (503, {"content-length": "3", "x-a": "1, 2"})
    assert parse_head(b"HTTP/1.0 200\r\n\r\n") == (200, {})
    bad_heads = [b"SSH-2.0\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nx\r\n\r\n"]
    for bad in bad_heads:
        with pytest.raises(ResponseError) as info:
            parse_head(bad)
        assert info.value.kind == "invalid"


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Handlers may be cancelled when the loop ends; always release the socket.
        try:
            await handler(reader, writer)
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _one(handler: Handler, timeout: float = 10) -> RequestResult:
    server, port = await _serve(handler)
    async with server:
        return await request_once("127.0.0.1", port, "/x", expected_body=b"hi", timeout=timeout)


def _reply(raw: bytes, *, reset: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        if reset:
            # SO_LINGER 0 makes close() send RST instead of FIN.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    return handler


@pytest.mark.parametrize(
    ("raw", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", 200, b"hi"),
        (b"HTTP/1.1 200 OK\r\n\r\nhi", 200, b"hi"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKS, 200, b"hi"),
    ],
)
def test_good_responses(raw: bytes, status: int, body: bytes) -> None:
    res = asyncio.run(_one(_reply(raw)))
    assert (res.error, res.status, res.body, res.body_ok) == (None, status, body, True)
    assert res.started <= (res.connected or 0) <= res.finished
    assert res.latency >= 0


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (_reply(b"garbage\r\n\r\n"), "invalid"),
        (_reply(b""), "closed"),
        (_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhi"), "incomplete"),
        (_reply(b"", reset=True), "reset"),
    ],
)
def test_failures(handler: Handler, error: str) -> None:
    res = asyncio.run(_one(handler))
    assert res.error == error
    assert not res.body_ok


def test_timeout() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the client gives up first

    res = asyncio.run(_one(never, timeout=0.2))
    assert res.error == "timeout"
    assert 0.2 <= res.latency < 2


def test_refused() -> None:
    with socket.socket() as sock:  # bound but not listening: connect is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        res = asyncio.run(request_once("127.0.0.1", port, "/"))
    assert res.error == "refused"
    assert res.connected is None
    assert res.connect_started is not None and res.connect_time is None


def test_connect_time_and_served_by_are_captured() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)  # the server's work: counted in latency, not connect time
        writer.write(b"HTTP/1.1 200 OK\r\nX-Served-By: 4242\r\nContent-Length: 2\r\n\r\nhi")
        writer.close()

    res = asyncio.run(_one(slow))
    assert res.body_ok and res.served_by == 4242
    assert res.connect_started is not None and res.connected is not None
    assert res.started <= res.connect_started <= res.connected <= res.finished
    assert res.connect_time is not None and 0 <= res.connect_time < 0.2 <= res.latency
    # No header, or not a pid: no worker to credit.
    for headers in ({}, {"x-served-by": "abc"}):
        assert RequestResult(0, "/", headers=headers).served_by is None


def test_storm_trickle_and_deadline() -> None:
    seen: list[bytes] = []
    progress: list[tuple[int, int]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if head.startswith(b"GET /slow "):
            await asyncio.sleep(5)  # outlives the storm deadline below
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        writer.close()

    async def main() -> tuple[list[RequestResult], list[RequestResult], list[RequestResult]]:
        server, port = await _serve(handler)
        async with server:
            fast = await storm("127.0.0.1", port, "/", 50, expected_body=b"hi",
                               progress=lambda d, t: progress.append((d, t)))  # fmt: skip
            slow = await storm("127.0.0.1", port, "/slow", 3, deadline=0.3)
            steady = await trickle("127.0.0.1", port, "/t", rate_per_s=50, duration_s=0.2)
        return fast, slow, steady

    fast, slow, steady = asyncio.run(main())
    assert [r.index for r in fast] == list(range(50)) and all(r.body_ok for r in fast)
    assert progress[-1] == (50, 50)
    assert all(b"Connection: close" in h and b"Host: 127.0.0.1:" in h for h in seen)
    assert [r.error for r in slow] == ["timeout"] * 3
    assert max(r.finished for r in slow) - min(r.started for r in slow) < 1.5
    assert len(steady) == 10 and all(r.body_ok for r in steady)
    # Open loop: starts are spaced by 1/rate regardless of response times.
    assert steady[-1].started - steady[0].started == pytest.approx(0.18, abs=0.05)


def test_run_storm_and_trickle_sync() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        writer.close()

    # The server needs its own loop; run it in a thread so the sync wrapper can own one.
    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server, port = loop.run_until_complete(_serve(handler))
        holder.update(loop=loop, port=port)
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(5)
    port = holder["port"]
    assert isinstance(port, int)
    try:
        storm_res, trickle_res = run_storm_and_trickle(
            "127.0.0.1", port, "/", 20, "/t", rate_per_s=20, duration_s=0.25,
            expected_body=b"hi", trickle_expected_body=b"hi",
        )  # fmt: skip
    finally:
        loop = holder["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert len(storm_res) == 20 and all(r.body_ok for r in storm_res)
    assert len(trickle_res) == 5 and all(r.path == "/t" and r.body_ok for r in trickle_res)
