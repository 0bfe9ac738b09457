"""A body-subject route reads the whole body before deciding: a slow upload is cut at
``[gateway] request_body_timeout_seconds`` with 408 and a record, nothing forwarded (found by the
body-subject review: nothing bounded the read in time)."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import TAX_BASE_PERSON, a3_headers, make_config, running_gateway
from tests.body_support import Echo
from tests.policy.test_body_subject import JSON, OVERRIDES
from tests.support import INCOME_PATH, a2_headers, tax_base_path

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

    from tests.policy.test_body_subject import _scope

    echo = Echo()
    middleware = ConsentMiddleware(echo, config=make_config(issuer_url, "http://upstream.invalid", **SLOW))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
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
