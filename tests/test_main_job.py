"""The main job end to end (issue 2): the same assertions through the in-process middleware and
through the sidecar in front of a real upstream server on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
import pytest

from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.dev.issuer import DevIssuer, encode_token

from tests.support import (
    BANK,
    INCOME_PATH,
    INCOME_PERSON,
    INCOME_SERVICE,
    OTHER_BANK,
    SBL_RELEASED,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    GatewayUnderTest,
    a2_headers,
    a3_headers,
    altinn3_only,
    route_keys,
    running_gateway,
    tax_base_path,
)

pytestmark = pytest.mark.anyio
MODES = ["middleware", "sidecar"]


def _only_record(gw: GatewayUnderTest, response: httpx.Response) -> DisclosureRecord:
    cid = response.headers["x-correlation-id"]
    mine = [r for r in gw.records if r.correlation_id == cid]
    assert len(mine) == 1, f"expected exactly one disclosure record, got {len(mine)}"
    return mine[0]


def _no_token_in_records(gw: GatewayUnderTest, *tokens: str) -> None:
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
        assert record.rows_withheld == {"oppgaveInntektsmottaker[].inntekt[]": 5}  # 8 rows, 3 released
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
    # "deny": every unmatched path refused by the gateway in both forms (the middleware form's
    # default hands "/nope", outside the routes' prefixes, to the app: tested in tests/asgi)
    async with running_gateway(mode, issuer_url, gateway={"unmatched": "deny"}) as gw:
        for path, headers in bad_requests:
            response = await gw.client.get(path, headers=headers)
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
            assert "Traceback" not in response.text
            assert response.json()["reason"]
        assert len(gw.records) == len(bad_requests)
        assert gw.upstream.requests == []


# -- issue 11: Altinn 3 tokens as issued today, and the status convention -----------------------

INCOME_RESOURCE = "ske-innrapportert-inntekt"
HANDLER = "312345678"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "actions", [["consent"], ["read"], ["Read", "Write"], ["READ"]], ids=["digdir", "altinn", "migrated", "case"]
)
async def test_a3_published_actions_cover_a_read(mode: str, actions: list[str], dev_issuer: DevIssuer,
                                                 issuer_url: str) -> None:
    """Digdir's ``["consent"]``, Altinn's ``["read"]`` and a migrated consent's Altinn 2
    operations ``["Read","Write"]`` all cover a read by default (case-insensitively)."""
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consent={"actions": actions}))
        assert response.status_code == 200, response.text
        assert _only_record(gw, response).decision == "allow"


@pytest.mark.parametrize("mode", MODES)
async def test_a3_right_without_an_accepted_action_covers_nothing(mode: str, dev_issuer: DevIssuer,
                                                                  issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        for actions in (["write"], []):
            response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consent={"actions": actions}))
            assert response.status_code == 403, response.text
            assert response.json()["reason"] == "consent_action_not_accepted"
            assert "www-authenticate" not in response.headers
            assert _only_record(gw, response).reason == "consent_action_not_accepted"
        assert gw.upstream.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_a3_route_accepted_actions_are_configurable(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    edit = route_keys("spesifisertsummertskattegrunnlag", accepted_actions=["Consent"])
    async with running_gateway(mode, issuer_url, edit=edit) as gw:
        assert gw.config.routes[1].accepted_actions == ("consent",)
        ok = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consent={"actions": ["CONSENT"]}))
        assert ok.status_code == 200, ok.text
        read = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consent={"actions": ["read"]}))
        assert read.status_code == 403 and read.json()["reason"] == "consent_action_not_accepted"


@pytest.mark.parametrize("mode", MODES)
async def test_a3_right_without_resource_grants_nothing_and_voids_nothing(mode: str, dev_issuer: DevIssuer,
                                                                          issuer_url: str) -> None:
    async with running_gateway(mode, issuer_url) as gw:
        beside = a3_headers(dev_issuer, rights=[(None, {"inntektsaar": "2021"}), (TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
        ok = await gw.client.get(tax_base_path("2022"), headers=beside)
        assert ok.status_code == 200, ok.text
        assert _only_record(gw, ok).metadata == {"inntektsaar": ["2022"]}  # the empty right added nothing
        alone = a3_headers(dev_issuer, rights=[(None, {"inntektsaar": "2022"})])
        refused = await gw.client.get(tax_base_path("2022"), headers=alone)
        assert refused.status_code == 403 and refused.json()["reason"] == "resource_not_consented"
        assert "www-authenticate" not in refused.headers


@pytest.mark.parametrize("mode", MODES)
async def test_a3_migrated_ids_without_anything_of_altinn2(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A data source lists migrated ids ``{org}_{serviceCode}_{editionCode}`` in
    ``altinn3_resources`` with no ``[issuers.altinn]`` and no ``altinn2_service``; the
    migration's lower-cased metadata keys satisfy the year and period constraints."""

    def edit(data: dict) -> None:  # type: ignore[type-arg]
        altinn3_only(data)
        data["routes"][0]["altinn3_resources"] = [INCOME_RESOURCE, "skd_4804_210607"]
        data["routes"][1]["altinn3_resources"] = [TAX_BASE_RESOURCE, "skd_4628_210607"]

    async with running_gateway(mode, issuer_url, edit=edit) as gw:
        assert "altinn" not in gw.config.issuers
        migrated = {"actions": ["Read", "Write"]}
        tax = a3_headers(dev_issuer, rights=[("skd_4628_210607", {"inntektsaar": "2022"})], consent=migrated)
        ok = await gw.client.get(tax_base_path("2022"), headers=tax)
        assert ok.status_code == 200, ok.text
        record = _only_record(gw, ok)
        assert record.token_kind == "altinn3-migrated" and record.resource == "skd_4628_210607"
        assert (await gw.client.get(tax_base_path("2021"), headers=tax)).json()["reason"] == "metadata_out_of_range"
        income = a3_headers(dev_issuer, subject=INCOME_PERSON, scope="skatteetaten:inntekt", consent=migrated,
                            rights=[("skd_4804_210607", {"fraogmed": "2018-06", "tilogmed": "2018-08"})])
        got = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=income)
        assert got.status_code == 200, got.text
        assert gw.upstream.requests[-1]["query"] == "fraOgMed=2018-07&tilOgMed=2018-08"
        assert _only_record(gw, got).token_kind == "altinn3-migrated"
        outside = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-09", headers=income)
        assert outside.status_code == 403 and outside.json()["reason"] == "metadata_out_of_range"
        # an Altinn 2 pair is refused as a consent problem: Altinn 2 is not configured
        a2 = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert a2.status_code == 403 and a2.json()["reason"] == "altinn2_not_accepted"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        ("https://tt02.altinn.no/", "https://tt02.altinn.no/"),
        ("https://tt02.altinn.no/", "https://tt02.altinn.no"),
        ("https://www.altinn.no", "https://www.altinn.no"),
        ("https://www.altinn.no", "https://www.altinn.no/"),
    ],
    ids=["tt02-as-published", "tt02-no-slash", "prod-as-published", "prod-slash"],
)
async def test_a3_supplier_delegation_source_with_or_without_slash(
    mode: str, configured: str, sent: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    async with running_gateway(mode, issuer_url, gateway={"altinn3_delegation_sources": [configured]}) as gw:
        headers = a3_headers(dev_issuer, supplier="212345678", claims={"delegation_source": sent})
        ok = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert ok.status_code == 200, ok.text
        assert _only_record(gw, ok).supplier == "212345678"
        other = a3_headers(dev_issuer, supplier="212345678", claims={"delegation_source": sent + "x"})
        refused = await gw.client.get(tax_base_path("2022"), headers=other)
        assert refused.status_code == 403 and refused.json()["reason"] == "supplier_mismatch"


@pytest.mark.parametrize("mode", MODES)
async def test_a3_handler_token_refused_by_default(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Altinn issues the token to the consent's handler: ``consumer`` = ``handledBy``, ``to``
    stays the recipient. Refused unless the route opts in."""
    headers = a3_headers(dev_issuer, mp_consumer=HANDLER, consent={"handled_by": HANDLER})
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["reason"] == "handled_by_not_accepted"
        assert "www-authenticate" not in response.headers
        assert gw.upstream.requests == []
        # a handledBy that is not the caller is still a consumer mismatch
        stranger = a3_headers(dev_issuer, mp_consumer=OTHER_BANK, consent={"handled_by": HANDLER})
        mismatch = await gw.client.get(tax_base_path("2022"), headers=stranger)
        assert mismatch.json()["reason"] == "consumer_mismatch"


@pytest.mark.parametrize("mode", MODES)
async def test_a3_handler_token_on_an_opted_in_route_names_both(mode: str, dev_issuer: DevIssuer,
                                                               issuer_url: str) -> None:
    edit = route_keys("spesifisertsummertskattegrunnlag", accept_handled_by=True)
    async with running_gateway(mode, issuer_url, edit=edit) as gw:
        headers = a3_headers(dev_issuer, mp_consumer=HANDLER, consent={"handled_by": HANDLER})
        response = await gw.client.get(tax_base_path("2022"), headers=headers)
        assert response.status_code == 200, response.text
        record = _only_record(gw, response)
        assert record.consumer == BANK and record.handled_by == HANDLER  # recipient and handler
        # the recipient calling for itself is as before, no handler named
        own = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consent={"handled_by": HANDLER}))
        assert own.status_code == 200 and _only_record(gw, own).handled_by is None
        # still only the handler the consent names
        stranger = a3_headers(dev_issuer, mp_consumer=OTHER_BANK, consent={"handled_by": HANDLER})
        assert (await gw.client.get(tax_base_path("2022"), headers=stranger)).json()["reason"] == "consumer_mismatch"


@pytest.mark.parametrize("mode", MODES)
async def test_token_older_than_the_bound_is_401_token_too_old(mode: str, dev_issuer: DevIssuer,
                                                               issuer_url: str) -> None:
    """``max_token_age_seconds`` on the issuer and on the route; the stricter applies. Over the
    bound the client's remedy is a new Maskinporten token: 401 ``invalid_token``."""
    import time

    now = int(time.time())
    edit = route_keys("spesifisertsummertskattegrunnlag", max_token_age_seconds=60)
    async with running_gateway(mode, issuer_url, edit=edit,
                               issuers={"maskinporten": {"max_token_age_seconds": 300}}) as gw:
        fresh = a3_headers(dev_issuer)
        assert (await gw.client.get(tax_base_path("2022"), headers=fresh)).status_code == 200
        old = a3_headers(dev_issuer, claims={"iat": now - 120, "nbf": now - 120})
        response = await gw.client.get(tax_base_path("2022"), headers=old)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert response.json()["reason"] == "token_too_old"
        assert _only_record(gw, response).reason == "token_too_old"
        # the income route has only the issuer's 300 s: the same token is young enough there
        income = a3_headers(dev_issuer, subject=INCOME_PERSON, scope="skatteetaten:inntekt",
                            rights=[(INCOME_RESOURCE, {"fraOgMed": "2018-06", "tilOgMed": "2018-08"})],
                            claims={"iat": now - 120, "nbf": now - 120})
        assert (await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=income)).status_code == 200
        older = a3_headers(dev_issuer, subject=INCOME_PERSON, scope="skatteetaten:inntekt",
                           rights=[(INCOME_RESOURCE, {"fraOgMed": "2018-06", "tilOgMed": "2018-08"})],
                           claims={"iat": now - 400, "nbf": now - 400})
        assert (await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=older)).json()["reason"] == "token_too_old"
        assert len(gw.upstream.requests) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_missing_consent_is_403_without_challenge(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope="skatteetaten:inntekt")
    async with running_gateway(mode, issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 403, response.text
        assert response.json()["reason"] == "missing_consent_token"
        assert "www-authenticate" not in response.headers
        assert _only_record(gw, response).status == 403
        assert "altinnsamtykke header (altinn 2)" in response.json()["detail"].lower()  # the route takes both
    async with running_gateway(mode, issuer_url, edit=altinn3_only) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers={"Authorization": f"Bearer {bearer}"})
        detail = response.json()["detail"]
        assert response.status_code == 403 and "carries no Altinn 3 consent" in detail
        assert "altinnsamtykke" not in detail.lower()  # an Altinn-3-only route never mentions the legacy header


