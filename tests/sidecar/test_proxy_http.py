"""HTTP correctness of the enforcement path (issue 4), request side and transport: hop-by-hop
headers, framing, forwarding headers, path normalisation, duplicate governed parameters,
upstream failures. Against real servers on 127.0.0.1 (see :mod:`tests.proxy_support`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import SCOPED_PATH, STREAM_PATH, free_port, raw_exchange, routes_with_unscoped, served
from tests.support import INCOME_PATH, TAX_BASE_PERSON, a2_headers, a3_headers, make_config
import logging

pytestmark = pytest.mark.anyio
MODES = ["middleware", "sidecar"]


def _seen(lab: Any) -> dict[str, str]:
    return dict(lab.requests[-1]["headers"])


# ---------------------------------------------------------------------------- hop-by-hop


async def test_hop_by_hop_request_headers_dropped(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """RFC 9110 §7.6.1: the sidecar never forwards hop-by-hop headers or those named by
    ``Connection``; end-to-end headers pass."""
    async with served("sidecar", issuer_url) as gw:
        headers = {
            **a3_headers(dev_issuer),
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "hop-secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
            "X-End-To-End": "kept",
        }
        for path in (STREAM_PATH + "?case=echo", SCOPED_PATH):
            response = await gw.client.get(path, headers=headers)
            assert response.status_code == 200, response.text
            seen = _seen(gw.lab)
            for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection",
                         "authorization", "altinnsamtykke"):
                assert name not in seen, (path, name)
            assert "hop-secret" not in str(seen)
            assert seen.get("connection", "keep-alive").lower() in ("keep-alive", "close")
            assert seen["x-end-to-end"] == "kept"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", [STREAM_PATH + "?case=hop", SCOPED_PATH + "?case=hop"])
async def test_hop_by_hop_response_headers_dropped(mode: str, path: str, dev_issuer: DevIssuer,
                                                   issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(path, headers=a3_headers(dev_issuer))
        assert response.status_code == 200, response.text
        for name in ("x-up-hop", "x-up-other", "keep-alive", "proxy-authenticate", "trailer"):
            assert name not in response.headers, name
        assert "hop-secret" not in str(response.headers)
        assert response.headers.get("connection", "keep-alive") in ("keep-alive", "close")
        if "stream" in path:
            assert response.headers["x-up-end2end"] == "kept"
        gw.record_for(response)


# ---------------------------------------------------------------------------- framing


async def test_cl_and_te_refused_at_the_socket(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """RFC 9112 §6.1: a message with both Content-Length and Transfer-Encoding is a smuggling
    vector. What a client on the wire gets from the sidecar is 400 and the upstream sees
    nothing (uvicorn's parser refuses it before the app is called)."""
    async with served("sidecar", issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = (
            f"POST {STREAM_PATH}?case=echo HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        ).encode()
        status, _, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 400
        assert b"HTTP/1.1 200" not in body
        assert gw.lab.requests == []


async def _call_middleware(mw: ConsentMiddleware, headers: list[tuple[bytes, bytes]], *,
                           path: str = STREAM_PATH, method: str = "POST") -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"case=echo",
        "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"hello", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.mark.parametrize(
    "framing",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
        [(b"content-length", b"5"), (b"content-length", b"6")],
        [(b"content-length", b"5, 5")],
        [(b"content-length", b"+5")],
        [(b"transfer-encoding", b"gzip")],
    ],
)
async def test_ambiguous_framing_refused_by_middleware(framing: list[tuple[bytes, bytes]], dev_issuer: DevIssuer,
                                                      issuer_url: str) -> None:
    """The gateway's own check (the middleware form may sit behind any ASGI server)."""
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    config = make_config(issuer_url, "http://upstream.invalid", routes=routes_with_unscoped())
    mw = ConsentMiddleware(app, config=config)
    auth = a3_headers(dev_issuer)["Authorization"].encode()
    try:
        status, body = await _call_middleware(mw, [(b"host", b"x"), (b"authorization", auth), *framing])
        assert status == 400
        assert body["reason"] == "ambiguous_framing"
        assert called == []
        records = mw.gateway.store.records  # type: ignore[attr-defined]
        assert len(records) == 1 and records[0].status == 400 and records[0].decision == "deny"
    finally:
        await mw.gateway.close()


# ---------------------------------------------------------------------------- forwarding headers


async def test_forwarded_headers_set_by_gateway(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served("sidecar", issuer_url) as gw:
        spoof = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
                 "Forwarded": "for=6.6.6.6"}
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer), **spoof})
        assert response.status_code == 200
        seen = gw.lab.requests[-1]["headers"]
        names = [k for k, _ in seen]
        for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "host"):
            assert names.count(name) == 1, name
        d = dict(seen)
        assert d["x-forwarded-for"] == "127.0.0.1"
        assert d["x-forwarded-proto"] == "http"
        assert d["x-forwarded-host"] == gw.url.removeprefix("http://")
        assert "forwarded" not in d
        assert d["host"] == gw.extra["upstream_url"].removeprefix("http://")


