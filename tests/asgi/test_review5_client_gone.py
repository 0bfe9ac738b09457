"""Second fresh-user pass: clients that are gone before the answer is written. Nothing should
be recorded as released to them, and a one-time consent must stay unspent. Real servers on
127.0.0.1; raw sockets where a client library would not half-close or leave early."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import STREAM_PATH, routes_with_unscoped, served
from tests.support import a3_headers, decisions, make_config

pytestmark = pytest.mark.anyio

ONE_TIME = [dict(r, one_time=True) for r in routes_with_unscoped()]


def _half_close(url: str, target: str, auth: str) -> bytes:
    """Send the request, close our sending side at once (FIN), read what comes back."""
    host, port = url.removeprefix("http://").split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def _leave_after(url: str, target: str, auth: str, seconds: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        time.sleep(seconds)


async def _wait_records(gw: Any, n: int) -> None:
    for _ in range(150):
        if len(gw.records) >= n:
            return
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_half_closed_client_spends_nothing(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A client that half-closes right after its request is gone for uvicorn: the streamed
    answer must not be recorded as delivered, nor spend the one-time consent."""
    async with served(mode, issuer_url, routes=ONE_TIME) as gw:
        headers = a3_headers(dev_issuer)
        # the middleware's in-process lab would answer before the FIN is even read: make it wait
        case = "slow" if mode == "middleware" else "echo"
        await asyncio.to_thread(_half_close, gw.url, STREAM_PATH + f"?case={case}", headers["Authorization"])
        await _wait_records(gw, 1)
        await asyncio.sleep(0.2)
        assert [(r.reason, r.status) for r in gw.records] == [("client_disconnected", 499)], gw.records
        again = await gw.client.get(STREAM_PATH + "?case=echo", headers=headers)
        assert again.status_code == 200, again.text  # the one-time consent is still there


async def _late_body(request: Request) -> Response:
    await asyncio.sleep(1.0)
    await request.body()  # raises ClientDisconnect: the client is gone
    return Response(b"late")


async def _late_stream(request: Request) -> Response:
    await asyncio.sleep(1.0)

    async def parts() -> Any:
        yield b"part-1;"
        yield b"part-2"

    return StreamingResponse(parts(), media_type="application/octet-stream")


@pytest.mark.parametrize("endpoint", [_late_body, _late_stream])
async def test_middleware_app_answering_a_gone_client(endpoint: Any, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The middleware form around a FastAPI/Starlette app: the client leaves before the app
    answers. The record says 499 client_disconnected (not an app failure, not 'the data API
    gave no response'), nothing is released and the one-time consent stays."""
    app = Starlette(routes=[Route("/api/lab/stream/{personidentifikator}", endpoint, methods=["GET", "POST"])])
    config = make_config(issuer_url, "http://upstream.invalid", routes=ONE_TIME)
    middleware = ConsentMiddleware(app, config=config)
    with ThreadedServer(middleware, proxy_headers=False) as server:
        headers = a3_headers(dev_issuer)
        await asyncio.to_thread(_leave_after, server.url, STREAM_PATH, headers["Authorization"], 0.3)
        store = middleware.gateway.store
        for _ in range(150):
            if store.records:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the app wakes at 1 s
        got = [(r.decision, r.reason, r.status, r.released_bytes) for r in store.records]
        assert [g for g in got if g[1] not in ("stream_end", "stream_cut")] == \
            [("error", "client_disconnected", 499, 0)], got
        assert all(g[3] == 0 for g in got), got
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            again = await client.get(STREAM_PATH, headers=headers)
        assert again.status_code == 200, again.text
        assert len(decisions(store.records)) == 2


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_body_route_checks_the_access_token_before_asking_for_the_body(mode: str, issuer_url: str) -> None:
    """``Expect: 100-continue`` with a bad token on a route whose subject is in the body: 401 at
    once, without ``100 Continue`` (it used to ask for the body and wait 10 s for it: 408)."""
    from tests.body_support import raw_head, raw_status
    from tests.body_support import served as body_served

    async with body_served(mode, issuer_url) as gw:
        started = time.monotonic()
        raw = await asyncio.to_thread(
            gw.raw, raw_head("POST", "/api/b/sbl/2022", [("Authorization", "Bearer bad"),
                                                      ("Content-Type", "application/json"),
                                                      ("Content-Length", "21"), ("Expect", "100-continue")]))
        assert raw_status(raw) == 401, raw[:200]
        assert b"100 Continue" not in raw
        assert time.monotonic() - started < 3
        assert gw.echo.seen == []
