"""Every real-world token variant verifies (issue 3, docs/protocol.md §3), and identity look-alikes do not.

End to end through the in-process middleware: a variant "verifies" when the request is
answered 200 with the scoped body.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo
from typing import Any

import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.tokens.altinn2 import parse_altinn_date, parse_service_entry
from samtykke_gateway.tokens.altinn3 import parse_iso_instant

from tests.support import (
    BANK,
    INCOME_PATH,
    INCOME_PERSON,
    INCOME_SCOPE,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    a2_headers,
    a3_headers,
    running_gateway,
    tax_base_path,
)

pytestmark = pytest.mark.anyio
INCOME_Q = INCOME_PATH + "?fraOgMed=2018-07&tilOgMed=2018-07"


# ----------------------------------------------------------------------------- Altinn 2 parsing


@pytest.mark.parametrize(
    ("entry", "service", "metadata"),
    [
        ("4804_210607", "4804_210607", {}),
        ("4629,2", "4629_2", {}),
        ("4629,2,inntektsaar=2015", "4629_2", {"inntektsaar": "2015"}),
        ("4630,2,fraOgMed=2017-06,tilOgMed=2017-08", "4630_2", {"fraogmed": "2017-06", "tilogmed": "2017-08"}),
        ("4630_2_fraOgMed=2017-06_tilOgMed=2017-08", "4630_2", {"fraogmed": "2017-06", "tilogmed": "2017-08"}),
    ],
)
def test_service_entry_variants(entry: str, service: str, metadata: dict[str, str]) -> None:
    assert parse_service_entry(entry) == (service, metadata)


@pytest.mark.parametrize("entry", ["", "4804", "abc_1", "4804_210607_=x", "4804_210607_x", "４８０４_1", "4804_210607_a=1_a=2"])
def test_service_entry_garbage_refused(entry: str) -> None:
    from samtykke_gateway.exceptions import InvalidConsentError

    with pytest.raises(InvalidConsentError) as info:
        parse_service_entry(entry)
    assert info.value.status_code == 403 and info.value.reason == "bad_consent_claims"


def test_altinn2_dates_in_all_formats_are_europe_oslo() -> None:
    oslo = datetime(2018, 7, 1, 12, 0, 0, tzinfo=ZoneInfo("Europe/Oslo")).timestamp()
    assert parse_altinn_date(int(oslo), claim="x") == oslo
    assert parse_altinn_date("2018-07-01 12:00:00", claim="x") == oslo
    assert parse_altinn_date("01.07.2018 12:00:00", claim="x") == oslo
    assert parse_altinn_date("2018-07-01T10:00:00Z", claim="x") == oslo  # explicit zone wins
    winter = datetime(2018, 1, 1, 12, 0, tzinfo=UTC).timestamp() - 3600
    assert parse_altinn_date("01.01.2018 12:00:00", claim="x") == winter


def test_altinn3_instants() -> None:
    base = datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC).timestamp()
    assert parse_iso_instant("2025-03-01T10:00:00Z", claim="v") == base
    assert parse_iso_instant("2025-03-01T11:00:00+01:00", claim="v") == base
    assert parse_iso_instant("2025-03-01T10:00:00.1234567Z", claim="v") == pytest.approx(base + 0.123456)
    assert parse_iso_instant("2025-03-01T10:00:00.5-02:00", claim="v") == base + 7200.5
    from samtykke_gateway.exceptions import InvalidConsentError

    for bad in ("2025-03-01T10:00:00", "2025-03-01", "2025-03-01T10:00:00.12345678Z", 17, "２０２５-03-01T10:00:00Z"):
        with pytest.raises(InvalidConsentError):
            parse_iso_instant(bad, claim="v")


# ----------------------------------------------------------------------------- Altinn 2 end to end

_PERIOD = ["4804_210607_fraOgMed=2018-06", "4804_210607_tilOgMed=2018-08"]


def _iso_oslo(delta: timedelta, fmt: str) -> str:
    return (datetime.now(ZoneInfo("Europe/Oslo")) + delta).strftime(fmt)


@pytest.mark.parametrize(
    "variant",
    [
        {"services": _PERIOD},
        {"services": ["4804,210607,fraOgMed=2018-06,tilOgMed=2018-08"]},
        {"services": ["4804_210607_fraOgMed=2018-06_tilOgMed=2018-08"]},
        {"services": ["4804_210607_fraOgMed=2018-06_tilOgMed=2018-08"], "claim_name": "ServiceCodes"},
        {"services": ["4804,210607,fraOgMed=2018-06,tilOgMed=2018-08"],
         "claims": {"Services": "4804,210607,fraOgMed=2018-06,tilOgMed=2018-08"}},
        {"services": _PERIOD, "valid_to": _iso_oslo(timedelta(days=1), "%Y-%m-%d %H:%M:%S"),
         "delegated": _iso_oslo(-timedelta(hours=1), "%Y-%m-%d %H:%M:%S")},
        {"services": _PERIOD, "valid_to": _iso_oslo(timedelta(days=1), "%d.%m.%Y %H:%M:%S"),
         "delegated": _iso_oslo(-timedelta(hours=1), "%d.%m.%Y %H:%M:%S")},
        {"services": _PERIOD, "supplier": "312345678", "supplier_in_mp": True},
    ],
    ids=["array", "comma", "packed", "ServiceCodes", "single-string", "iso-dates", "dotted-dates", "supplier"],
)
async def test_altinn2_variants_verify(variant: dict[str, Any], dev_issuer: DevIssuer, issuer_url: str) -> None:
    variant = dict(variant)
    supplier_in_mp = variant.pop("supplier_in_mp", False)
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a2_headers(dev_issuer, **variant)
        if supplier_in_mp:
            bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=INCOME_SCOPE, supplier=variant["supplier"])
            headers["Authorization"] = f"Bearer {bearer}"
        response = await gw.client.get(INCOME_Q, headers=headers)
        assert response.status_code == 200, response.text
        assert len(response.json()["oppgaveInntektsmottaker"][0]["inntekt"]) == 3


async def test_altinn2_consent_header_in_quotes(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a2_headers(dev_issuer)
        headers["AltinnSamtykke"] = f'"{headers["AltinnSamtykke"]}"'
        assert (await gw.client.get(INCOME_Q, headers=headers)).status_code == 200


async def test_altinn2_handledby_must_match_supplier(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a2_headers(dev_issuer, supplier="312345678")  # Maskinporten token without supplier
        response = await gw.client.get(INCOME_Q, headers=headers)
        assert response.status_code == 403 and response.json()["reason"] == "supplier_mismatch"


@pytest.mark.parametrize("header", [{"x5t": None}, {"kid": None}], ids=["kid-only", "x5t-only"])
async def test_altinn2_header_kid_or_x5t_only(header: dict[str, Any], dev_issuer: DevIssuer, issuer_url: str) -> None:
    drop = [k for k, v in header.items() if v is None]
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a2_headers(dev_issuer, drop=drop)
        assert (await gw.client.get(INCOME_Q, headers=headers)).status_code == 200


async def test_altinn2_keys_published_with_only_x5c(dev_issuer: DevIssuer) -> None:
    """Older Altinn 2 key sets publish certificates only: the key is found by the SHA-1
    thumbprint of ``x5c[0]`` (the token's ``kid``/``x5t`` is that thumbprint)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def altinn(request):  # type: ignore[no-untyped-def]
        return JSONResponse(dev_issuer.jwks("altinn", x5c_only=True))

    async def maskinporten(request):  # type: ignore[no-untyped-def]
        return JSONResponse(dev_issuer.jwks("maskinporten"))

    app = Starlette(routes=[Route("/altinn/jwk", altinn), Route("/maskinporten/jwk", maskinporten)])
    assert all(set(k) == {"kty", "use", "x5c"} for k in dev_issuer.jwks("altinn", x5c_only=True)["keys"])
    with ThreadedServer(app) as server:
        async with running_gateway("middleware", server.url) as gw:
            for drop in ([], ["kid"], ["x5t"]):
                response = await gw.client.get(INCOME_Q, headers=a2_headers(dev_issuer, drop=drop))
                assert response.status_code == 200, (drop, response.text)


async def test_expired_consent_validity_is_403(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(INCOME_Q, headers=a2_headers(dev_issuer, valid_to=1_500_000_000))
        assert response.status_code == 403 and response.json()["reason"] == "consent_expired"


async def test_actual_iss_refused_in_prod_only(dev_issuer: DevIssuer, issuer_url: str) -> None:
    test_token: dict[str, Any] = {"claims": {"actual_iss": "altinn-test-tools"}}
    async with running_gateway("middleware", issuer_url) as gw:
        assert (await gw.client.get(INCOME_Q, headers=a2_headers(dev_issuer, **test_token))).status_code == 200
    from samtykke_gateway.config import GatewayConfig

    async with running_gateway("middleware", issuer_url) as gw:
        object.__setattr__(gw.config, "profile", "prod")
        assert isinstance(gw.config, GatewayConfig) and not gw.config.allow_test_tokens
        response = await gw.client.get(INCOME_Q, headers=a2_headers(dev_issuer, **test_token))
        # a consent problem: 403, never a Bearer challenge (docs/protocol.md §4)
        assert response.status_code == 403 and response.json()["reason"] == "test_token_refused"
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "claims",
    [
        {"OfferedBy": 1029413157},
        {"OfferedBy": ["01029413157"]},
        {"CoveredBy": 999999999},
        {"CoveredBy": {"ID": "0192:999999999"}},
        {"AuthorizationCode": 42},
        {"Services": [4804]},
        {"Services": {"4804": "210607"}},
        {"ValidToDate": True},
        {"ValidToDate": "tomorrow"},
    ],
)
async def test_altinn2_identity_claims_of_wrong_type_are_403(claims: dict[str, Any], dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(INCOME_Q, headers=a2_headers(dev_issuer, claims=claims))
        assert response.status_code == 403, response.text
        assert response.json()["reason"] == "bad_consent_claims"
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "person",
    [
        "０１０２９４１３１５７",  # full-width digits
        "01029413157 ",
        " 01029413157",
        "01029_413157",
        "1029413157",
        "010294131570",
        "٠١٠٢٩٤١٣١٥٧",  # Arabic-Indic digits
        "01029413157%00",
    ],
)
async def test_look_alike_subjects_never_match(person: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    from urllib.parse import quote

    async with running_gateway("middleware", issuer_url) as gw:
        path = INCOME_PATH.replace(INCOME_PERSON, quote(person)) + "?fraOgMed=2018-07"
        response = await gw.client.get(path, headers=a2_headers(dev_issuer))
        assert response.status_code in (400, 403), response.text
        assert gw.upstream.requests == []


# ----------------------------------------------------------------------------- Altinn 3 end to end


def _a3_with(dev_issuer: DevIssuer, mutate, **mp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    entry = DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
    mutate(entry)
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=[entry], **mp)
    return {"Authorization": f"Bearer {bearer}"}


def _rename_metadata(entry: dict[str, Any]) -> None:
    entry["consentRights"][0]["metaData"] = entry["consentRights"][0].pop("metadata")


def _upper_keys(entry: dict[str, Any]) -> None:
    entry["consentRights"][0]["metadata"] = {"INNTEKTSAAR": "2022"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: None,
        lambda e: e.update(to="urn:altinn:organization:identifier-no:999999999"),
        _rename_metadata,
        _upper_keys,
        lambda e: e.update(validTo=(datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.1234567+02:00")),
        lambda e: e.update(consented=(datetime.now(timezone(timedelta(hours=-1))) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.12-01:00")),
    ],
    ids=["plain", "to-urn", "metaData", "KEY-CASE", "7-fraction-offset", "consented-offset"],
)
async def test_altinn3_variants_verify(mutate, dev_issuer: DevIssuer, issuer_url: str) -> None:  # type: ignore[no-untyped-def]
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=_a3_with(dev_issuer, mutate))
        assert response.status_code == 200, response.text


async def test_altinn3_same_resource_in_several_rights_is_a_union(dev_issuer: DevIssuer, issuer_url: str) -> None:
    rights = [(TAX_BASE_RESOURCE, {"inntektsaar": "2021"}), (TAX_BASE_RESOURCE, {"inntektsaar": "2022"})]
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a3_headers(dev_issuer, rights=rights)
        assert (await gw.client.get(tax_base_path("2022"), headers=headers)).status_code == 200
        assert (await gw.client.get(tax_base_path("2021"), headers=headers)).status_code == 404  # upstream has no 2021 data
        assert (await gw.client.get(tax_base_path("2020"), headers=headers)).status_code == 403
        assert gw.records[0].metadata == {"inntektsaar": ["2021", "2022"]}


async def test_altinn3_supplier_needs_trusted_delegation_source(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        ok = a3_headers(dev_issuer, supplier="212345678")
        assert (await gw.client.get(tax_base_path("2022"), headers=ok)).status_code == 200
        record = gw.records[-1]
        assert record.supplier == "212345678"
        forged = a3_headers(dev_issuer, supplier="212345678", claims={"delegation_source": "https://evil.example/"})
        response = await gw.client.get(tax_base_path("2022"), headers=forged)
        assert response.status_code == 403 and response.json()["reason"] == "supplier_mismatch"


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda e: e.update(to={"authority": "iso6523-actorid-upis", "ID": "0192:888888888"}), 403),
        (lambda e: e.update(**{"from": f"urn:altinn:person:identifier-no:{INCOME_PERSON}"}), 403),
        (lambda e: e.update(**{"from": f"urn:altinn:organization:identifier-no:{TAX_BASE_PERSON}"}), 403),
        (lambda e: e.update(validTo="2020-01-01T00:00:00Z"), 403),
        (lambda e: e.update(validTo="2099-01-01T00:00:00"), 403),
        (lambda e: e.update(concentRights=e.pop("consentRights")), 403),
        (lambda e: e["consentRights"][0]["resource"][0].update(value="other-resource"), 403),
        (lambda e: e["consentRights"][0].update(metadata={"inntektsaar": "2021"}), 403),
        (lambda e: e["consentRights"][0].update(metadata={"inntektsaar": "2022", "INNTEKTSAAR": "2021"}), 403),
        (lambda e: e.update(id=7), 403),
    ],
    ids=["to-other", "from-other", "from-kind-mismatch", "expired", "no-zone", "typo-concent",
         "other-resource", "other-year", "dup-key-case", "id-type"],
)
async def test_altinn3_refusals(mutate, status: int, dev_issuer: DevIssuer, issuer_url: str) -> None:  # type: ignore[no-untyped-def]
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=_a3_with(dev_issuer, mutate))
        assert response.status_code == status, response.text
        assert "www-authenticate" not in response.headers  # the bearer itself is fine
        assert gw.upstream.requests == []


async def test_altinn3_two_consent_entries_refused(dev_issuer: DevIssuer, issuer_url: str) -> None:
    entry = DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=[entry, entry])
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 403 and response.json()["reason"] == "bad_consent_claims"
        assert "www-authenticate" not in response.headers