async def test_forwarded_headers_extended_for_trusted_proxy(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served("sidecar", issuer_url, gateway={"trusted_proxies": ["127.0.0.0/8"]}) as gw:
        spoof = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer), **spoof})
        assert response.status_code == 200
        d = dict(gw.lab.requests[-1]["headers"])
        assert d["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert d["x-forwarded-proto"] == "https"
        assert d["x-forwarded-host"] == "api.example"


SPOOFED_ADDRESSES = {
    "X-Real-IP": "6.6.6.1", "True-Client-IP": "6.6.6.2", "CF-Connecting-IP": "6.6.6.3", "X-Client-IP": "6.6.6.4",
    "X-Cluster-Client-IP": "6.6.6.5", "Client-IP": "6.6.6.6", "X-Original-Forwarded-For": "6.6.6.7",
    "X-Forwarded": "for=6.6.6.8", "X-ProxyUser-Ip": "6.6.6.9", "Via": "1.1 6.6.6.10", "Fastly-Client-IP": "6.6.6.11",
    "X-Forwarded-For": "6.6.6.12", "Forwarded": "for=6.6.6.13", "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "X_Real_IP": "6.6.6.14", "True_Client_IP": "6.6.6.15",
}


@pytest.mark.parametrize("mode", MODES)
async def test_client_address_headers_from_an_untrusted_peer_never_pass(mode: str, dev_issuer: DevIssuer,
                                                                         issuer_url: str) -> None:
    """Issue 16: ``X-Real-IP``, ``True-Client-IP``, ``Via`` & co. reached the upstream with a
    spoofed address. The sidecar's upstream sees only the gateway's own ``X-Forwarded-For`` and
    ``X-Real-IP`` (the peer); the app behind the middleware sees none of them."""
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer),
                                                                           **SPOOFED_ADDRESSES})
        assert response.status_code == 200
        seen = gw.lab.requests[-1]["headers"]
        assert not any("6.6.6." in value or "evil" in value for _, value in seen), seen
        names = [name for name, _ in seen]
        if mode == "sidecar":
            assert dict(seen)["x-forwarded-for"] == dict(seen)["x-real-ip"] == "127.0.0.1"
            assert names.count("x-real-ip") == 1 and names.count("x-forwarded-for") == 1
            assert dict(seen)["x-forwarded-proto"] == "http"
        else:
            assert not {n.replace("_", "-") for n in names} & {n.lower().replace("_", "-") for n in SPOOFED_ADDRESSES}


@pytest.mark.parametrize("mode", MODES)
async def test_client_address_headers_from_a_trusted_proxy_pass_and_x_real_ip_follows_the_chain(
        mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """From a trusted proxy its address headers pass; the sidecar's ``X-Real-IP`` is the
    right-most ``X-Forwarded-For`` address that is not a trusted proxy (not the proxy's own
    ``X-Real-IP``), so both headers name the same client."""
    async with served(mode, issuer_url, gateway={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}) as gw:
        sent = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7, 10.0.0.5", "X-Real-IP": "10.0.0.5",
                "True-Client-IP": "203.0.113.7", "Via": "1.1 front"}
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer), **sent})
        assert response.status_code == 200
        seen = dict(gw.lab.requests[-1]["headers"])
        assert seen["true-client-ip"] == "203.0.113.7" and seen["via"] == "1.1 front"
        if mode == "sidecar":
            assert seen["x-forwarded-for"] == "198.51.100.9, 203.0.113.7, 10.0.0.5, 127.0.0.1"
            assert seen["x-real-ip"] == "203.0.113.7"
        else:
            assert seen["x-forwarded-for"] == sent["X-Forwarded-For"] and seen["x-real-ip"] == "10.0.0.5"


