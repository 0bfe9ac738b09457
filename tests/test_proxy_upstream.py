"""The sidecar's own HTTP/1.1 client (:mod:`samtykke_gateway.upstream`) against scripted raw
TCP servers on 127.0.0.1: framing variants, interim responses, keep-alive reuse, stale pooled
connections, malformed answers, timeouts. Nothing from asyncio/httptools may leak."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from samtykke_gateway.exceptions import UpstreamError, UpstreamTimeoutError
from samtykke_gateway.proxy import UpstreamProxy
from samtykke_gateway.upstream import StaleConnection, UpstreamPool

pytestmark = pytest.mark.anyio

GET = b"GET /x HTTP/1.1\r\nhost: u\r\n\r\n"


@asynccontextmanager
async def raw_server(answers: list[bytes], *, close_after: bool = False,
                     hold: float = 0.0) -> AsyncIterator[tuple[int, list[bytes], list[int]]]:
    """Answer the n-th request head on a connection with ``answers[n]`` (cycling).

    Yields ``(port, heads received, connection count box)``.
    """
    heads: list[bytes] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                if hold:
                    await asyncio.sleep(hold)
                writer.write(answers[(len(heads) - 1) % len(answers)])
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, heads, connections
    finally:
        server.close()


async def _get(pool: UpstreamPool, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    head = GET.replace(b"GET", method.encode())
    response = await pool.request(head, method=method)
    try:
        body = b"".join([c async for c in response.chunks()])
    finally:
        response.release()
    return response.status, response.headers, body


async def test_content_length_keepalive_reuses_connection() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]) as (port, heads, conns):
        pool = UpstreamPool("127.0.0.1", port)
        for _ in range(3):
            assert (await _get(pool))[::2] == (200, b"hello")
        assert conns[0] == 1 and len(heads) == 3
        await pool.aclose()


async def test_chunked_and_interim_response() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    async with raw_server([answer]) as (port, _, conns):
        pool = UpstreamPool("127.0.0.1", port)
        status, headers, body = await _get(pool)
        assert status == 200 and body == b"abcde" and (b"x-a", b"1") in headers
        assert (await _get(pool))[2] == b"abcde"
        assert conns[0] == 1
        await pool.aclose()


async def test_close_delimited_body() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close"], close_after=True) as (
        port, _, conns
    ):
        pool = UpstreamPool("127.0.0.1", port)
        assert (await _get(pool))[2] == b"until-close"
        assert (await _get(pool))[2] == b"until-close"
        assert conns[0] == 2  # never reused after Connection: close
        await pool.aclose()


async def test_head_response_not_reused() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n"]) as (port, _, conns):
        pool = UpstreamPool("127.0.0.1", port)
        assert await _get(pool, "HEAD") == (200, [(b"content-length", b"999")], b"")
        assert (await _get(pool, "HEAD"))[0] == 200
        assert conns[0] == 2
        await pool.aclose()


@pytest.mark.parametrize("answer", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"])
async def test_malformed_answer_is_502(answer: bytes) -> None:
    async with raw_server([answer]) as (port, _, _):
        pool = UpstreamPool("127.0.0.1", port)
        with pytest.raises(UpstreamError) as info:
            await _get(pool)
        assert info.value.status_code == 502
        await pool.aclose()


async def test_truncated_body_is_502() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"], close_after=True) as (port, _, _):
        pool = UpstreamPool("127.0.0.1", port)
        with pytest.raises(UpstreamError) as info:
            await _get(pool)
        assert info.value.reason == "upstream_broken"
        await pool.aclose()


async def test_timeouts_are_504() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], hold=1.0) as (port, _, _):
        pool = UpstreamPool("127.0.0.1", port, read_timeout_seconds=0.1)
        with pytest.raises(UpstreamTimeoutError):
            await _get(pool)
        await pool.aclose()
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\npart"]) as (port, _, _):
        pool = UpstreamPool("127.0.0.1", port, read_timeout_seconds=0.1)
        response = await pool.request(GET, method="GET")
        with pytest.raises(UpstreamTimeoutError):
            async for _ in response.chunks():
                pass
        response.release()
        await pool.aclose()


async def test_slots_bound_connections() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], hold=0.3) as (port, _, conns):
        pool = UpstreamPool("127.0.0.1", port, max_connections=1, connect_timeout_seconds=0.1)
        first = asyncio.create_task(_get(pool))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeoutError):
            await _get(pool)
        assert (await first)[2] == b"ok"
        assert conns[0] == 1
        await pool.aclose()


async def test_refused_is_502() -> None:
    async with raw_server([b""]) as (port, _, _):
        pass  # closed again: nothing listens on port now
    pool = UpstreamPool("127.0.0.1", port)
    with pytest.raises(UpstreamError) as info:
        await _get(pool)
    assert info.value.reason == "upstream_unreachable"


async def test_connection_close_header_not_reused() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"]) as (port, _, conns):
        pool = UpstreamPool("127.0.0.1", port)
        assert (await _get(pool))[2] == b"ok"
        assert (await _get(pool))[2] == b"ok"
        assert conns[0] == 2
        await pool.aclose()


@asynccontextmanager
async def one_answer_per_connection() -> AsyncIterator[tuple[int, list[int]]]:
    """Answers the first request on a connection (keep-alive, as far as the client can tell),
    then closes the connection when the second request arrives, without answering it."""
    conns = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns[0] += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], conns
    finally:
        server.close()


async def test_stale_pooled_connection_detected_and_proxy_retries() -> None:
    async with one_answer_per_connection() as (port, conns):
        pool = UpstreamPool("127.0.0.1", port)
        assert (await _get(pool))[2] == b"ok"
        with pytest.raises(StaleConnection):
            await _get(pool)  # reused, and the upstream closed it without a byte
        await pool.aclose()

        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"",
                 "headers": [], "client": ("127.0.0.1", 1), "scheme": "http"}
        for _ in range(2):  # the second request meets the stale connection and is retried once
            sent.clear()
            await proxy(scope, receive, send)
            assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"
        assert conns[0] == 3  # 1 (pool above) + 1 + the fresh one of the retry
        await proxy.aclose()