async def test_a3_token_plus_a2_header_is_ambiguous(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        headers = {**a3_headers(dev_issuer), "AltinnSamtykke": a2_headers(dev_issuer)["AltinnSamtykke"]}
        response = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert response.status_code == 400 and response.json()["reason"] == "ambiguous_consent"


# ----------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    "subject",
    ["41029413157", "01829413157", "312345678", "212345678"],
    ids=["d-number", "synthetic-tenor", "org-3", "org-2"],
)
def test_identifier_kinds_accepted(subject: str) -> None:
    from samtykke_gateway.identifiers import party_from_digits

    party = party_from_digits(subject)
    assert party is not None and party.id == subject
    assert party.kind == ("person" if len(subject) == 11 else "organization")


async def test_organisation_subject_end_to_end(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """An organisation as data subject (synthetic org starting with 3) — binds by kind and digits."""
    org = "312345678"
    rights = [(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})]
    async with running_gateway("middleware", issuer_url) as gw:
        headers = a3_headers(dev_issuer, subject=org, rights=rights)
        response = await gw.client.get(tax_base_path("2022", org), headers=headers)
        assert response.status_code == 404  # bound and forwarded; the example upstream has no such org
        assert gw.records[-1].decision in ("allow", "error") and gw.records[-1].subject == org
