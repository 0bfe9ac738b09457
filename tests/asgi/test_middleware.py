"""The ASGI middleware (``asgi/middleware.py``) on the request path: request intake (query limits,
the body of a body-subject route read and bounded before deciding), clients that leave before
or while the answer is written (nothing recorded as released to them, a one-time consent stays
unspent), apps that read their body late, and a failing Gate answered 503.

A body-subject route reads the whole body before deciding: a slow upload is cut at
``[gateway] request_body_timeout_seconds`` with 408 and a record, nothing forwarded (found by the
body-subject review: nothing bounded the read in time)."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import MutableMapping
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.audit.memory import MemoryStore
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.exceptions import ConfigError
from tests.body_support import Echo
from tests.config.test_subject import JSON, OVERRIDES
from tests.proxy_support import (
    SCOPED_PATH,
    STREAM_PATH,
    answer_lifespan,
    routes_with_unscoped,
    served,
)
from tests.proxy_support import served as lab_served
from tests.support import (
    STUDIELAN_PERSON,
    consent_middleware,
    studielan_config,
    studielan_fastapi,
    studielan_headers,
    studielan_path,
    INCOME_PATH,
    TAX_BASE_PERSON,
    a2_headers,
    a3_headers,
    decisions,
    make_config,
    running_gateway,
    tax_base_path,
)

SLOW = {**OVERRIDES, "gateway": {**OVERRIDES["gateway"], "request_body_timeout_seconds": 0.5}}


@pytest.mark.anyio
async def test_slow_upload_is_408_in_the_sidecar(dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    async with running_gateway("sidecar", issuer_url, upstream_app=echo, **SLOW) as gw:
        url = urlsplit(str(gw.client.base_url))
        head = "".join(f"{k}: {v}\r\n" for k, v in {**a3_headers(dev_issuer), **JSON}.items())
        body = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
        request = (f"POST /api/b/sbl/2022 HTTP/1.1\r\nHost: {url.hostname}\r\n{head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode()
        loop = asyncio.get_running_loop()

        def slow_client() -> bytes:
            with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
                sock.sendall(request)
                for byte in body:  # one byte per 0.1 s: every read is quick, the whole is not
                    sock.sendall(bytes([byte]))
                    if select.select([sock], [], [], 0.1)[0]:  # answered already
                        break
                return sock.recv(65536)

        started = loop.time()
        answer = await loop.run_in_executor(None, slow_client)
        elapsed = loop.time() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert elapsed < 2.5
        assert [(r.reason, r.status) for r in gw.records] == [("request_body_timeout", 408)]
        assert echo.seen == []


@pytest.mark.anyio
async def test_slow_upload_is_408_in_the_middleware(dev_issuer: DevIssuer, issuer_url: str) -> None:
    from samtykke_gateway import ConsentMiddleware
    from tests.config.test_subject import _scope

    echo = Echo()
    middleware = ConsentMiddleware(echo, config=make_config(issuer_url, "http://upstream.invalid", **SLOW))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    try:
        await middleware(_scope(100, {**a3_headers(dev_issuer), **JSON}), receive, send)
        assert sent[0]["status"] == 408
        assert middleware.gateway.store.records[-1].reason == "request_body_timeout"  # type: ignore[attr-defined]
        assert echo.seen == []
    finally:
        await middleware.gateway.close()


def test_timeout_must_be_positive(issuer_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(issuer_url, "http://x.invalid", gateway={"request_body_timeout_seconds": 0})
    assert "gateway.request_body_timeout_seconds" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_more_than_100_query_parameters_is_400_too_many_parameters(mode: str, dev_issuer: DevIssuer,
                                                                          issuer_url: str) -> None:
    """Issue 16: the limit was undocumented and answered as a malformed query."""
    async with running_gateway(mode, issuer_url) as gw:
        fields = "&".join(f"x{i}=1" for i in range(99))
        ok = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07&" + fields, headers=a2_headers(dev_issuer))
        assert ok.status_code == 200, ok.text  # 100 parameters
        for extra in ("&x=1", "&"):  # an empty field counts too
            response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07&" + fields + extra,
                                           headers=a2_headers(dev_issuer))
            assert response.status_code == 400, response.text
            assert response.json()["reason"] == "too_many_parameters"
            assert gw.records[-1].reason == "too_many_parameters"
        assert len(gw.upstream.requests) == 1


@pytest.mark.anyio
async def test_a_bug_in_the_gate_fails_closed_with_503(dev_issuer: DevIssuer, issuer_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("01029413157")

    async with running_gateway("middleware", issuer_url) as gw:
        from samtykke_gateway.policy.decide import Gate

        monkeypatch.setattr(Gate, "authorize", broken)
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert response.status_code == 503 and response.json()["reason"] == "internal_error"
        assert "01029413157" not in response.text and "Traceback" not in response.text
        assert gw.records[-1].decision == "deny" and gw.upstream.requests == []


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"head-part;", "more_body": True})
    message = await receive()  # e.g. a generator that reads request.body() lazily
    await send({"type": "http.response.body", "body": message["type"].encode(), "more_body": False})


@pytest.mark.anyio
@pytest.mark.parametrize("method,extra", [("GET", {}), ("POST", {"Content-Length": "0"})])
async def test_an_app_reading_the_body_after_starting_its_answer_gets_its_request_message(
        method: str, extra: dict[str, str], dev_issuer: DevIssuer, issuer_url: str) -> None:
    config = make_config(issuer_url, "http://upstream.invalid", routes=routes_with_unscoped())
    with ThreadedServer(ConsentMiddleware(app, config=config), proxy_headers=False) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=3) as client:
            try:
                r = await client.request(method, STREAM_PATH, headers={**a3_headers(dev_issuer), **extra})
                assert r.content == b"head-part;http.request"
            except httpx.ReadTimeout:
                pytest.fail(f"{method}: the app never got its request message (hung until the client timed out)")


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


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_half_closed_client_spends_nothing(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A client that half-closes right after its request is gone for uvicorn: the streamed
    answer must not be recorded as delivered, nor spend the one-time consent."""
    async with served(mode, issuer_url, routes=ONE_TIME) as gw:
        headers = a3_headers(dev_issuer)
        # an upstream that answers at once could answer before the FIN is even sent (the
        # client thread may be descheduled between send and shutdown on a loaded machine): wait
        await asyncio.to_thread(_half_close, gw.url, STREAM_PATH + "?case=slow", headers["Authorization"])
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


