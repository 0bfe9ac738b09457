"""A lean HTTP/1.1 client for one upstream origin: keep-alive pool, llhttp parsing (httptools).

Why not a general client: the sidecar sends every request to one origin, with headers it has
already validated and serialised as ASGI bytes. aiohttp's ``ClientSession.request`` spent more
time per request (request object, auto headers, cookie jar, tracing, three writes) than all of
the gateway's checks together (``BENCHMARKS.md``). This client writes one buffer per request
head and parses responses with the same C parser uvicorn uses.

Scope (RFC 9112): ``Content-Length`` and chunked responses, and close-delimited ones (§6.3
rule 8); 1xx interim responses are skipped (§15.2); HEAD, 204 and 304 carry no body (§6.3
rules 1–2); a connection is reused only after a complete response the upstream allows to keep
alive, and only for ``keepalive_seconds``; a reused connection that the upstream had already
closed (nothing answered) is reported as :class:`StaleConnection` so an idempotent request can
be retried on a fresh one. Not supported: upgrades (101), CONNECT, HTTP/2, proxies.

Errors are the gateway's own: :class:`UpstreamError` (502: refused, reset, malformed response)
and :class:`UpstreamTimeoutError` (504: connect, response head, or a body read took longer than
its bound). Nothing from :mod:`asyncio`/:mod:`ssl`/:mod:`httptools` leaves this module.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator

import httptools

from .exceptions import UpstreamError, UpstreamTimeoutError

__all__ = ["StaleConnection", "UpstreamPool", "UpstreamResponse"]

_HIGH_WATER = 256 * 1024  # pause reading from the upstream when this much body is queued
_LOW_WATER = 64 * 1024


class StaleConnection(UpstreamError):
    """A pooled connection was closed by the upstream before any response byte arrived."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; state of at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.begin(head_only=False)

    # -- exchange state
    def begin(self, *, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False
        self.head: asyncio.Future[None] | None = None
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.read_paused = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.got_bytes = False
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None:  # bytes while idle: the connection is out of step
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the data API switched protocols", reason="upstream_bad_response"))
            self.close()
        except httptools.HttpParserError:
            self._fail(UpstreamError("malformed response from the data API", reason="upstream_bad_response"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is None or self.complete:
            return
        if self.status and not self.framed and not self.head_only:
            self.complete = True  # close-delimited body (RFC 9112 §6.3 rule 8)
            self._wake()
            return
        if not self.got_bytes and self.reused:
            self._fail(StaleConnection("pooled connection was closed", reason="upstream_unreachable"))
        else:
            self._fail(UpstreamError("the data API broke off", reason="upstream_broken"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # interim response: skipped, the final one follows
        self.status = status
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                self.framed = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self.head_only:  # the parser cannot be told "no body": finish here, never reuse
            self.complete = True
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.queued += len(body)
        if self.queued > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive() and not self.head_only
        self._wake()


class UpstreamResponse:
    """A response whose head has arrived. Iterate :meth:`chunks` for the body, then
    :meth:`release` (always, also on error: it returns or closes the connection).

    :attr status: HTTP status code.
    :attr headers: raw ``(name, value)`` byte pairs as received.
    """

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (none for HEAD/204/304).

        :raises UpstreamTimeoutError: (504) no data for ``read_timeout_seconds``.
        :raises UpstreamError: (502) the upstream broke off or sent garbage.
        """
        conn = self._conn
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.queued -= len(chunk)
                if conn.read_paused and conn.queued < _LOW_WATER and conn.transport is not None:
                    conn.read_paused = False
                    conn.transport.resume_reading()
                yield chunk
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            conn.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._pool.read_timeout_seconds):
                    await conn.waiter
            except TimeoutError:
                conn.close()
                raise UpstreamTimeoutError("the data API stalled", reason="upstream_timeout") from None
            finally:
                conn.waiter = None

    @property
    def at_end(self) -> bool:
        """``True`` once the whole body has arrived and been taken by :meth:`chunks`."""
        return self._conn.complete and not self._conn.chunks

    def release(self) -> None:
        """Give the connection back (complete, keep-alive) or close it. Idempotent."""
        if self._released:
            return
        self._released = True
        self._pool._release(self._conn)


class UpstreamPool:
    """Keep-alive connections to one origin.

    :param host: upstream host name or address.
    :param port: TCP port.
    :param tls: an :class:`ssl.SSLContext` for ``https`` (``None`` = plain TCP).
    :param max_connections: most connections open at once; more requests wait (at most
        ``connect_timeout_seconds``).
    :param keepalive_seconds: an idle connection older than this is closed, not reused (keep it
        below the upstream's own idle timeout; uvicorn's is 5 s).
    :param connect_timeout_seconds: bound on waiting for a free slot, and on the TCP/TLS connect.
    :param read_timeout_seconds: bound on the wait for the response head and for each body read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 256,
        keepalive_seconds: float = 4.0,
        connect_timeout_seconds: float = 3.0,
        read_timeout_seconds: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self._max = max_connections
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
            )
        except ssl.SSLError:
            raise UpstreamError("TLS to the data API failed", reason="upstream_unreachable") from None
        except OSError:
            raise UpstreamError("the data API is unreachable", reason="upstream_unreachable") from None
        return conn

    async def _acquire(self) -> _Connection:
        """A slot, then a fresh pooled connection or a new one; each wait is bounded by
        ``connect_timeout_seconds`` (raises :class:`TimeoutError`)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        if self._slots.locked():
            async with asyncio.timeout(self.connect_timeout_seconds):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # a slot is free: returns at once
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_seconds:
                conn.reused = True
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        conn.reused = False
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._slots is not None:
            self._slots.release()
        reusable = conn.complete and conn.keep_alive and not conn.closed and not conn.chunks and not self._closed
        conn.head = None
        if reusable:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def request(self, head: bytes, *, method: str, body: AsyncIterator[bytes] | None = None,
                      chunked: bool = False) -> UpstreamResponse:
        """Send one request; return once the response head has arrived.

        :param head: the serialised request line and header block, ending in ``\\r\\n\\r\\n``.
        :param method: the request method (``HEAD`` responses have no body).
        :param body: request body chunks; framed with chunked coding when ``chunked``, else sent
            as is (the head then carries ``Content-Length``).
        :raises StaleConnection: a reused connection was dead (retry on a fresh one if safe).
        :raises UpstreamError: (502) refused, reset, malformed response.
        :raises UpstreamTimeoutError: (504) no slot/connection in time or no response head in time.
        """
        try:
            conn = await self._acquire()
        except TimeoutError:
            raise UpstreamTimeoutError("no connection to the data API in time", reason="upstream_timeout") from None
        try:
            conn.begin(head_only=method == "HEAD")
            loop = asyncio.get_running_loop()
            conn.head = loop.create_future()
            transport = conn.transport
            if transport is None or transport.is_closing():
                raise StaleConnection("pooled connection was closed", reason="upstream_unreachable")
            transport.write(head)
            if body is not None:
                await _send_body(conn, transport, body, chunked=chunked)
            if not conn.head.done():
                try:
                    async with asyncio.timeout(self.read_timeout_seconds):
                        await conn.head
                except TimeoutError:
                    raise UpstreamTimeoutError("the data API did not answer in time", reason="upstream_timeout") from None
            if conn.error is not None:
                raise conn.error
            if not conn.status:
                raise UpstreamError("the data API broke off", reason="upstream_broken")
            return UpstreamResponse(self, conn)
        except BaseException:
            conn.close()
            self._release(conn)
            raise

    async def aclose(self) -> None:
        """Close idle connections; connections in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


async def _send_body(conn: _Connection, transport: asyncio.Transport, body: AsyncIterator[bytes], *,
                     chunked: bool) -> None:
    async for chunk in body:
        if conn.closed:
            break
        if chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)
        await conn.drain()
    if chunked and not conn.closed:
        transport.write(b"0\r\n\r\n")