@pytest.mark.parametrize("mode", MODES)
async def test_gateway_headers_to_upstream(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Claims copied into upstream headers arrive once each; client-supplied copies are dropped."""
    async with served(mode, issuer_url) as gw:
        forged = {"X-Samtykke-Consumer": "111111111", "X-Samtykke-Consent-Id": "forged"}
        response = await gw.client.get(STREAM_PATH + "?case=echo", headers={**a3_headers(dev_issuer), **forged})
        assert response.status_code == 200
        seen = gw.lab.requests[-1]["headers"]
        consumers = [v for k, v in seen if k == "x-samtykke-consumer"]
        assert consumers == ["999999999"]
        assert [v for k, v in seen if k == "x-samtykke-consent-id"] != ["forged"]
        assert len([v for k, v in seen if k == "x-samtykke-consent-id"]) == 1


# ---------------------------------------------------------------------------- paths


@pytest.mark.parametrize("mode", MODES)
async def test_path_normalised_once_and_forwarded_as_matched(mode: str, dev_issuer: DevIssuer,
                                                             issuer_url: str) -> None:
    """Dot segments, double slashes and percent-encoded unreserved characters are resolved
    once, before matching; the upstream receives exactly the canonical matched path."""
    messy = ("/api//formueinntekt/./spesifisertsummertskattegrunnlag/sbl/2021/../2022/"
             + "%31%32" + TAX_BASE_PERSON[2:])
    async with served(mode, issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = f"GET {messy} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode()
        status, headers, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 200, body[:300]
        assert gw.lab.requests[-1]["raw_path"] == SCOPED_PATH
        assert gw.lab.requests[-1]["path"] == SCOPED_PATH
        record = next(r for r in gw.records if r.correlation_id == headers["x-correlation-id"])
        assert record.path == SCOPED_PATH


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "path",
    [
        "/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl%2F2022/" + TAX_BASE_PERSON,
        "/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022%5c" + TAX_BASE_PERSON,
        "/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/%00" + TAX_BASE_PERSON,
        "/../../api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/" + TAX_BASE_PERSON,
        "/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/%ff" + TAX_BASE_PERSON,
    ],
)
async def test_ambiguous_paths_refused(mode: str, path: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode()
        status, _headers, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 400, body
        assert gw.lab.requests == []
        assert [r.reason for r in gw.records] == ["bad_path"]


@pytest.mark.parametrize("mode", ["middleware"])  # the sidecar refuses unmatched = "pass" (test_hardening)
async def test_unmatched_pass_forwards_canonical_path(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """With ``unmatched = "pass"`` the app still gets the normalised path (never the raw one)."""
    async with served(mode, issuer_url, gateway={"unmatched": "pass"}) as gw:
        request = b"GET /public//docs/./a/../b?case=echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, _ = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 200
        assert gw.lab.requests[-1]["raw_path"] == "/public/docs/b"
        assert gw.lab.requests[-1]["path"] == "/public/docs/b"


# ---------------------------------------------------------------------------- query


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "query",
    [
        "fraOgMed=2018-07&fraOgMed=2020-01",
        "fraOgMed=2018-07&tilOgMed=2018-07&tilOgMed=2018-08",
        "fraOgMed=2018-07&fra%4FgMed=2020-01",
    ],
)
async def test_duplicate_governed_parameter_is_400(mode: str, query: str, dev_issuer: DevIssuer,
                                                   issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + "?" + query, headers=a2_headers(dev_issuer))
        assert response.status_code == 400, response.text
        assert response.json()["reason"] == "duplicate_parameter"
        assert gw.lab.requests == []
        record = gw.record_for(response)
        assert record.decision == "deny" and record.status == 400


# ---------------------------------------------------------------------------- upstream failures


async def test_upstream_refused_is_502(dev_issuer: DevIssuer, issuer_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with served("sidecar", issuer_url, upstream_url=dead) as gw:
        for path in (SCOPED_PATH, STREAM_PATH):
            response = await gw.client.get(path, headers=a3_headers(dev_issuer))
            assert response.status_code == 502, response.text
            assert response.json()["reason"] == "upstream_unreachable"
            record = gw.record_for(response)
            assert record.decision == "error" and record.status == 502 and record.released_bytes == 0


async def test_upstream_timeout_is_504(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served("sidecar", issuer_url, upstream={"timeout_seconds": 0.3}) as gw:
        for path in (SCOPED_PATH + "?case=slow", STREAM_PATH + "?case=slow"):
            response = await gw.client.get(path, headers=a3_headers(dev_issuer))
            assert response.status_code == 504, response.text
            assert response.json()["reason"] == "upstream_timeout"
            record = gw.record_for(response)
            assert record.decision == "error" and record.status == 504 and record.released_bytes == 0
            assert "Hakke" not in response.text


@pytest.mark.parametrize("mode", MODES)
async def test_app_exception_is_502_without_detail(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=no_such_case", headers=a3_headers(dev_issuer))
        if mode == "middleware":
            assert response.status_code == 502
            assert "Traceback" not in response.text and "case_no_such_case" not in response.text
        else:  # the lab's server answers 500 itself; the gateway replaces its body
            assert response.status_code == 500
            assert response.json()["type"] == "urn:samtykke-gateway:error:upstream_status"
        assert gw.record_for(response).released_bytes == 0


async def test_consumer_client_disconnect_does_not_break_gateway(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served("sidecar", issuer_url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=0.2) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.get(SCOPED_PATH + "?case=slow", headers=a3_headers(dev_issuer))
        response = await gw.client.get(SCOPED_PATH, headers=a3_headers(dev_issuer))
        assert response.status_code == 200


async def test_an_empty_post_on_a_streamed_route_is_answered_and_recorded(dev_issuer: DevIssuer,
                                                                            issuer_url: str) -> None:
    async with served("sidecar", issuer_url) as gw:
        r = await gw.client.post(STREAM_PATH + "?case=echo", content=b"", headers=a3_headers(dev_issuer), timeout=5)
        assert r.status_code == 200
        records = await gw.wait_records(2)
        assert sorted(x.reason for x in records) == ["ok", "stream_end"]
        assert [x["body"] for x in gw.lab.requests] == [b""]


@pytest.mark.parametrize("mode", ["sidecar", "middleware"])
async def test_pipelined_requests_are_answered_and_recorded_in_order(mode: str, dev_issuer: DevIssuer,
                                                                    issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        gw.lab.release.set()
        auth = a3_headers(dev_issuer)["Authorization"]
        reqs = b"".join(
            f"GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{c}\r\n".encode()
            for p, c in [(STREAM_PATH + "?case=stream", ""), (SCOPED_PATH + "?case=json", ""),
                         (STREAM_PATH + "?case=echo", "Connection: close\r\n")])
        _status, _headers, body = await asyncio.to_thread(raw_exchange, gw.url, reqs)
        assert body.count(b"HTTP/1.1 200") == 2  # 3 responses; the first status line is parsed off
        records = await gw.wait_records(5)
        assert sorted(r.reason for r in records) == ["ok", "ok", "ok", "stream_end", "stream_end"]


@pytest.mark.parametrize("length_header", ["Content-Length: 0", None])
async def test_post_with_content_length_zero_is_forwarded_empty_and_answered(
        length_header: str | None, dev_issuer: DevIssuer, issuer_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A POST with ``Content-Length: 0`` (or none) on an unscoped route: the upstream gets the
    empty body, the client its answer, the log two records and no warning (the disconnect
    watcher must not take the request's only, empty, body message from the proxy)."""
    caplog.set_level(logging.DEBUG)
    async with served("sidecar", issuer_url) as gw:
        headers = a3_headers(dev_issuer)
        extra = {"Content-Length": "0"} if length_header else {}
        r = await gw.client.post(STREAM_PATH + "?case=echo", content=b"", headers={**headers, **extra})
        assert r.status_code == 200
        records = await gw.wait_records(2)
        assert sorted(x.reason for x in records) == ["ok", "stream_end"]
        assert [(x["method"], x["body"], x["cut"]) for x in gw.lab.requests] == [("POST", b"", False)]
        assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == []
