"""Findings of the fresh-user review, each pinned by a test."""

from __future__ import annotations

import tomllib
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.routing import Mount

from samtykke_gateway import ConsentMiddleware
from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.cli.main import main
from samtykke_gateway.config import parse_config
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import (
    BANK,
    INCOME_PATH,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    a2_headers,
    a3_headers,
    make_config,
    running_gateway,
    tax_base_path,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
TT02 = CONFIG_DIR / "skatteetaten-tt02.toml"


def test_sidecar_refuses_unmatched_pass(issuer_url: str) -> None:
    config = make_config(issuer_url, "http://127.0.0.1:9", gateway={"unmatched": "pass"})
    with pytest.raises(ConfigError) as info:
        SidecarApp(config)
    assert info.value.key_path == "gateway.unmatched"


@pytest.mark.parametrize(
    ("table", "values", "key_path"),
    [
        ("gateway", {"leeway_seconds": 99_999_999}, "gateway.leeway_seconds"),
    ],
)
def test_config_bounds(table: str, values: dict, key_path: str) -> None:
    data = tomllib.loads(TT02.read_text())
    data[table].update(values)
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == key_path


def test_empty_algorithm_list_is_an_error() -> None:
    data = tomllib.loads(TT02.read_text())
    data["issuers"] = {"altinn": {"algorithms": []}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "issuers.altinn.algorithms"


def test_check_config_masks_upstream_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TT02.read_text().replace('url = "http://127.0.0.1:8081"', 'url = "http://svc:s3cret@127.0.0.1:8081"'))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "svc:***@127.0.0.1:8081" in out




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
async def test_query_subject_case_variant_cannot_name_another_person(dev_issuer: DevIssuer, issuer_url: str) -> None:
    routes = tomllib.loads((Path(__file__).parent.parent / "samtykke_gateway/dev/data/demo.toml").read_text())["routes"]
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
async def test_wrong_method_is_405(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.post(tax_base_path("2022"), headers=a2_headers(dev_issuer))
        assert response.status_code == 405 and response.json()["reason"] == "method_not_allowed"


@pytest.mark.anyio
async def test_authorization_details_must_be_an_array(dev_issuer: DevIssuer, issuer_url: str) -> None:
    entry = DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, claims={"authorization_details": entry})
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 403 and response.json()["reason"] == "bad_consent_claims"
        assert "www-authenticate" not in response.headers


# ----------------------------------------------------------------------------- second review


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
        ok = await client.get("/skatt" + tax_base_path("2022"), headers=_a3(dev_issuer))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"personidentifikator": TAX_BASE_PERSON, "inntektsaar": "2022"}  # scoped


