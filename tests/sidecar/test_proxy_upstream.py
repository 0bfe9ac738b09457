"""The sidecar's upstream forwarding (:class:`~samtykke_gateway.sidecar.proxy.UpstreamProxy`, aiohttp's
client) against scripted raw TCP servers on 127.0.0.1: framing variants, interim responses,
keep-alive reuse, stale pooled connections, malformed answers, timeouts, the exact request the
upstream receives, TLS, a client that goes away. Nothing from aiohttp/asyncio may leak: every
failure is an :class:`UpstreamError` with no chained foreign exception."""

from __future__ import annotations

import asyncio
import datetime
import errno
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from samtykke_gateway.exceptions import UpstreamError, UpstreamTimeoutError
from samtykke_gateway.sidecar.proxy import UpstreamProxy
from samtykke_gateway.dev.issuer import DevIssuer
from tests.support import a3_headers, running_gateway, tax_base_path
import threading
import time
from tests.body_support import Echo
from tests.body_support import BODY_OVERRIDES, BODY, Served, raw_head

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as received: head, then the body its framing announces."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"\r\ncontent-length:" in lower:
        n = int(lower.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
        return head + await reader.readexactly(n)
    if b"\r\ntransfer-encoding: chunked" in lower:
        return head + await reader.readuntil(b"0\r\n\r\n")
    return head


@asynccontextmanager
async def listening(handle: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def raw_server(answers: list[bytes], *, close_after: bool = False, hold: float = 0.0,
                     tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[bytes], list[int]]]:
    """Answer the n-th request on a connection with ``answers[n]`` (cycling).

    Yields ``(port, requests received (head + body bytes), connection count box)``.
    """
    requests: list[bytes] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                requests.append(await _read_request(reader))
                if hold:
                    await asyncio.sleep(hold)
                writer.write(answers[(len(requests) - 1) % len(answers)])
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async with listening(handle, tls=tls) as port:
        yield port, requests, connections


def _scope(method: str = "GET", path: bytes = b"/x", query: bytes = b"",
           headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path.decode("latin-1"), "raw_path": path,
            "query_string": query, "headers": headers or [], "client": ("127.0.0.1", 1), "scheme": "http"}


async def call(proxy: UpstreamProxy, method: str = "GET", *, path: bytes = b"/x", query: bytes = b"",
               headers: list[tuple[bytes, bytes]] | None = None, body: list[bytes] | None = None,
               send: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
               ) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[dict[str, Any]]]:
    """Drive the proxy as the middleware does. Returns ``(status, headers, body, messages)``."""
    parts = list(body or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            chunk = parts.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)
        if send is not None:
            await send(message)

    await proxy(_scope(method, path, query, headers), receive, collect)
    assert sent[0]["type"] == "http.response.start"
    assert [m.get("more_body", False) for m in sent[1:]][-1] is False
    return sent[0]["status"], sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:]), sent


def _no_leak(exc: BaseException) -> None:
    assert isinstance(exc, UpstreamError)
    assert not isinstance(exc, aiohttp.ClientError | OSError)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


# ---------------------------------------------------------------------------- framing, keep-alive


async def test_content_length_keepalive_reuses_connection() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]) as (port, requests, conns):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        for _ in range(3):
            status, _, body, _ = await call(proxy)
            assert (status, body) == (200, b"hello")
        assert conns[0] == 1 and len(requests) == 3
        await proxy.aclose()


async def test_chunked_and_interim_response() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    async with raw_server([answer]) as (port, _, conns):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        status, headers, body, _ = await call(proxy)
        assert status == 200 and body == b"abcde" and (b"x-a", b"1") in headers
        assert not any(n.lower() == b"transfer-encoding" for n, _ in headers)  # hop-by-hop
        assert (await call(proxy))[2] == b"abcde"
        assert conns[0] == 1
        await proxy.aclose()


