"""``serve``'s uvicorn protocol bounds request heads in size and time, and connections in time
(``serve.bounded_http_options``); the sidecar on a real server on 127.0.0.1. Early answers
before a declared body has arrived close the connection (issue 16: a silent or trickling client
held them until the process ran out of file descriptors), in both forms and under both uvicorn
protocols."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
import socket
import time

import pytest

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.sidecar.serve import MAX_HEAD_BYTES, bounded_http_options
from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import SCOPED_PATH, STREAM_PATH, UNSCOPED_ROUTE, LabUpstream, answer_lifespan
from tests.support import TAX_BASE_PERSON, a3_headers, make_config
from tests.config.test_subject import ROUTES as BODY_ROUTES


def _exchange(port: int, data: bytes, *, trickle: float = 0.0, timeout: float = 8.0) -> tuple[bytes, float]:
    """Send ``data`` (a byte every ``trickle`` seconds when set); return what came back and
    when the server closed, in seconds."""
    started = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            if trickle:
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
                    time.sleep(trickle)
            else:
                sock.sendall(data)
            while chunk := sock.recv(65536):
                out += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    return out, time.monotonic() - started


@pytest.fixture
def sidecar(issuer_url: str) -> Iterator[ThreadedServer]:
    with ThreadedServer(LabUpstream()) as upstream:
        app = SidecarApp(make_config(issuer_url, upstream.url))
        with ThreadedServer(app, **bounded_http_options(head_timeout_seconds=1.0)) as server:
            yield server


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_protocol_is_httptools_based() -> None:
    assert bounded_http_options()["http"].__name__ == "BoundedHttpToolsProtocol"


def test_oversized_head_is_400_and_closed(sidecar: ThreadedServer) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
    out, _ = _exchange(sidecar.port, head)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]


def test_many_small_headers_count_too(sidecar: ThreadedServer) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20000)) + b"\r\n"
    out, _ = _exchange(sidecar.port, head)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]


def test_trickled_head_is_cut_after_the_timeout(sidecar: ThreadedServer) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    out, elapsed = _exchange(sidecar.port, head, trickle=0.02)  # ~4.5 s at this rate
    assert out == b"" and elapsed < 3, (out[:100], elapsed)


def test_silent_connection_is_closed(sidecar: ThreadedServer) -> None:
    out, elapsed = _exchange(sidecar.port, b"")
    assert out == b"" and elapsed < 3


def test_normal_requests_pass(sidecar: ThreadedServer, dev_issuer: DevIssuer) -> None:
    auth = a3_headers(dev_issuer)["Authorization"]
    head = (f"GET {SCOPED_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            "X-Padding: " + "p" * 30000 + "\r\nConnection: close\r\n\r\n").encode()
    out, _ = _exchange(sidecar.port, head)
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]


def test_one_endless_header_value_is_cut_while_it_arrives(sidecar: ThreadedServer) -> None:
    """llhttp hands a header value over only when it ends, so counting in ``on_header`` alone
    let one value grow without bound (a review sent 77 MB; memory and the event loop suffered):
    raw bytes are counted while a head is open."""
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent < 50 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
    assert sent < 8 * 1024 * 1024, sent  # cut long before the 50 MB
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:100]


def test_bytes_after_a_request_start_a_new_head_timeout(sidecar: ThreadedServer, dev_issuer: DevIssuer) -> None:
    """A bare CRLF after an answered request cancels uvicorn's keep-alive timer without
    starting a request (llhttp skips it): the head timeout must still close the connection."""
    auth = a3_headers(dev_issuer)["Authorization"]
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=8) as sock:
        sock.sendall(f"GET {SCOPED_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        time.sleep(0.3)
        sock.sendall(b"\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < 4  # head timeout 1 s here (uvicorn's keep-alive: 5 s)


# ---------------------------------------------------------------- early answers, idle bodies

SHORT: dict[str, Any] = {"gateway": {"max_request_body_bytes": 1024, "request_body_timeout_seconds": 0.3},
         "routes": [*BODY_ROUTES, UNSCOPED_ROUTE]}
PROTOCOLS: dict[str, Callable[[], dict[str, Any]]] = {"httptools": lambda: bounded_http_options(keep_alive_seconds=1.0, body_idle_timeout_seconds=0.5),
             "h11": lambda: {"http": "h11", "timeout_keep_alive": 1.0}}


def _early(kind: str, dev_issuer: DevIssuer) -> bytes:
    """A request head declaring a 100 000-byte body, and its first bytes, that the gateway
    answers before the body has arrived."""
    auth = a3_headers(dev_issuer)["Authorization"]
    heads = {
        "400": f"GET {SCOPED_PATH} HTTP/1.1\r\nAuthorization: {auth}\r\n",  # GET with a body
        "401": f"POST {STREAM_PATH} HTTP/1.1\r\n",  # no token
        "405": f"POST {SCOPED_PATH} HTTP/1.1\r\nAuthorization: {auth}\r\n",  # GET-only route
        "413": f"POST /api/b/sbl/2022 HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n",
    }
    return (heads[kind] + "Host: x\r\nContent-Length: 100000\r\n\r\n").encode() + b'{"fnr": "'


def _held(port: int, request: bytes, *, then: bytes = b"", timeout: float = 3.0) -> tuple[bytes, float | None]:
    """Send ``request``; once the answer has come, send ``then`` (the client trickling on) and
    wait for the server to close. :returns: (what came back, seconds until the close; ``None``
    while still open after ``timeout``)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        started = time.monotonic()
        try:
            while b"\r\n\r\n" not in out:
                chunk = sock.recv(65536)
                if not chunk:
                    return out, time.monotonic() - started
                out += chunk
            if then:
                sock.sendall(then)
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            return out, None
        except (BrokenPipeError, ConnectionResetError):
            pass
    return out, time.monotonic() - started


