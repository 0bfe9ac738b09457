"""Request and response header rules (``asgi/headers.py``): tokens, claim headers, override and
hop-by-hop headers never reach the app or the upstream; framing is unambiguous."""

from __future__ import annotations

import httpx
import pytest

from samtykke_gateway import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer
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
