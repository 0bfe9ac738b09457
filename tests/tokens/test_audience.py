"""``[issuers.*] audience``: the token's ``aud`` must name the data source when configured
(RFC 7519 §4.1.3; docs/protocol.md §3.2: Maskinporten sets ``aud`` only when the client asked for one)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.config import parse_config
from samtykke_gateway.exceptions import ConfigError, InvalidTokenError
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.tokens.verify import REASONS, IssuerPolicy, TokenVerifier

pytestmark = pytest.mark.anyio

CONSUMER = "910000001"
AUD = "https://api.example-datakilde.no/inntekt"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def dev(dev_issuer: DevIssuer) -> DevIssuer:
    return dev_issuer


@pytest.fixture
def policy(dev: DevIssuer, issuer_url: str, http: httpx.AsyncClient) -> IssuerPolicy:
    plain = dev.issuer_policies(http=http, base_url=issuer_url)["maskinporten"]
    narrowed: IssuerPolicy = dataclasses.replace(plain, audiences=(AUD, "https://other.example/"))
    return narrowed


def token(dev: DevIssuer, aud: Any = None, *, drop: bool = False) -> str:
    claims = {} if drop else {"aud": aud}
    return dev.mint_maskinporten(consumer=CONSUMER, scope="skatteetaten:inntekt", claims=claims)


@pytest.mark.parametrize("aud", [AUD, [AUD], ["https://x.example/", AUD], ["https://other.example/"]])
async def test_aud_naming_a_configured_audience_verifies(dev: DevIssuer, policy: IssuerPolicy, aud: Any) -> None:
    verified = await TokenVerifier(cache_size=0).verify(token(dev, aud), policy)
    assert verified.claims["aud"] == aud


@pytest.mark.parametrize(
    "aud",
    [
        "unspecified",  # Maskinporten's value when the client asked for no audience
        "https://api.example-datakilde.no/inntekt/",  # exact string comparison
        "HTTPS://API.EXAMPLE-DATAKILDE.NO/inntekt",
        AUD + " ",
        None,
        1,
        True,
        {"aud": AUD},
        [],
        [[AUD]],
        [AUD, 1],  # an array with a non-string is not an audience list
        ["https://x.example/"] * 40 + [AUD],  # over the bound
    ],
)
async def test_other_aud_values_are_refused(dev: DevIssuer, policy: IssuerPolicy, aud: Any) -> None:
    assert "wrong_audience" in REASONS
    with pytest.raises(InvalidTokenError) as info:
        await TokenVerifier().verify(token(dev, aud), policy)
    assert info.value.reason == "wrong_audience" and info.value.status_code == 401


async def test_missing_aud_is_refused_when_configured(dev: DevIssuer, policy: IssuerPolicy) -> None:
    with pytest.raises(InvalidTokenError) as info:
        await TokenVerifier().verify(token(dev, drop=True), policy)
    assert info.value.reason == "wrong_audience"


async def test_without_configured_audience_aud_is_not_checked(
    dev: DevIssuer, issuer_url: str, http: httpx.AsyncClient
) -> None:
    plain = dev.issuer_policies(http=http, base_url=issuer_url)["maskinporten"]
    assert plain.audiences == ()
    for aud in ("unspecified", "https://somewhere.else/"):
        await TokenVerifier().verify(token(dev, aud), plain)
    await TokenVerifier().verify(token(dev, drop=True), plain)


async def test_cached_token_is_not_accepted_under_a_policy_with_an_audience(
    dev: DevIssuer, issuer_url: str, http: httpx.AsyncClient, policy: IssuerPolicy
) -> None:
    # a reload that adds an audience builds new policies: the cache must not carry the old
    # verdict over
    plain = dev.issuer_policies(http=http, base_url=issuer_url)["maskinporten"]
    verifier = TokenVerifier()
    wrong = token(dev, "https://somewhere.else/")
    await verifier.verify(wrong, plain)
    with pytest.raises(InvalidTokenError):
        await verifier.verify(wrong, policy)


def _config(audience: Any) -> dict[str, Any]:
    return {
        "issuers": {
            "maskinporten": {
                "issuer": "https://test.maskinporten.no/",
                "jwks_url": "http://127.0.0.1:1/jwk",
                "audience": audience,
            }
        },
        "upstream": {"url": "http://127.0.0.1:2"},
        "audit": {"url": "memory://"},
        "routes": [{"name": "r", "path": "/r/{fnr}", "scope": "s:r", "subject": {"path": "fnr"},
                    "altinn3_resources": ["r"], "unscoped": True}],
    }


def test_config_reads_one_audience_or_a_list() -> None:
    assert parse_config(_config(AUD), base_dir=Path(".")).issuers["maskinporten"].audiences == (AUD,)
    assert parse_config(_config([AUD, "urn:x"]), base_dir=Path(".")).issuers["maskinporten"].audiences == (AUD, "urn:x")


@pytest.mark.parametrize("bad", [[], "", " x", "unspecified", [AUD, 3], 5, "x" * 600])
def test_config_refuses_unusable_audiences(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(bad), base_dir=Path("."))
    assert "issuers.maskinporten.audience" in str(info.value)


def test_gate_passes_the_configured_audience_to_the_policy(dev: DevIssuer) -> None:
    from samtykke_gateway.policy.decide import build_issuer_policies

    cfg = parse_config(_config(AUD), base_dir=Path("."))
    policies = build_issuer_policies(cfg, httpx.AsyncClient(), clock=time.time)
    assert policies["maskinporten"].audiences == (AUD,)


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_gateway_refuses_a_token_for_another_audience_and_records_it(
    mode: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    from tests.support import a3_headers, running_gateway, tax_base_path

    overrides: dict[str, Any] = {"issuers": {"maskinporten": {"audience": AUD}}}
    async with running_gateway(mode, issuer_url, **overrides) as gw:
        wrong = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, claims={"aud": "unspecified"}))
        assert wrong.status_code == 401
        assert "invalid_token" in wrong.headers["www-authenticate"]
        assert "personidentifikator" not in wrong.text and "skattepliktig" not in wrong.text
        record = gw.records[-1]
        assert (record.decision, record.reason, record.status) == ("deny", "wrong_audience", 401)
        right = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, claims={"aud": AUD}))
        assert right.status_code == 200, right.text
        assert gw.records[-1].decision == "allow"
