"""Request and response header rules (``asgi/headers.py``): tokens, claim headers, override and
hop-by-hop headers never reach the app or the upstream; framing is unambiguous."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from samtykke_gateway import ConsentMiddleware
from samtykke_gateway.asgi.headers import strip_hop_by_hop
from samtykke_gateway.dev.issuer import DevIssuer
from tests.body_support import BODY, MODES, raw_head, raw_status, served
from tests.proxy_support import STREAM_PATH
from tests.proxy_support import served as lab_served
from tests.support import (
    a3_headers,
    make_config,
    running_gateway,
    tax_base_path,
)


@pytest.mark.anyio
async def test_passed_requests_lose_tokens_and_forged_claim_headers(issuer_url: str) -> None:
    seen: list[dict[bytes, bytes]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(dict(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"public"})

    mw = ConsentMiddleware(app, config=make_config(issuer_url, "http://unused.invalid", gateway={"unmatched": "pass"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as client:
        response = await client.get("/public/docs", headers={"X-Samtykke-Consumer": "999999999",
                                                             "Authorization": "Bearer abc", "AltinnSamtykke": "x"})
        assert response.status_code == 200
    await mw.gateway.close()
    assert b"x-samtykke-consumer" not in seen[0] and b"authorization" not in seen[0] and b"altinnsamtykke" not in seen[0]


@pytest.mark.anyio
async def test_override_headers_and_get_bodies_never_reach_the_upstream(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        headers = {**a3_headers(dev_issuer), "X-Original-URL": "/admin", "X-HTTP-Method-Override": "DELETE",
                   "X-Forwarded-Prefix": "/other"}
        ok = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert ok.status_code == 200
        seen = {k.lower() for k, _ in gw.upstream.requests[-1]["headers"]}
        assert not seen & {"x-original-url", "x-http-method-override", "x-forwarded-prefix"}
        with_body = await gw.client.request("GET", tax_base_path("2022"), headers=a3_headers(dev_issuer), content=b'{"fnr":"1"}')
        assert with_body.status_code == 400 and with_body.json()["reason"] == "unexpected_body"


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["Content_Length", "Transfer_Encoding"])
async def test_underscore_framing_headers_are_refused_everywhere(header: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={**a3_headers(dev_issuer), header: "5"})
        assert response.status_code == 400 and gw.records[-1].reason == "ambiguous_header"


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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


def test_strip_hop_by_hop_drops_nominated_and_fixed_set() -> None:
    headers = [
        (b"Connection", b"X-A, x-b"),
        (b"connection", b"close"),
        (b"X-A", b"1"),
        (b"x-B", b"2"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"trailers"),
        (b"X-C", b"kept"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-C", b"kept")]
