"""Binding the request to the consent (``policy/binding.py``): governed query parameters, path
parameters and subject locations (query, header) cannot be varied, repeated or nominated away."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from samtykke_gateway.dev.issuer import DevIssuer
from tests.proxy_support import raw_exchange, routes_with_unscoped
from tests.proxy_support import served as lab_served
from tests.support import (
    BANK,
    INCOME_PATH,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    a2_headers,
    a3_headers,
    running_gateway,
    tax_base_path,
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        "?fraOgMed=2018-07&TilOgMed=2019-12",
        "?fraOgMed=2018-07&tilOgMed[]=2019-12",
        "?FRAOGMED=2018-01&fraOgMed=2018-07",
        "?fraOgMed=2018-07&tilOgMed%5B0%5D=2019-12",
        "?fraOgMed=2018-07&fraOgMed=2018-07",
    ],
)
async def test_governed_parameter_variants_are_refused(query: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + query, headers=a2_headers(dev_issuer))
        assert response.status_code == 400, response.text
        assert response.json()["reason"] in ("ambiguous_parameter", "duplicate_parameter")
        assert gw.upstream.requests == []


@pytest.mark.anyio
async def test_query_subject_case_variant_cannot_name_another_person(dev_issuer: DevIssuer, issuer_url: str) -> None:
    routes = tomllib.loads((Path(__file__).parent.parent.parent / "samtykke_gateway/dev/data/demo.toml").read_text())["routes"]
    route = dict(routes[1])
    route.update(name="ssg-query", path="/api/q/{rettighetspakke}/{inntektsaar}", subject={"query": "fnr"})
    async with running_gateway("middleware", issuer_url, routes=[*routes, route]) as gw:
        details = [DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK,
                                             rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])]
        bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=details)
        headers = {"Authorization": f"Bearer {bearer}"}
        for q in (f"fnr={TAX_BASE_PERSON}&FNR=01029413157", f"fnr={TAX_BASE_PERSON}&fnr[]=01029413157"):
            response = await gw.client.get(f"/api/q/sbl/2022?{q}", headers=headers)
            assert response.status_code == 400, response.text
        assert gw.upstream.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    ["?inntektsaar=2021", "?personidentifikator=01029413157", "?rettighetspakke=full",
     "?model.personidentifikator=01029413157", "?Inntektsaar[]=2021", "?x%01y=1"],
)
async def test_path_parameters_cannot_be_repeated_in_the_query(query: str, dev_issuer: DevIssuer,
                                                               issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022") + query, headers=a3_headers(dev_issuer))
        assert response.status_code == 400, response.text
        assert gw.upstream.requests == []


@pytest.mark.anyio
async def test_header_subject_cannot_be_nominated_away_or_shadowed(dev_issuer: DevIssuer, issuer_url: str) -> None:
    routes = tomllib.loads((Path(__file__).parent.parent.parent / "samtykke_gateway/dev/data/demo.toml").read_text())["routes"]
    route = dict(routes[1])
    route.update(name="ssg-header", path="/api/h/{rettighetspakke}/{inntektsaar}", subject={"header": "NAV-PersonIdent"})
    async with running_gateway("middleware", issuer_url, routes=[*routes, route]) as gw:
        base = {**a3_headers(dev_issuer), "NAV-PersonIdent": TAX_BASE_PERSON}
        ok = await gw.client.get("/api/h/sbl/2022", headers=base)
        assert ok.status_code == 404  # checked, forwarded; the example upstream has no such path
        for extra in ({"Connection": "NAV-PersonIdent"}, {"NAV_PersonIdent": "01029413157"},
                      {"Connection": "close, Authorization"}):
            response = await gw.client.get("/api/h/sbl/2022", headers={**base, **extra})
            assert response.status_code == 400, (extra, response.text)
            assert response.json()["reason"] == "ambiguous_header"
        assert gw.records[0].upstream_status == 404  # the first one was checked and forwarded
        assert [r.reason for r in gw.records[1:]] == ["ambiguous_header"] * 3


@pytest.mark.anyio
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