@pytest.mark.parametrize("mode", MODES)
async def test_skatteetaten_style_keeps_each_apis_published_codes(mode: str, dev_issuer: DevIssuer,
                                                                  issuer_url: str) -> None:
    def edit(data: dict) -> None:  # type: ignore[type-arg]
        data["routes"][0]["error_codes"] = {"unauthenticated": "IM-004", "forbidden": "IM-005", "consent": "IM-010"}
        data["routes"][1]["error_codes"] = {"consent": "SSG-010"}

    async with running_gateway(mode, issuer_url, edit=edit, gateway={"error_style": "skatteetaten"}) as gw:
        income = INCOME_PATH + "?fraOgMed=2018-07"
        bare = await gw.client.get(income)
        assert bare.status_code == 401 and bare.json()["kode"] == "IM-004"
        wrong_scope = a2_headers(dev_issuer, scope="skatteetaten:annet")
        scope = await gw.client.get(income, headers=wrong_scope)
        assert scope.status_code == 403 and scope.json()["kode"] == "IM-005"
        assert scope.json()["arsak"] == "scope_missing"
        expired = a2_headers(dev_issuer, claims={"exp": 1_600_000_000, "nbf": 1_599_999_970})
        consent = await gw.client.get(income, headers=expired)
        assert consent.status_code == 403 and consent.json()["kode"] == "IM-010"
        assert consent.json()["arsak"] == "consent_token_expired"
        assert "www-authenticate" not in consent.headers
        tax = await gw.client.get(tax_base_path("2021"), headers=a3_headers(dev_issuer))
        assert tax.status_code == 403 and tax.json()["kode"] == "SSG-010"
        tax_bare = await gw.client.get(tax_base_path("2022"))
        assert tax_bare.status_code == 401 and tax_bare.json()["kode"] == "SG-401"  # not configured: generic