@pytest.mark.anyio
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
        store = cast(MemoryStore, middleware.gateway.store)
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


@pytest.mark.anyio
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


def _send_and_leave(url: str, data: bytes) -> None:
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(data)
        time.sleep(0.5)  # the gateway has checked the tokens and started forwarding


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_fastapi_app_keeps_its_own_paths_while_the_protected_prefix_stays_closed(
        dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The README snippet on a real server: without ``gateway.unmatched`` the app's own
    ``/api/v1/status``, ``/docs`` and ``/openapi.json`` answer (unchecked, no record), a path
    under ``/api/v1/studielan/`` that no route names is refused (404 ``no_route``, recorded), and
    the route itself is enforced and scoped."""
    config = studielan_config(issuer_url)
    assert config.unmatched is None and config.protected_prefixes == (("api", "v1", "studielan"),)
    app = studielan_fastapi(config=config)
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            status = await client.get("/api/v1/status")
            assert status.status_code == 200 and status.json() == {"status": "up"}
            assert (await client.get("/openapi.json")).json()["paths"].keys() >= {"/api/v1/status"}
            docs = await client.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            for path in (f"/api/v1/studielan/{STUDIELAN_PERSON}/historikk", "/api/v1/studielan",
                         "/api/v1/studielan/../studielan/x"):
                refused = await client.get(path, headers=studielan_headers(dev_issuer))
                assert refused.status_code == 404, path
                assert refused.json()["reason"] == "no_route", path
            assert (await client.get(studielan_path())).status_code == 401
            ok = await client.get(studielan_path(), headers=studielan_headers(dev_issuer))
            assert ok.status_code == 200, ok.text
            assert ok.json() == {"personidentifikator": STUDIELAN_PERSON,
                                 "saldo": {"beloep": 250000, "valuta": "NOK", "per": "2025-01-01"},
                                 "lan": [{"lanetype": "studielan", "saldo": 250000}]}
    store = cast(MemoryStore, consent_middleware(app).gateway.store)
    assert [(r.reason, r.status) for r in store.records] == [("no_route", 404)] * 3 + [
        ("missing_token", 401), ("ok", 200)]


@pytest.mark.anyio
@pytest.mark.parametrize(("unmatched", "status_code"), [("deny", 404), ("pass", 200)])
async def test_unmatched_set_in_the_config_wins_over_the_middleware_default(
        unmatched: str, status_code: int, dev_issuer: DevIssuer, issuer_url: str) -> None:
    app = studielan_fastapi(config=studielan_config(issuer_url, unmatched=unmatched))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        assert (await client.get("/api/v1/status")).status_code == status_code
        under = await client.get(f"/api/v1/studielan/{STUDIELAN_PERSON}/historikk")
        assert under.status_code == 404  # "pass": FastAPI's own 404, unchecked
        assert ("reason" in under.json()) is (unmatched == "deny")


@pytest.mark.anyio
async def test_an_app_that_raises_is_502_and_logged_with_where_but_not_what(
        dev_issuer: DevIssuer, issuer_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The app's own exception: 502 ``upstream_error`` to the client; the log names the class and
    the frames it came from (to find the bug) but never the message, which may quote a person."""
    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(ConsentMiddleware, config=studielan_config(issuer_url))

    @app.get("/api/v1/studielan/{fnr}/saldo")
    async def saldo(fnr: str) -> dict[str, Any]:
        raise ValueError(f"no loan for {fnr}")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        response = await client.get(studielan_path(), headers=studielan_headers(dev_issuer))
    assert response.status_code == 502 and response.json()["reason"] == "upstream_error"
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("protected app failed")]
    assert len(failed) == 1 and failed[0].startswith("protected app failed: ValueError at asgi/test_middleware.py:")
    assert " in saldo <- " in failed[0]
    assert all(STUDIELAN_PERSON not in r.getMessage() and "no loan" not in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [600, 99, 103])
async def test_an_answer_with_a_status_outside_200_599_is_502_not_a_disclosure(
        status: int, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """uvicorn cannot send such a status (it would drop the connection) and the record must not
    say a disclosure happened: 502 ``upstream_bad_response``, nothing of the body released."""
    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"inntektsaar":"2022","personidentifikator":"x"}'})

    middleware = ConsentMiddleware(app, config=make_config(issuer_url, "http://upstream.invalid"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://gw.test") as client:
        response = await client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
    assert response.status_code == 502 and response.json()["reason"] == "upstream_bad_response"
    assert b"inntektsaar" not in response.content
    records = decisions(cast(MemoryStore, middleware.gateway.store).records)
    assert [(r.decision, r.reason, r.status) for r in records] == [("error", "upstream_bad_response", 502)]
