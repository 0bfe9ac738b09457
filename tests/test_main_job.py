"""The main job end to end (issue 2): the same assertions through the in-process middleware and
through the sidecar in front of a real upstream server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from samtykke_gateway.testing import DevIssuer, encode_token

from .support import (
    BANK,
    INCOME_PATH,
    INCOME_PERSON,
    INCOME_SERVICE,
    OTHER_BANK,
    SBL_RELEASED,
    TAX_BASE_PERSON,
    a2_headers,
    a3_headers,
    running_gateway,
    tax_base_path,
)

pytestmark = pytest.mark.anyio
MODES = ["middleware", "sidecar"]


def _only_record(gw, response) -> object:  # type: ignore[no-untyped-def]
    cid = response.headers["x-correlation-id"]
    mine = [r for r in gw.records if r.correlation_id == cid]
    assert len(mine) == 1, f"expected exactly one disclosure record, got {len(mine)}"
    return mine[0]


def _no_token_in_records(gw, *tokens: str) -> None:  # type: ignore[no-untyped-def]
    dump = json.dumps([r.to_dict() for r in gw.records])
    for token in tokens:
        for part in token.split("."):
            if len(part) > 16:
                assert part not in dump


@pytest.mark.parametrize("mode", MODES)
async def test_a2_income_in_period_releases_only_sbl_rows(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        headers = a2_headers(dev_issuer)
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07&tilOgMed=2018-07", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        rows = body["oppgaveInntektsmottaker"][0]["inntekt"]
        assert len(rows) == 3
        assert {r["loennsinntekt"]["beskrivelse"] for r in rows} == SBL_RELEASED
        # projection: fields outside the package never leave
        assert all("tilleggsinformasjon" not in r["loennsinntekt"] for r in rows)
        assert "el12345" not in response.text
        assert response.headers["content-length"] == str(len(response.content))
        assert response.headers["cache-control"] == "no-store"
        assert "etag" not in response.headers
        record = _only_record(gw, response)
        assert record.decision == "allow" and record.reason == "ok" and record.status == 200
        assert record.subject == INCOME_PERSON and record.consumer == BANK
        assert record.token_kind == "altinn2" and record.resource == INCOME_SERVICE
        assert record.released_bytes == len(response.content)
        assert record.effective_params == {"fraOgMed": ["2018-07"], "tilOgMed": ["2018-07"]}
        assert any(p.endswith("beskrivelse") for p in record.released_paths)
        _no_token_in_records(gw, headers["Authorization"][7:], headers["AltinnSamtykke"])
        # the upstream never saw the tokens
        seen = gw.upstream.requests[-1]
        names = {k.lower() for k, _ in seen["headers"]}
        assert "authorization" not in names and "altinnsamtykke" not in names


@pytest.mark.parametrize("mode", MODES)
async def test_missing_tilogmed_is_set_to_consented_bound(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert response.status_code == 200, response.text
        assert gw.upstream.requests[-1]["query"] == "fraOgMed=2018-07&tilOgMed=2018-08"
        assert _only_record(gw, response).effective_params["tilOgMed"] == ["2018-08"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("period_after", "metadata_out_of_range"),
        ("other_person", "subject_mismatch"),
        ("other_consumer", "consumer_mismatch"),
        ("wrong_service", "service_not_consented"),
    ],
)
async def test_a2_consent_does_not_cover(mode: str, case: str, reason: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    path = INCOME_PATH + "?fraOgMed=2018-07"
    headers = a2_headers(dev_issuer)
    if case == "period_after":
        path = INCOME_PATH + "?fraOgMed=2018-09"
    elif case == "other_person":
        path = path.replace(INCOME_PERSON, TAX_BASE_PERSON)
    elif case == "other_consumer":
        headers = a2_headers(dev_issuer, consumer=OTHER_BANK, mp_consumer=BANK)
    elif case == "wrong_service":
        headers = a2_headers(dev_issuer, services=["4628_210607_fraOgMed=2018-06", "4628_210607_tilOgMed=2018-08"])
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(path, headers=headers)
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == reason
        assert gw.upstream.requests == []  # nothing forwarded, nothing released
        record = _only_record(gw, response)
        assert record.decision == "deny" and record.reason == reason and record.status == 403
        assert record.released_bytes == 0
        _no_token_in_records(gw, headers["Authorization"][7:], headers["AltinnSamtykke"])


def _flip_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    flipped = ("A" if sig[5] != "A" else "B")
    return f"{head}.{payload}.{sig[:5]}{flipped}{sig[6:]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["expired", "flipped", "alg_none", "unknown_kid"])
async def test_a2_consent_token_not_verifiable_is_403_without_challenge(
    mode: str, case: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """An Altinn 2 consent token that is expired, wrongly signed or signed by an unknown key
    is a consent problem: 403 with its own reason, never 401 ``invalid_token`` (the client
    would fetch a new Maskinporten token, which cannot help; docs/protocol.md §4)."""
    headers = a2_headers(dev_issuer)
    if case == "expired":
        headers = a2_headers(dev_issuer, claims={"exp": 1_600_000_000, "nbf": 1_599_999_970})
    elif case == "flipped":
        headers["AltinnSamtykke"] = _flip_signature(headers["AltinnSamtykke"])
    elif case == "alg_none":
        _head, payload, _sig = headers["AltinnSamtykke"].split(".")
        forged = encode_token({"alg": "none", "typ": "JWT"}, b"", None, alg="none")
        headers["AltinnSamtykke"] = forged.split(".")[0] + "." + payload + "."
    elif case == "unknown_kid":
        stranger = DevIssuer()
        headers["AltinnSamtykke"] = stranger.mint_altinn2(
            subject=INCOME_PERSON, consumer=BANK, services=[f"{INCOME_SERVICE}_fraOgMed=2018-06", f"{INCOME_SERVICE}_tilOgMed=2018-08"]
        )
    expected = {
        "expired": "consent_token_expired",
        "flipped": "consent_token_bad_signature",
        "alg_none": "consent_token_alg_not_allowed",
        "unknown_kid": "consent_token_unknown_key",
    }[case]
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=headers)
        assert response.status_code == 403, response.text
        assert "www-authenticate" not in response.headers
        assert response.json()["reason"] == expected
        assert gw.upstream.requests == []
        record = _only_record(gw, response)
        assert record.decision == "deny" and record.status == 403 and record.reason == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["none", "expired", "flipped", "unknown_kid"])
async def test_bearer_unauthenticated_is_401(mode: str, case: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Only the Maskinporten bearer itself gives 401 (with the RFC 6750 challenge)."""
    headers = a2_headers(dev_issuer)
    bearer = headers["Authorization"][7:]
    if case == "none":
        headers = {}
    elif case == "expired":
        bearer = dev_issuer.mint_maskinporten(
            consumer=BANK, scope="skatteetaten:inntekt", claims={"exp": 1_600_000_000, "iat": 1_599_999_880}
        )
    elif case == "flipped":
        bearer = _flip_signature(bearer)
    elif case == "unknown_kid":
        bearer = DevIssuer().mint_maskinporten(consumer=BANK, scope="skatteetaten:inntekt")
    if headers:
        headers["Authorization"] = f"Bearer {bearer}"
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=headers)
        assert response.status_code == 401, response.text
        challenge = response.headers["www-authenticate"]
        assert challenge == ("Bearer" if case == "none" else 'Bearer error="invalid_token"')
        assert gw.upstream.requests == []
        record = _only_record(gw, response)
        assert record.decision == "deny" and record.status == 401
        assert record.reason == {"none": "missing_token", "expired": "token_expired", "flipped": "bad_signature",
                                 "unknown_kid": "unknown_key"}[case]


