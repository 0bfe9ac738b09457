"""Route matching (``policy/routing.py``): methods, mounting under a prefix, paths and their encoding."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount

from samtykke_gateway import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.exceptions import BadRequestError
from samtykke_gateway.policy.routing import encode_path, normalize_path
from tests.proxy_support import SCOPED_PATH, raw_exchange
from tests.proxy_support import served as lab_served
from tests.support import (
    TAX_BASE_PERSON,
    a2_headers,
    a3_headers,
    make_config,
    running_gateway,
    tax_base_path,
)


@pytest.mark.anyio
async def test_wrong_method_is_405(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.post(tax_base_path("2022"), headers=a2_headers(dev_issuer))
        assert response.status_code == 405 and response.json()["reason"] == "method_not_allowed"


@pytest.mark.anyio
@pytest.mark.parametrize("unmatched", ["deny", "pass"])
async def test_mounted_under_a_prefix_routes_are_still_enforced(unmatched: str, dev_issuer: DevIssuer,
                                                                issuer_url: str) -> None:
    """Starlette Mount / --root-path put the prefix in raw_path; routes are app-relative."""
    inner = FastAPI()
    inner.add_middleware(ConsentMiddleware, config=make_config(issuer_url, "http://unused.invalid",
                                                               gateway={"unmatched": unmatched}))

    @inner.get("/api/formueinntekt/spesifisertsummertskattegrunnlag/{pakke}/{aar}/{fnr}")
    async def tax_base(request: Request, pakke: str, aar: str, fnr: str) -> dict[str, object]:
        return {"personidentifikator": fnr, "inntektsaar": aar,
                "granted": "samtykke.consent" in request.scope}

    outer = Starlette(routes=[Mount("/skatt", app=inner)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://t") as client:
        bare = await client.get("/skatt" + tax_base_path("2022"))
        assert bare.status_code == 401, bare.text  # never served without a token
        ok = await client.get("/skatt" + tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"personidentifikator": TAX_BASE_PERSON, "inntektsaar": "2022"}  # scoped


@pytest.mark.anyio
async def test_405_names_the_allowed_methods(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """RFC 9110 §15.5.6: a 405 carries ``Allow``."""
    async with lab_served("sidecar", issuer_url) as gw:
        response = await gw.client.delete(SCOPED_PATH, headers=a3_headers(dev_issuer))
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "HEAD"}
        assert "DELETE" not in response.headers["allow"]


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["%zz", "%4", "1287939778%", "%g0" + TAX_BASE_PERSON])
async def test_invalid_percent_encoding_in_the_path_is_400(bad: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with lab_served("sidecar", issuer_url) as gw:
        auth = a3_headers(dev_issuer)["Authorization"]
        request = (f"GET /api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{bad} HTTP/1.1\r\n"
                   f"Host: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").encode()
        status, _, body = await asyncio.to_thread(raw_exchange, gw.url, request)
        assert status == 400 and b'"bad_path"' in body, body
        assert gw.lab.requests == []


_BAD = re.compile(r"[\x00-\x1f\x7f/\\]|[\ud800-\udfff]")


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"/a//b/./c/../d%41", ("a", "b", "dA")),
        (b"/", ()),
        (b"/a/b/..", ("a",)),
        (b"/%2e%2E/x".replace(b"/%2e%2E", b"/a/%2e%2E"), ("x",)),
        (b"/x/%7e/%20/%C3%A6", ("x", "~", " ", "æ")),
    ],
)
def test_normalize_path(raw: bytes, segments: tuple[str, ...]) -> None:
    assert normalize_path(raw) == segments


@pytest.mark.parametrize(
    "raw",
    [b"/a%2fb", b"/a%2F", b"/a%5cb", b"/a\\b", b"/a%00", b"/a%1f", b"/a%7f", b"/%ff", b"/..", b"/a/../..",
     "/æ".encode(), b"a/b", b"/" + b"a" * 5000],
)
def test_normalize_path_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequestError) as info:
        normalize_path(raw)
    assert info.value.reason == "bad_path"


@given(st.lists(st.text(max_size=12), max_size=5))
def test_encode_path_is_quote_and_round_trips(segments: list[str]) -> None:
    encoded = encode_path(segments)
    assert encoded == "/" + "/".join(quote(s, safe="!$&'()*+,;=:@-._~") for s in segments)
    kept = [s for s in segments if s not in ("", ".", "..")]
    if kept == segments and all(not _BAD.search(s) for s in segments):
        assert normalize_path(encoded.encode("ascii")) == tuple(segments)
