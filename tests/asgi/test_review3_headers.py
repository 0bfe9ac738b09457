"""Third fresh-user review: headers that reached the app or the upstream past the gateway's
checks. Real servers on loopback (the harness in ``tests/body_support.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit

import pytest

from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import SCOPED_PATH, STREAM_PATH, raw_exchange, routes_with_unscoped
from tests.proxy_support import served as lab_served
from tests.support import TAX_BASE_PERSON, a3_headers
from tests.body_support import BODY, MODES, raw_head, raw_status, served

pytestmark = pytest.mark.anyio


def _send_in_two_parts(url: str, first: bytes, second: bytes) -> bytes:
    """``first``, a pause (so the server has started the request), ``second``; then read all."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(first)
        time.sleep(0.4)
        sock.sendall(second)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            sock.settimeout(1.0)
            while chunk := sock.recv(65536):
                out += chunk
        return out


TRAILERS = (b"0\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nX-Injected: 1\r\n"
            b"X_Samtykke_Consumer: 888888888\r\nConnection: content-type\r\n\r\n")


@pytest.mark.parametrize("mode", MODES)
async def test_late_trailers_never_become_request_headers(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """uvicorn's parser appends chunk trailers to the live ``scope["headers"]`` while the body
    is read, after the gate took its copy of the header block: a trailer ``Content-Type``,
    ``Content-Encoding``, ``X-Samtykke-*`` or anything else must not reach the app."""
    auth = a3_headers(dev_issuer)["Authorization"]
    async with served(mode, issuer_url) as gw:
        head = raw_head("POST", "/api/b/sbl/2022", [("Authorization", auth), ("Content-Type", "application/json"),
                                                  ("Transfer-Encoding", "chunked")])
        first = head.encode("latin-1") + b"\r\n\r\n" + b"%x\r\n%s\r\n" % (len(BODY), BODY)
        raw = await asyncio.to_thread(_send_in_two_parts, gw.url, first, TRAILERS)
        assert raw_status(raw) == 200, raw[:300]
        [seen] = gw.echo.seen
        assert seen["body"] == BODY
        assert seen["headers"]["content-type"] == ["application/json"]
        for name in ("content-encoding", "x-injected", "x_samtykke_consumer"):
            assert name not in seen["headers"], (name, seen["headers"])


@pytest.mark.parametrize("mode", MODES)
async def test_trailers_read_with_the_head_are_checked_as_headers(mode: str, dev_issuer: DevIssuer,
                                                                  issuer_url: str) -> None:
    """When head, body and trailers arrive in one read, uvicorn has merged the trailers into
    the header list before the gate runs: the gate checks them like headers (here refused:
    ``Connection`` nominates ``Content-Type``), so nothing unchecked reaches the app."""
    auth = a3_headers(dev_issuer)["Authorization"]
    async with served(mode, issuer_url) as gw:
        raw = gw.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", auth), ("Content-Type", "application/json"),
                                                       ("Transfer-Encoding", "chunked")]),
                     b"%x\r\n%s\r\n" % (len(BODY), BODY) + TRAILERS)
        assert raw_status(raw) == 400, raw[:300]
        assert gw.echo.seen == []


@pytest.mark.parametrize("mode", MODES)
async def test_underscore_spellings_of_gateway_headers_are_dropped(mode: str, dev_issuer: DevIssuer,
                                                                   issuer_url: str) -> None:
    """A CGI/WSGI-style upstream reads ``X_Samtykke_Consumer`` as ``HTTP_X_SAMTYKKE_CONSUMER``,
    the gateway's own header: such spellings of every header the gateway sets or strips never
    pass (the sidecar's ``X-Forwarded-*`` included)."""
    forged = {
        "X_Samtykke_Consumer": "888888888",
        "X-Samtykke_Consent_Id": "forged",
        "X_Correlation_ID": "forged-correlation",
        "X_Original_URL": "/admin",
        "X_HTTP_Method_Override": "DELETE",
        "X_Forwarded_Prefix": "/evil",
    }
    if mode == "sidecar":  # the proxy sets X-Forwarded-*; in the middleware form they are the server's
        forged |= {"X_Forwarded_For": "10.9.9.9", "X_Forwarded_Host": "evil.example", "X_Forwarded_Proto": "gopher"}
    async with lab_served(mode, issuer_url) as gw:
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer), **forged})
        assert response.status_code == 200
        seen = gw.lab.requests[-1]["headers"]
        names = {k for k, _ in seen}
        leaked = {k for k in names if "_" in k}
        assert not leaked, leaked
        assert [v for k, v in seen if k == "x-samtykke-consumer"] == ["999999999"]
        assert "888888888" not in {v for _, v in seen}