@pytest.fixture(params=sorted(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "httptools" and "HttpToolsProtocol" not in str(bounded_http_options()):
        pytest.skip("httptools not installed")
    return PROTOCOLS[request.param]()


@pytest.mark.parametrize("status", ["400", "401", "405", "413"])
@pytest.mark.parametrize("then", [b"", b"x"], ids=["silent", "trickling"])
def test_early_answer_before_the_body_closes_the_connection_in_the_sidecar(
        issuer_url: str, dev_issuer: DevIssuer, protocol: dict[str, Any], status: str, then: bytes) -> None:
    with ThreadedServer(LabUpstream()) as upstream, \
            ThreadedServer(SidecarApp(make_config(issuer_url, upstream.url, **SHORT)), **protocol) as server:
        out, closed_after = _held(server.port, _early(status, dev_issuer), then=then)
    assert out.startswith(f"HTTP/1.1 {status} ".encode()), out[:200]
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert closed_after is not None and closed_after < 0.5, closed_after  # not the keep-alive 1 s


@pytest.mark.parametrize("then", [b"", b"x"], ids=["silent", "trickling"])
def test_body_timeout_answer_closes_the_connection(issuer_url: str, dev_issuer: DevIssuer,
                                                   protocol: dict[str, Any], then: bytes) -> None:
    """408: the body-subject route waited its 0.3 s for a body that stopped half-way."""
    auth = a3_headers(dev_issuer)["Authorization"]
    request = (f"POST /api/b/sbl/2022 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
               "Content-Type: application/json\r\nContent-Length: 30\r\n\r\n").encode() + b'{"fnr": "'
    with ThreadedServer(LabUpstream()) as upstream, \
            ThreadedServer(SidecarApp(make_config(issuer_url, upstream.url, **SHORT)), **protocol) as server:
        out, closed_after = _held(server.port, request, then=then)
    assert out.startswith(b"HTTP/1.1 408 "), out[:200]
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert closed_after is not None and closed_after < 0.5, closed_after


def test_early_answer_in_the_middleware_form_says_connection_close(
        issuer_url: str, dev_issuer: DevIssuer, protocol: dict[str, Any]) -> None:
    """The middleware cannot close a connection itself: it asks the server to, and the server
    (uvicorn, either protocol) does."""
    middleware = ConsentMiddleware(LabUpstream(), config=make_config(issuer_url, "http://upstream.invalid", **SHORT))
    with ThreadedServer(middleware, **protocol) as server:
        out, closed_after = _held(server.port, _early("401", dev_issuer), then=b"x")
    assert out.startswith(b"HTTP/1.1 401 "), out[:200]
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert closed_after is not None and closed_after < 0.5, closed_after


def test_an_answer_to_a_complete_request_keeps_the_connection(issuer_url: str, dev_issuer: DevIssuer,
                                                               protocol: dict[str, Any]) -> None:
    """No ``Connection: close`` when the body was read to its end: keep-alive still works."""
    auth = a3_headers(dev_issuer)["Authorization"]
    body = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
    request = (f"POST /api/b/sbl/2021 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with ThreadedServer(LabUpstream()) as upstream, \
            ThreadedServer(SidecarApp(make_config(issuer_url, upstream.url, **SHORT)), **protocol) as server:
        out, closed_after = _held(server.port, request)
    assert out.startswith(b"HTTP/1.1 403 "), out[:200]  # 2021 is not consented: answered after the body
    assert b"connection: close" not in out.lower()
    assert closed_after is not None and 0.8 < closed_after < 2.5, closed_after  # the 1 s keep-alive


class _EarlyOk:
    """An app that answers 200 without reading the request body (not the gateway's own answer:
    no ``Connection: close`` from anyone), or, with ``read=True``, reads it first; ``seen`` gets
    the receive messages."""

    def __init__(self, *, read: bool = False, read_after: float = 0.0) -> None:
        self.read = read
        self.read_after = read_after
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        import asyncio

        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        size = 0
        if self.read:
            await asyncio.sleep(self.read_after)
            while True:
                message = await receive()  # type: ignore[operator]
                self.seen.append(message["type"])
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        body = b"%d" % size
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_any_answer_before_the_body_ended_closes_the_connection() -> None:
    """uvicorn alone kept it open while the client trickled (each byte cancels its keep-alive
    timer, which only the next answer arms again)."""
    with ThreadedServer(_EarlyOk(), **bounded_http_options(keep_alive_seconds=1.0)) as server:
        out, closed_after = _held(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab",
                                  then=b"x")
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert closed_after is not None and closed_after < 0.5, closed_after


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_a_body_that_stops_half_way_is_cut_after_the_idle_deadline() -> None:
    app = _EarlyOk(read=True)
    with ThreadedServer(app, **bounded_http_options(body_idle_timeout_seconds=0.3)) as server:
        out, closed_after = _held(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
    assert out == b""
    assert closed_after is not None and closed_after < 1.5, closed_after
    assert app.seen[-1] == "http.disconnect"


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_the_body_idle_deadline_waits_while_the_app_has_not_read() -> None:
    """uvicorn stops reading once 64 KiB wait unread: the client is held back by the server,
    not idle, so the deadline does not cut it."""
    body = b"b" * 400_000
    app = _EarlyOk(read=True, read_after=0.8)
    with ThreadedServer(app, **bounded_http_options(body_idle_timeout_seconds=0.2)) as server:
        out, _ = _held(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert out.endswith(b"\r\n\r\n400000")


def _send_all_then_read(port: int, body_bytes: int) -> bytes:
    """POST a large body as most HTTP clients do (httpx, requests): write the whole request, then
    read the answer. :returns: what came back (b"" when the write failed: the answer is lost)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_bytes)
            for _ in range(body_bytes // 8192):
                sock.sendall(b"b" * 8192)
                time.sleep(0.0005)  # the server answers while the body is on its way
            while chunk := sock.recv(65536):
                out += chunk
        except (BrokenPipeError, ConnectionResetError):
            return b""
    return out


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_an_early_answer_reaches_a_client_still_sending_its_body() -> None:
    """A lingering close: the answer, a FIN, then what the client still sends is dropped (at most
    ``linger_seconds`` / ``linger_bytes``). Closing at once with unread bytes made the kernel
    reset the connection and the client lost the 413 it was being sent (a flaky test showed it)."""
    with ThreadedServer(_EarlyOk(), **bounded_http_options(linger_seconds=1.0)) as server:
        outs = [_send_all_then_read(server.port, 600_000) for _ in range(3)]
    assert all(out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\n0") for out in outs), outs


@pytest.mark.skipif("HttpToolsProtocol" not in str(bounded_http_options()), reason="httptools not installed")
def test_the_linger_after_an_early_answer_is_bounded_in_bytes_and_time() -> None:
    with ThreadedServer(_EarlyOk(), **bounded_http_options(linger_seconds=0.3, linger_bytes=10_000_000)) as server:
        out, closed_after = _held(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nab",
                                  then=b"x" * 1000)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert closed_after is not None and closed_after < 1.0, closed_after
