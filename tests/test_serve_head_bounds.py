"""``serve``'s uvicorn protocol bounds request heads in size and time
(``serve.bounded_http_options``); the sidecar on a real server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from samtykke_gateway.app import SidecarApp
from samtykke_gateway.devserver import ThreadedServer
from samtykke_gateway.serve import MAX_HEAD_BYTES, bounded_http_options
from samtykke_gateway.testing import DevIssuer

from .proxy_support import SCOPED_PATH, LabUpstream
from .support import a3_headers, make_config


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
def sidecar(issuer_url: str):  # type: ignore[no-untyped-def]
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