def _send_and_leave(url: str, data: bytes) -> None:
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(data)
        time.sleep(0.5)  # the gateway has checked the tokens and started forwarding


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_client_leaving_mid_body_never_completes_the_upstream_request(
    framing: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """Sidecar: a client that closes its connection in the middle of a request body must not
    turn into a complete (shorter) request upstream — aiohttp used to end the chunked body with
    its final chunk. The record says ``client_disconnected`` (499); nothing was released."""
    part = b'{"betaling": 1000, "til": '
    async with lab_served("sidecar", issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        frame = ("Transfer-Encoding: chunked" if framing == "chunked" else "Content-Length: 1000")
        head = (f"POST {STREAM_PATH}?case=echo HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Content-Type: application/json\r\n{frame}\r\n\r\n").encode()
        body = b"%x\r\n%s\r\n" % (len(part), part) if framing == "chunked" else part
        await asyncio.to_thread(_send_and_leave, gw.url, head + body)
        for _ in range(100):
            if gw.records:
                break
            await asyncio.sleep(0.05)
        [record] = gw.records
        assert (record.decision, record.reason, record.status) == ("error", "client_disconnected", 499)
        assert record.released_bytes == 0
        await asyncio.sleep(0.3)
        assert all(r["cut"] for r in gw.lab.requests), gw.lab.requests


def _ask_and_leave(url: str, target: str, auth: str, after_seconds: float) -> None:
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        time.sleep(after_seconds)


@pytest.mark.parametrize("target", ["scoped", "unscoped"])
async def test_client_leaving_before_the_answer_cancels_the_upstream_request(
    target: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """Sidecar: the client gives up while the data API is slow (3 s). The upstream request is
    closed at once (no pooled connection held to the deadline), the record says
    ``client_disconnected`` (499) and the one-time consent is not spent: the next request with
    the same consent is answered."""
    routes = [dict(r, one_time=True) for r in routes_with_unscoped()]
    path = SCOPED_PATH if target == "scoped" else STREAM_PATH
    async with lab_served("sidecar", issuer_url, routes=routes) as gw:
        headers = a3_headers(dev_issuer)
        started = time.monotonic()
        await asyncio.to_thread(_ask_and_leave, gw.url, path + "?case=slow", headers["Authorization"], 0.5)
        for _ in range(100):
            if gw.records:
                break
            await asyncio.sleep(0.02)
        [record] = gw.records
        assert (record.decision, record.reason, record.status) == ("error", "client_disconnected", 499)
        assert time.monotonic() - started < 2.5  # not after the upstream's 3 s
        again = await gw.client.get(path + "?case=json", headers=headers)
        assert again.status_code == 200, again.text  # the one-time consent was not spent
        spent = await gw.client.get(path + "?case=json", headers=headers)
        assert spent.status_code == 403 and spent.json()["reason"] == "consent_spent"


async def test_405_names_the_allowed_methods(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """RFC 9110 §15.5.6: a 405 carries ``Allow``."""
    async with lab_served("sidecar", issuer_url) as gw:
        response = await gw.client.delete(SCOPED_PATH, headers=a3_headers(dev_issuer))
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "HEAD"}
        assert "DELETE" not in response.headers["allow"]


async def test_repeated_subject_header_or_parameter_is_named_as_such(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Two subject headers (or query parameters) are a 400 that says so, not ``subject_missing``."""
    base = next(r for r in routes_with_unscoped() if r["name"] == "spesifisertsummertskattegrunnlag")
    by_header = dict(base, name="ssg-header", path="/api/h/{rettighetspakke}/{inntektsaar}",
                     subject={"header": "NAV-PersonIdent"})
    by_query = dict(base, name="ssg-query", path="/api/q/{rettighetspakke}/{inntektsaar}",
                    subject={"query": "fnr"})
    async with lab_served("sidecar", issuer_url, routes=[*routes_with_unscoped(), by_header, by_query]) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = (f"GET /api/h/sbl/2022 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                   f"NAV-PersonIdent: {TAX_BASE_PERSON}\r\nNAV-PersonIdent: {TAX_BASE_PERSON}\r\n"
                   "Connection: close\r\n\r\n").encode()
        status, _, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 400 and b'"ambiguous_header"' in body, body
        response = await gw.client.get(f"/api/q/sbl/2022?fnr={TAX_BASE_PERSON}&fnr={TAX_BASE_PERSON}",
                                       headers=a3_headers(dev_issuer))
        assert response.status_code == 400 and response.json()["reason"] == "duplicate_parameter"
        one = await gw.client.get("/api/h/sbl/2022", headers={**a3_headers(dev_issuer), "NAV-PersonIdent": TAX_BASE_PERSON})
        assert one.status_code == 200, one.text


@pytest.mark.parametrize("bad", ["%zz", "%4", "1287939778%", "%g0" + TAX_BASE_PERSON])
async def test_invalid_percent_encoding_in_the_path_is_400(bad: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with lab_served("sidecar", issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = (f"GET /api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{bad} HTTP/1.1\r\n"
                   f"Host: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").encode()
        status, _, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 400 and b'"bad_path"' in body, body
        assert gw.lab.requests == []