async def test_close_delimited_body() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close"], close_after=True) as (
        port, _, conns
    ):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        assert (await call(proxy))[2] == b"until-close"
        assert (await call(proxy))[2] == b"until-close"
        assert conns[0] == 2  # never reused after Connection: close
        await proxy.aclose()


async def test_head_response_has_no_body_and_connection_stays_in_step() -> None:
    answers = [b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nget"]
    async with raw_server(answers) as (port, requests, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        status, headers, body, _ = await call(proxy, "HEAD")
        assert (status, headers, body) == (200, [(b"content-length", b"999")], b"")
        assert (await call(proxy))[2] == b"get"  # the next answer is the GET's own
        assert requests[0].startswith(b"HEAD /x ") and requests[1].startswith(b"GET /x ")
        await proxy.aclose()


async def test_connection_close_header_not_reused() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"]) as (port, _, conns):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        assert (await call(proxy))[2] == b"ok"
        assert (await call(proxy))[2] == b"ok"
        assert conns[0] == 2
        await proxy.aclose()


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("answer", [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"])
async def test_malformed_answer_is_502(answer: bytes) -> None:
    async with raw_server([answer]) as (port, _, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamError) as info:
            await call(proxy)
        assert info.value.status_code == 502 and info.value.reason == "upstream_bad_response"
        _no_leak(info.value)
        await proxy.aclose()


async def test_truncated_body_is_502() -> None:
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"], close_after=True) as (port, _, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamError) as info:
            await call(proxy)
        assert info.value.reason == "upstream_broken"
        _no_leak(info.value)
        await proxy.aclose()


async def test_timeouts_are_504() -> None:
    async with raw_server([OK], hold=1.0) as (port, _, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}", timeout_seconds=0.1)
        with pytest.raises(UpstreamTimeoutError) as info:
            await call(proxy)
        _no_leak(info.value)
        await proxy.aclose()
    async with raw_server([b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\npart"]) as (port, _, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}", timeout_seconds=0.1)
        sent: list[dict[str, Any]] = []

        async def keep(message: dict[str, Any]) -> None:
            sent.append(message)

        with pytest.raises(UpstreamTimeoutError) as info:
            await proxy(_scope(), _no_body, keep)
        assert info.value.status_code == 504 and info.value.reason == "upstream_timeout"
        _no_leak(info.value)
        assert sent[0]["status"] == 200 and sent[1]["body"] == b"part"  # the stall came after
        await proxy.aclose()


async def test_trickling_body_hits_the_deadline() -> None:
    # every read arrives within timeout_seconds, the whole body does not: 504 at the deadline
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        try:
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        writer.close()

    async with listening(trickle) as port:
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}", timeout_seconds=0.3, deadline_seconds=0.6)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError) as info:
            await call(proxy)
        elapsed = asyncio.get_running_loop().time() - started
        assert info.value.status_code == 504 and info.value.reason == "upstream_timeout"
        assert 0.5 < elapsed < 3.0  # the deadline, not 100 reads x 0.05 s (5 s)
        _no_leak(info.value)
        await proxy.aclose()


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_slots_bound_connections() -> None:
    async with raw_server([OK], hold=0.3) as (port, _, conns):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}", max_connections=1, connect_timeout_seconds=0.1)
        first = asyncio.create_task(call(proxy))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeoutError) as info:
            await call(proxy)
        _no_leak(info.value)
        assert (await first)[2] == b"ok"
        assert conns[0] == 1
        await proxy.aclose()


async def test_connect_bounded_when_a_slot_is_free() -> None:
    """A TLS handshake the upstream never answers is bounded by the connect timeout, though
    no wait for a slot was needed."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async with listening(silent) as port:
        proxy = UpstreamProxy(f"https://127.0.0.1:{port}", connect_timeout_seconds=0.2, timeout_seconds=5)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeoutError) as info:
            await call(proxy)
        assert asyncio.get_running_loop().time() - started < 2
        _no_leak(info.value)
        await proxy.aclose()


async def test_refused_is_502() -> None:
    async with raw_server([b""]) as (port, _, _):
        pass  # closed again: nothing listens on port now
    proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamError) as info:
        await call(proxy)
    assert info.value.reason == "upstream_unreachable"
    _no_leak(info.value)
    await proxy.aclose()


async def test_reset_before_answer_is_502() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async with listening(reset) as port:
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamError) as info:
            await call(proxy, "POST", headers=[(b"content-length", b"2")], body=[b"hi"])
        assert info.value.status_code == 502
        _no_leak(info.value)
        await proxy.aclose()


@asynccontextmanager
async def one_answer_per_connection() -> AsyncIterator[tuple[int, list[int], list[bytes]]]:
    """Answers the first request on a connection (keep-alive, as far as the client can tell),
    then closes the connection when the second request's head arrives, without answering it."""
    conns = [0]
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns[0] += 1
        try:
            heads.append(await _read_request(reader))
            writer.write(OK)
            await writer.drain()
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async with listening(handle) as port:
        yield port, conns, heads


async def test_stale_pooled_connection_is_retried_once_for_get() -> None:
    async with one_answer_per_connection() as (port, conns, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        for _ in range(2):  # the second request meets the stale connection and is retried once
            status, _, body, _ = await call(proxy)
            assert (status, body) == (200, b"ok")
        assert conns[0] == 2  # 1 + the fresh one of the retry
        await proxy.aclose()


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_stale_pooled_connection_not_retried_with_a_body(method: str) -> None:
    """The body has been read from the client: it is never replayed (502 instead)."""
    async with one_answer_per_connection() as (port, conns, heads):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        assert (await call(proxy))[0] == 200
        with pytest.raises(UpstreamError) as info:
            await call(proxy, method, headers=[(b"content-length", b"4")], body=[b"data"])
        assert info.value.status_code == 502
        _no_leak(info.value)
        assert conns[0] == 1 and len(heads) == 2
        await proxy.aclose()


# ---------------------------------------------------------------------------- what the upstream receives


async def test_request_is_forwarded_exactly() -> None:
    """Raw path and query byte for byte, no header of the client library's own, Expect
    dropped, Host rewritten, X-Forwarded-* set."""
    async with raw_server([OK]) as (port, requests, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}/base/")
        headers = [(b"host", b"gw.example"), (b"expect", b"100-continue"), (b"x-end", b"kept"),
                   (b"x-utf8", "Ærlig å".encode()), (b"content-length", b"4")]
        request = call(proxy, "POST", path=b"/a%2Fb/%7E~/c%20d", query=b"x=%2F&y=1&y=2", headers=headers,
                       body=[b"da", b"ta"])
        await asyncio.wait_for(request, timeout=5)  # a forwarded Expect would wait for a 100
        head, _, body = requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /base/a%2Fb/%7E~/c%20d?x=%2F&y=1&y=2 HTTP/1.1"
        names = [line.split(b":")[0].lower() for line in lines[1:]]
        assert sorted(names) == sorted([b"host", b"x-end", b"x-utf8", b"content-length", b"x-forwarded-for",
                                        b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host"])
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        assert fields[b"host"] == f"127.0.0.1:{port}".encode()
        assert fields[b"x-utf8"] == "Ærlig å".encode()
        assert fields[b"x-forwarded-host"] == b"gw.example" and fields[b"x-forwarded-for"] == b"127.0.0.1"
        assert fields[b"x-real-ip"] == b"127.0.0.1"
        assert body == b"data"
        await proxy.aclose()


async def test_chunked_request_body_is_rechunked() -> None:
    async with raw_server([OK]) as (port, requests, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        await call(proxy, "POST", headers=[(b"transfer-encoding", b"chunked")], body=[b"abc", b"de"])
        head, _, body = requests[0].partition(b"\r\n\r\n")
        assert b"\r\nTransfer-Encoding: chunked" in head and b"content-length" not in head.lower()
        assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        await proxy.aclose()


async def test_non_ascii_query_bytes_are_percent_encoded() -> None:
    async with raw_server([OK]) as (port, requests, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        await call(proxy, query=b"q=\xe6\xf8 x")
        assert requests[0].startswith(b"GET /x?q=%E6%F8%20x HTTP/1.1\r\n")
        await proxy.aclose()


async def test_no_redirects_no_cookies_no_decompression(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redirect reaches the client as is; a cookie the upstream sets is never sent back on
    a later request; a compressed body passes compressed; proxy variables are ignored."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    packed = gzip.compress(b'{"a": 1}')
    answers = [b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\nset-cookie: s=upstream-secret\r\ncontent-length: 0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%b" % (len(packed), packed)]
    async with raw_server(answers) as (port, requests, _):
        proxy = UpstreamProxy(f"http://localhost:{port}")  # a cookie jar would ignore one from an IP
        status, headers, _, _ = await call(proxy)
        assert status == 302 and (b"location", b"/elsewhere") in headers
        status, headers, body, _ = await call(proxy, path=b"/y")
        assert status == 200 and body == packed and (b"content-encoding", b"gzip") in headers
        assert len(requests) == 2 and b"cookie" not in requests[1].lower()
        await proxy.aclose()


async def test_client_gone_stops_reading_the_upstream() -> None:
    """When the middleware's send raises OSError (client gone), the proxy stops and closes the
    upstream connection instead of reading the rest."""
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n" + b"x" * 65536)
        try:
            while True:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), timeout=5) == b"":
                    closed.set()
                    return
        except (ConnectionError, TimeoutError):
            closed.set()
        finally:
            writer.close()

    async def gone(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("client gone")

    async with listening(endless) as port:
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        with pytest.raises(OSError, match="client gone"):
            await call(proxy, send=gone)
        await asyncio.wait_for(closed.wait(), timeout=3)
        await proxy.aclose()


# ---------------------------------------------------------------------------- TLS


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a self-signed certificate for 127.0.0.1, client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_upstream(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_pair(tmp_path)
    async with raw_server([OK], tls=server_tls) as (port, requests, _):
        untrusting = UpstreamProxy(f"https://127.0.0.1:{port}")  # system trust store
        with pytest.raises(UpstreamError) as info:
            await call(untrusting)
        assert info.value.reason == "upstream_unreachable"
        _no_leak(info.value)
        await untrusting.aclose()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls), auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            proxy = UpstreamProxy(f"https://127.0.0.1:{port}", session=session)
            assert (await call(proxy))[:3:2] == (200, b"ok")
            await proxy.aclose()  # not its session: left open for its owner
            assert not session.closed
        assert requests[0].startswith(b"GET /x HTTP/1.1\r\n")


async def test_aclose_closes_only_what_it_created() -> None:
    async with raw_server([OK]) as (port, _, _):
        proxy = UpstreamProxy(f"http://127.0.0.1:{port}")
        await proxy.aclose()  # nothing created yet
        assert (await call(proxy))[0] == 200
        session = proxy._session
        assert session is not None
        await proxy.aclose()
        await proxy.aclose()
        assert session.closed


# ---------------------------------------------------------------------------- out of file descriptors

_FD_SCRIPT = r'''
import asyncio, json, os, resource, sys
import httpx
from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.issuer import DevIssuer
from tests.proxy_support import SCOPED_PATH, TAX_BASE_2022 as PAYLOAD, answer_lifespan
from tests.support import a3_headers, make_config

async def upstream(scope, receive, send):  # answers, and closes: no pooled connection to reuse
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(PAYLOAD)),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": PAYLOAD})

async def main():
    issuer = DevIssuer()
    with ThreadedServer(issuer.asgi_app()) as iss, ThreadedServer(upstream) as up:
        sidecar = SidecarApp(make_config(iss.url, up.url))
        out = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sidecar), base_url="http://gw") as client:
            headers = a3_headers(issuer)
            await sidecar.gateway.start()
            out["before"] = (await client.get(SCOPED_PATH, headers=headers)).status_code
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
            held = []
            try:
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                out["filled"] = exc.errno
            response = await client.get(SCOPED_PATH, headers=headers)
            out["exhausted"] = [response.status_code, response.json().get("reason")]
            records = sidecar.gateway.store.records
            out["record"] = [records[-1].reason, records[-1].status]
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            out["after"] = (await client.get(SCOPED_PATH, headers=headers)).status_code
        await sidecar.shutdown()
        await sidecar.gateway.close()
    print(json.dumps(out))

asyncio.run(main())
'''


def test_out_of_file_descriptors_is_503_with_its_own_reason_not_upstream_unreachable() -> None:
    """Issue 16: with the fd table full, the upstream connection cannot be opened; the fault run
    saw 502 ``upstream_unreachable`` (the wrong cause). A real ``EMFILE`` from the kernel (a
    subprocess with a lowered ``RLIMIT_NOFILE``, every descriptor taken) through real aiohttp."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run([sys.executable, "-c", _FD_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == 200
    assert out["filled"] == errno.EMFILE
    assert out["exhausted"] == [503, "gateway_out_of_file_descriptors"]
    assert out["record"] == ["gateway_out_of_file_descriptors", 503]
    assert out["after"] == 200  # nothing sticks once descriptors are free again


@pytest.mark.anyio
async def test_sidecar_trickling_upstream_is_504_at_the_deadline(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Found by a fresh user: ``timeout_seconds`` is per read, so an upstream sending one byte
    a second held the bank's request for minutes. ``deadline_seconds`` bounds the exchange."""
    import asyncio
    import time

    from samtykke_gateway.dev.examples import example_body

    body = example_body("spesifisertsummertskattegrunnlag-2022.json")
    over = threading.Event()  # set when the test is over: the trickle stops

    async def trickling(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        for i in range(0, len(body), 64):
            if over.is_set():
                return
            await send({"type": "http.response.body", "body": body[i:i + 64], "more_body": True})  # type: ignore[operator]
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    upstream = {"timeout_seconds": 0.5, "deadline_seconds": 1.0}
    async with running_gateway("sidecar", issuer_url, upstream_app=trickling, upstream=upstream) as gw:
        started = time.monotonic()
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert elapsed < 4.0  # not the 6 s the trickle takes
        assert "personidentifikator" not in response.text
        record = gw.records[-1]
        assert (record.decision, record.reason, record.status) == ("error", "upstream_timeout", 504)
        over.set()


@pytest.mark.anyio
async def test_deadline_cuts_a_streamed_answer_visibly(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """An unscoped answer trickling past [upstream] deadline_seconds: the client gets the head
    and the parts so far, then the connection ends without the last chunk (never a clean,
    complete-looking body), within about the deadline."""

    async def trickle(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(100):
            if over.is_set():
                return
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})

    over = threading.Event()  # set when the test is over: the trickle stops
    merged = {**BODY_OVERRIDES, "upstream": {"timeout_seconds": 0.3, "deadline_seconds": 1.0}}
    async with running_gateway("sidecar", issuer_url, upstream_app=trickle, **merged) as gw:
        gwe = Served("sidecar", str(gw.client.base_url).rstrip("/"), Echo(), gw.store)
        started = time.monotonic()
        raw = gwe.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", a3_headers(dev_issuer)["Authorization"]),
                                                       ("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(BODY)))]), BODY, timeout=10)
        elapsed = time.monotonic() - started
        assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
        assert b"transfer-encoding: chunked" in raw.lower()
        assert not raw.endswith(b"0\r\n\r\n"), raw[-50:]
        assert elapsed < 4, elapsed
        over.set()