@pytest.mark.parametrize("mode", MODES)
async def test_jwks_down_with_nothing_cached_is_503(mode: str, dev_issuer: DevIssuer) -> None:
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    async with running_gateway(mode, dead) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert response.status_code == 503, response.text
        assert response.json()["reason"] == "keys_unavailable"
        assert gw.upstream.requests == []
        assert _only_record(gw, response).reason == "keys_unavailable"


@pytest.mark.parametrize("mode", MODES)
async def test_a3_tax_base_2022_scoped_and_2021_refused(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        headers = a3_headers(dev_issuer)
        ok = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["personidentifikator"] == TAX_BASE_PERSON and body["inntektsaar"] == "2022"
        assert set(body) <= {"personidentifikator", "inntektsaar", "skjermet", "stadie", "skatteoppgjoersdato", "grunnlag"}
        assert "registreringstidpunkt" not in body
        assert all(set(g) <= {"tekniskNavn", "beloep", "kategori"} for g in body["grunnlag"])
        assert "Hakke peiling" not in ok.text  # names in specifications stay at the source
        record = _only_record(gw, ok)
        assert record.token_kind == "altinn3" and record.decision == "allow"
        assert record.metadata == {"inntektsaar": ["2022"]}
        refused = await gw.client.get(tax_base_path("2021"), headers=headers)
        assert refused.status_code == 403
        assert refused.json()["reason"] == "metadata_out_of_range"
        assert _only_record(gw, refused).decision == "deny"
        assert len(gw.upstream.requests) == 1
        _no_token_in_records(gw, headers["Authorization"][7:])


@pytest.mark.parametrize("mode", MODES)
async def test_a3_migrated_resource_id(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        headers = a3_headers(dev_issuer, rights=[("skd_4628_210607", {"inntektsaar": "2022"})])
        response = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert response.status_code == 200, response.text
        assert _only_record(gw, response).token_kind == "altinn3-migrated"


@pytest.mark.parametrize("mode", MODES)
async def test_garbage_input_never_500(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    bad_requests = [
        (INCOME_PATH + "?fraOgMed=2018-07", {"Authorization": "Bearer x.y.z"}),
        (INCOME_PATH + "?fraOgMed=2018-07", {"Authorization": "Bearer " + "a" * 100_000}),
        (INCOME_PATH + "?fraOgMed=2018-07", {"Authorization": "Basic Zm9vOmJhcg=="}),
        (INCOME_PATH + "?fraOgMed=2018-07", {**a2_headers(dev_issuer), "AltinnSamtykke": '"not.a.jwt"'}),
        (INCOME_PATH + "?fraOgMed=201807", a2_headers(dev_issuer)),
        (INCOME_PATH + "?fraOgMed=2018-07&fraOgMed=2020-01", a2_headers(dev_issuer)),
        ("/api/../../etc/passwd", a2_headers(dev_issuer)),
        ("/nope", {}),
        (INCOME_PATH.replace("sbl", "xyz") + "?fraOgMed=2018-07", a2_headers(dev_issuer)),
    ]
    async with running_gateway(mode, issuer_url) as gw:
        for path, headers in bad_requests:
            response = await gw.client.get(path, headers=headers)
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
            assert "Traceback" not in response.text
            assert response.json()["reason"]
        assert len(gw.records) == len(bad_requests)
        assert gw.upstream.requests == []