def _a3(dev_issuer: DevIssuer) -> dict[str, str]:
    details = [DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK,
                                         rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])]
    return {"Authorization": "Bearer " + dev_issuer.mint_maskinporten(
        consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=details)}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    ["?inntektsaar=2021", "?personidentifikator=01029413157", "?rettighetspakke=full",
     "?model.personidentifikator=01029413157", "?Inntektsaar[]=2021", "?x%01y=1"],
)
async def test_path_parameters_cannot_be_repeated_in_the_query(query: str, dev_issuer: DevIssuer,
                                                               issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022") + query, headers=_a3(dev_issuer))
        assert response.status_code == 400, response.text
        assert gw.upstream.requests == []


@pytest.mark.anyio
async def test_header_subject_cannot_be_nominated_away_or_shadowed(dev_issuer: DevIssuer, issuer_url: str) -> None:
    routes = tomllib.loads((Path(__file__).parent.parent / "samtykke_gateway/dev/data/demo.toml").read_text())["routes"]
    route = dict(routes[1])
    route.update(name="ssg-header", path="/api/h/{rettighetspakke}/{inntektsaar}", subject={"header": "NAV-PersonIdent"})
    async with running_gateway("middleware", issuer_url, routes=[*routes, route]) as gw:
        base = {**_a3(dev_issuer), "NAV-PersonIdent": TAX_BASE_PERSON}
        ok = await gw.client.get("/api/h/sbl/2022", headers=base)
        assert ok.status_code == 404  # checked, forwarded; the example upstream has no such path
        for extra in ({"Connection": "NAV-PersonIdent"}, {"NAV_PersonIdent": "01029413157"},
                      {"Connection": "close, Authorization"}):
            response = await gw.client.get("/api/h/sbl/2022", headers={**base, **extra})
            assert response.status_code == 400, (extra, response.text)
            assert response.json()["reason"] == "ambiguous_header"
        assert gw.records[0].upstream_status == 404  # the first one was checked and forwarded
        assert [r.reason for r in gw.records[1:]] == ["ambiguous_header"] * 3


def test_route_without_rights_package_must_say_unscoped() -> None:
    data = tomllib.loads(TT02.read_text())
    del data["routes"][0]["rights_package"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "routes[0].rights_package"
    data["routes"][0]["unscoped"] = True
    with pytest.raises(ConfigError) as info:  # an unscoped body is never read, so never checked
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "routes[0].response_subject"
    del data["routes"][0]["response_subject"]
    assert not parse_config(data, base_dir=CONFIG_DIR).routes[0].scoped


@pytest.mark.parametrize("profile", ["tt02", "prod"])
def test_production_profiles_need_https_keys_and_a_durable_log(profile: str) -> None:
    data = tomllib.loads(TT02.read_text())
    data["gateway"]["profile"] = profile
    host = "test.maskinporten.no" if profile == "tt02" else "maskinporten.no"
    data["issuers"] = {"maskinporten": {"jwks_url": f"http://{host}/jwk"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "issuers.maskinporten"
    data = tomllib.loads(TT02.read_text())
    data["gateway"]["profile"] = profile
    data["audit"]["url"] = "memory://"
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "audit.url"


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
        headers = {**_a3(dev_issuer), "X-Original-URL": "/admin", "X-HTTP-Method-Override": "DELETE",
                   "X-Forwarded-Prefix": "/other"}
        ok = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert ok.status_code == 200
        seen = {k.lower() for k, _ in gw.upstream.requests[-1]["headers"]}
        assert not seen & {"x-original-url", "x-http-method-override", "x-forwarded-prefix"}
        with_body = await gw.client.request("GET", tax_base_path("2022"), headers=_a3(dev_issuer), content=b'{"fnr":"1"}')
        assert with_body.status_code == 400 and with_body.json()["reason"] == "unexpected_body"


def test_authorization_code_with_or_without_dashes_is_one_consent() -> None:
    from samtykke_gateway.tokens.altinn2 import consent_from_altinn2_claims

    base = {"Services": ["4804_210607"], "OfferedBy": "01029413157", "CoveredBy": "999999999",
            "ValidToDate": 4_000_000_000}
    ids = {consent_from_altinn2_claims({**base, "AuthorizationCode": code}, issuer="altinn.no", key_id=None).consent_id
           for code in ("0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9", "0a1b2c3d4e5f60718293a4b5c6d7e8f9")}
    assert ids == {"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}


@pytest.mark.anyio
async def test_a_bug_in_the_gate_fails_closed_with_503(dev_issuer: DevIssuer, issuer_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("01029413157")

    async with running_gateway("middleware", issuer_url) as gw:
        from samtykke_gateway.policy.decide import Gate

        monkeypatch.setattr(Gate, "authorize", broken)
        response = await gw.client.get(tax_base_path("2022"), headers=_a3(dev_issuer))
        assert response.status_code == 503 and response.json()["reason"] == "internal_error"
        assert "01029413157" not in response.text and "Traceback" not in response.text
        assert gw.records[-1].decision == "deny" and gw.upstream.requests == []


@pytest.mark.anyio
async def test_sidecar_trickling_upstream_is_504_at_the_deadline(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Found by a fresh user: ``timeout_seconds`` is per read, so an upstream sending one byte
    a second held the bank's request for minutes. ``deadline_seconds`` bounds the exchange."""
    import asyncio
    import time

    from samtykke_gateway.dev.examples import example_body

    body = example_body("spesifisertsummertskattegrunnlag-2022.json")

    async def trickling(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        for i in range(0, len(body), 64):
            await send({"type": "http.response.body", "body": body[i:i + 64], "more_body": True})  # type: ignore[operator]
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    upstream = {"timeout_seconds": 0.5, "deadline_seconds": 1.0}
    async with running_gateway("sidecar", issuer_url, upstream_app=trickling, upstream=upstream) as gw:
        started = time.monotonic()
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert elapsed < 4.0  # not the 6 s the trickle takes
        assert "personidentifikator" not in response.text
        record = gw.records[-1]
        assert (record.decision, record.reason, record.status) == ("error", "upstream_timeout", 504)


def test_deadline_below_the_read_timeout_is_a_config_error(issuer_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(issuer_url, "http://127.0.0.1:9", upstream={"timeout_seconds": 10, "deadline_seconds": 5})
    assert "upstream.deadline_seconds" in str(info.value)
