"""TokenVerifier: the happy paths, the order of checks, the cache — docs/protocol.md §4 steps 1–4."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.exceptions import (
    ConfigError,
    InvalidTokenError,
    KeysUnavailableError,
)
from samtykke_gateway.tokens.jose import parse_compact
from samtykke_gateway.tokens.keys import KeySet
from samtykke_gateway.dev.issuer import DevIssuer, DevKey, b64url, encode_token
from samtykke_gateway.tokens.altinn2 import consent_from_altinn2_claims
from samtykke_gateway.tokens.memo import VerifiedClaims
from samtykke_gateway.tokens.verify import (
    REASONS,
    IssuerPolicy,
    TokenVerifier,
    VerifiedToken,
)

pytestmark = pytest.mark.anyio

SUBJECT = "01017012345"
CONSUMER = "910000001"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dev() -> DevIssuer:
    return DevIssuer()


@pytest.fixture(scope="module")
def server(dev: DevIssuer) -> Iterator[ThreadedServer]:
    with ThreadedServer(dev.asgi_app()) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def policies(
    dev: DevIssuer, server: ThreadedServer, http: httpx.AsyncClient
) -> dict[str, IssuerPolicy]:
    return dev.issuer_policies(http=http, base_url=server.url)


def a2(dev: DevIssuer, **kw: Any) -> str:
    return dev.mint_altinn2(subject=SUBJECT, consumer=CONSUMER, services=["4804_210607"], **kw)


def mp(dev: DevIssuer, **kw: Any) -> str:
    return dev.mint_maskinporten(consumer=CONSUMER, scope="skatteetaten:inntekt", **kw)


async def expect(
    reason: str, token: str, policy: IssuerPolicy, verifier: TokenVerifier | None = None
) -> InvalidTokenError:
    assert reason in REASONS
    with pytest.raises(InvalidTokenError) as info:
        await (verifier or TokenVerifier()).verify(token, policy)
    assert info.value.reason == reason, info.value.detail
    assert info.value.status_code == 401
    assert (not token or token not in info.value.detail) and SUBJECT not in info.value.detail
    return info.value


# -- happy paths ---------------------------------------------------------------------------------


async def test_altinn2_token_verifies(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    token = a2(dev)
    verified = await TokenVerifier().verify(token, policies["altinn"])
    assert isinstance(verified, VerifiedToken)
    assert verified.issuer == "altinn"
    assert verified.key_id == dev.key("altinn").x5t
    assert verified.claims["OfferedBy"] == SUBJECT
    assert verified.header["alg"] == "RS256"
    assert verified.expires_at == verified.claims["exp"]


async def test_maskinporten_token_with_altinn3_consent_verifies(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    consent = dev.altinn3_consent(
        subject=SUBJECT, consumer=CONSUMER, rights=[("ske-inntekt", {"fraOgMed": "2024-01"})]
    )
    token = mp(dev, authorization_details=[consent])
    verified = await TokenVerifier().verify(token, policies["maskinporten"])
    assert verified.key_id == dev.key("maskinporten").kid
    assert verified.claims["authorization_details"][0]["from"].endswith(SUBJECT)
    assert verified.claims["consumer"]["ID"] == f"0192:{CONSUMER}"


async def test_discovery_policies_verify(
    dev: DevIssuer, server: ThreadedServer, http: httpx.AsyncClient
) -> None:
    policies = dev.issuer_policies(http=http, base_url=server.url, discovery=True)
    verifier = TokenVerifier()
    await verifier.verify(a2(dev), policies["altinn"])
    await verifier.verify(mp(dev), policies["maskinporten"])


async def test_altinn2_x5c_only_jwks_and_x5t_only_header(
    dev: DevIssuer, http: httpx.AsyncClient
) -> None:
    with ThreadedServer(dev.asgi_app(x5c_only=True)) as srv:
        policy = dev.issuer_policies(http=http, base_url=srv.url)["altinn"]
        verifier = TokenVerifier(cache_size=0)
        verified = await verifier.verify(a2(dev), policy)
        assert verified.key_id == dev.key("altinn").x5t
        await verifier.verify(a2(dev, drop=["kid"]), policy)  # older tokens: x5t only
        await verifier.verify(a2(dev, drop=["x5t"]), policy)  # kid is the thumbprint


def jwks_client(*jwks: dict[str, Any]) -> httpx.AsyncClient:
    """In-process client whose every GET returns the JWK Set ``{"keys": jwks}``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"keys": list(jwks)}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app))


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
async def test_rsa_algorithms_when_allowed(dev: DevIssuer, alg: str) -> None:
    key = dev.key("maskinporten")
    jwk = key.public_jwk()
    del jwk["alg"]  # a key without published alg serves every RSA alg the policy allows
    async with jwks_client(jwk) as client:
        keys = KeySet(name="maskinporten", http=client, jwks_url="http://jwks.test/jwk")
        policy = IssuerPolicy("maskinporten", dev.MASKINPORTEN_ISSUER, (alg,), keys)
        payload = {"iss": dev.MASKINPORTEN_ISSUER, "exp": int(time.time()) + 60}
        token = encode_token({"alg": alg, "kid": key.kid}, payload, key.private_key, alg)
        await TokenVerifier().verify(token, policy)
        other = "RS256" if alg != "RS256" else "RS512"
        wrong = encode_token({"alg": other, "kid": key.kid}, payload, key.private_key, other)
        await expect("alg_not_allowed", wrong, policy)


async def test_published_key_alg_is_enforced(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    base = policies["maskinporten"]  # the dev JWKS publishes "alg": "RS256"
    policy = IssuerPolicy(base.name, base.issuer, ("RS256", "RS512"), base.keys)
    key = dev.key("maskinporten")
    payload = {"iss": dev.MASKINPORTEN_ISSUER, "exp": int(time.time()) + 60}
    token = encode_token({"alg": "RS512", "kid": key.kid}, payload, key.private_key, "RS512")
    await expect("alg_not_allowed", token, policy)


async def test_rotation_is_followed(dev: DevIssuer, server: ThreadedServer) -> None:
    rotating = DevIssuer()
    with ThreadedServer(rotating.asgi_app()) as srv:
        async with httpx.AsyncClient() as client:
            policy = rotating.issuer_policies(
                http=client, base_url=srv.url, refetch_cooldown_seconds=0
            )["maskinporten"]
            verifier = TokenVerifier()
            old_token = mp(rotating)
            await verifier.verify(old_token, policy)
            new_key = rotating.rotate("maskinporten")
            new_token = mp(rotating)
            assert (await verifier.verify(new_token, policy)).key_id == new_key.kid
            await TokenVerifier().verify(mp(rotating, key=rotating.keys("maskinporten")[1]), policy)


# -- order and reasons ----------------------------------------------------------------------------


async def test_parse_errors_come_first(policies: dict[str, IssuerPolicy]) -> None:
    await expect("malformed_token", "not.a.token!", policies["altinn"])
    await expect("malformed_token", "", policies["altinn"])


async def test_signature_checked_before_claims(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    # Forged expired token for the wrong issuer: the signature is what is reported.
    real = dev.key("altinn")
    header = {"kid": real.kid, "x5t": real.x5t}
    token = a2(dev, key=DevKey(), header=header, claims={"iss": "evil", "exp": 1})
    await expect("bad_signature", token, policies["altinn"])


async def test_issuer_must_match_exactly(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    for iss in ["Altinn.no", "altinn.no ", "altinn.no/", "https://altinn.no", ["altinn.no"], None]:
        await expect("wrong_issuer", a2(dev, claims={"iss": iss}), policies["altinn"])
    await expect("wrong_issuer", a2(dev, drop=["iss"]), policies["altinn"])
    mp_no_slash = mp(dev, claims={"iss": dev.MASKINPORTEN_ISSUER.rstrip("/")})
    await expect("wrong_issuer", mp_no_slash, policies["maskinporten"])


async def test_keys_unavailable_passes_through(dev: DevIssuer, http: httpx.AsyncClient) -> None:
    keys = KeySet(name="altinn", http=http, jwks_url="http://127.0.0.1:9/jwk")
    policy = IssuerPolicy(name="altinn", issuer="altinn.no", algorithms=("RS256",), keys=keys)
    with pytest.raises(KeysUnavailableError) as info:
        await TokenVerifier().verify(a2(dev), policy)
    assert info.value.status_code == 503


# -- time claims ----------------------------------------------------------------------------------


async def test_float_times_accepted(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    now = time.time()
    token = a2(dev, claims={"exp": now + 20.5, "nbf": now - 0.25})
    assert (await TokenVerifier().verify(token, policies["altinn"])).expires_at == now + 20.5


async def test_leeway_boundaries(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    policy = policies["altinn"]  # leeway 30 s
    clock = Clock()
    exp = int(clock.now) + 10
    token = a2(dev, claims={"exp": exp, "nbf": exp - 40})

    clock.now = exp + 29.999
    await TokenVerifier(clock=clock).verify(token, policy)
    clock.now = exp + 30
    await expect("token_expired", token, policy, TokenVerifier(clock=clock))

    clock.now = exp - 40 - 30  # nbf - leeway: still fine
    await TokenVerifier(clock=clock).verify(token, policy)
    clock.now = exp - 40 - 30.001
    await expect("token_not_yet_valid", token, policy, TokenVerifier(clock=clock))


async def test_iat_in_the_future(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    now = int(time.time())
    await TokenVerifier().verify(mp(dev, claims={"iat": now + 29}), policies["maskinporten"])
    token = mp(dev, claims={"iat": now + 120})
    await expect("token_not_yet_valid", token, policies["maskinporten"])


# -- the cache ------------------------------------------------------------------------------------


async def test_cache_hit_returns_same_result_and_is_cheap(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    verifier = TokenVerifier()
    token = a2(dev)
    first = await verifier.verify(token, policies["altinn"])
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        again = await verifier.verify(token, policies["altinn"])
    per_call = (time.perf_counter() - started) / n
    assert again is first
    assert per_call < 50e-6  # bench/bench_verify.py measures the real number (≤ 5 µs target)


async def test_cache_never_outlives_exp_plus_leeway(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    clock = Clock()
    verifier = TokenVerifier(clock=clock)
    token = a2(dev, lifetime_seconds=5)
    exp = (await verifier.verify(token, policies["altinn"])).expires_at
    clock.now = exp + 29.9
    await verifier.verify(token, policies["altinn"])
    clock.now = exp + 30
    await expect("token_expired", token, policies["altinn"], verifier)


async def test_cache_is_per_issuer(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    verifier = TokenVerifier()
    token = a2(dev)
    await verifier.verify(token, policies["altinn"])
    await expect("unknown_key", token, policies["maskinporten"], verifier)
    # A policy with the same name but other settings does not reuse the entry either.
    base = policies["altinn"]
    stricter = IssuerPolicy(
        name="altinn", issuer="altinn.no", algorithms=("PS256",), keys=base.keys
    )
    await expect("alg_not_allowed", token, stricter, verifier)


async def test_failures_are_not_cached_and_cache_is_bounded(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    verifier = TokenVerifier(cache_size=2)
    tokens = [a2(dev) for _ in range(4)]
    for token in tokens:
        await verifier.verify(token, policies["altinn"])
    assert verifier._cache is not None and len(verifier._cache) == 2
    bad = tokens[0][:-4] + ("AAAA" if not tokens[0].endswith("AAAA") else "BBBB")
    for _ in range(2):
        await expect("bad_signature", bad, policies["altinn"], verifier)


async def test_cache_disabled(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    verifier = TokenVerifier(cache_size=0)
    token = a2(dev)
    first = await verifier.verify(token, policies["altinn"])
    assert (await verifier.verify(token, policies["altinn"])) is not first
    # Nothing to remember parsed results on: a plain dict, which the parsers never memoise on.
    assert type(first.claims) is dict


async def test_parsed_consent_lives_on_the_cached_claims(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    verifier = TokenVerifier(cache_size=1)
    token = a2(dev)
    verified = await verifier.verify(token, policies["altinn"])
    assert type(verified.claims) is VerifiedClaims
    assert verified.claims == parse_compact(token).payload
    consent = consent_from_altinn2_claims(verified.claims, issuer="altinn", key_id=verified.key_id)
    again = await verifier.verify(token, policies["altinn"])
    assert again is verified
    assert consent_from_altinn2_claims(again.claims, issuer="altinn", key_id=again.key_id) is consent
    await verifier.verify(a2(dev), policies["altinn"])  # evicts the first token (size 1)
    fresh = await verifier.verify(token, policies["altinn"])
    assert fresh is not verified and fresh.claims is not verified.claims
    reparsed = consent_from_altinn2_claims(fresh.claims, issuer="altinn", key_id=fresh.key_id)
    assert reparsed is not consent and reparsed == consent


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithms",
    [(), ("none",), ("HS256",), ("RS256", "HS512"), ("rs256",), ("EdDSA",), ["RS256"], "RS256"],
)
def test_policy_refuses_unsafe_algorithm_lists(algorithms: Any) -> None:
    client = httpx.AsyncClient()
    keys = KeySet(name="altinn", http=client, jwks_url="http://127.0.0.1:9/jwk")
    with pytest.raises(ConfigError):
        IssuerPolicy(name="altinn", issuer="altinn.no", algorithms=algorithms, keys=keys)


@pytest.mark.parametrize("leeway", [-1, float("nan"), float("inf"), 301])
def test_policy_refuses_bad_leeway(leeway: float) -> None:
    client = httpx.AsyncClient()
    keys = KeySet(name="altinn", http=client, jwks_url="http://127.0.0.1:9/jwk")
    with pytest.raises(ConfigError):
        IssuerPolicy("altinn", "altinn.no", ("RS256",), keys, leeway_seconds=leeway)


def test_negative_cache_size_refused() -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(cache_size=-1)


# -- EC keys --------------------------------------------------------------------------------------


def _ec_jwk(kid: str, private: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    numbers = private.public_key().public_numbers()
    size = (private.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[private.curve.name]
    return {
        "kty": "EC",
        "use": "sig",
        "crv": crv,
        "kid": kid,
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
    }


@pytest.mark.parametrize(
    ("alg", "curve"),
    [("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1()), ("ES512", ec.SECP521R1())],
)
async def test_ecdsa_tokens(alg: str, curve: ec.EllipticCurve) -> None:
    private = ec.generate_private_key(curve)
    other_curve = ec.generate_private_key(ec.SECP384R1() if alg == "ES256" else ec.SECP256R1())
    async with jwks_client(_ec_jwk("ec", private), _ec_jwk("other", other_curve)) as client:
        keys = KeySet(name="ec", http=client, jwks_url="http://jwks.test/jwk")
        policy = IssuerPolicy("ec", "https://ec.test/", ("ES256", "ES384", "ES512"), keys)
        payload = {"iss": "https://ec.test/", "exp": int(time.time()) + 60}
        token = encode_token({"alg": alg, "kid": "ec"}, payload, private, alg)
        await TokenVerifier().verify(token, policy)
        # DER instead of raw r||s, truncated, and a key on another curve: all refused
        head, body, sig = token.split(".")
        raw = base64.urlsafe_b64decode(sig + "==")
        half = len(raw) // 2
        der = encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
        await expect("bad_signature", f"{head}.{body}.{b64url(der)}", policy)
        await expect("bad_signature", f"{head}.{body}.{b64url(raw[:-1])}", policy)
        wrong_curve = encode_token({"alg": alg, "kid": "other"}, payload, private, alg)
        await expect("alg_not_allowed", wrong_curve, policy)


# -- the dev issuer's shapes (docs/protocol.md §3) ------------------------------------------------------------


async def test_dev_issuer_documents(dev: DevIssuer, server: ThreadedServer) -> None:
    async with httpx.AsyncClient() as client:
        meta = await client.get(f"{server.url}/altinn/.well-known/oauth-authorization-server")
        assert meta.json()["jwks_uri"] == f"{server.url}/altinn/jwk"
        assert meta.headers["cache-control"] == "max-age=300"
        jwks = (await client.get(meta.json()["jwks_uri"])).json()
        assert [k["kid"] for k in jwks["keys"]] == [dev.key("altinn").x5t]
        assert (await client.get(f"{server.url}/other/jwk")).status_code == 404
    key = dev.jwks("maskinporten")["keys"][0]
    assert key["kty"] == "RSA" and key["use"] == "sig" and "d" not in key
    assert dev.jwks("altinn", x5c_only=True)["keys"][0].keys() == {"kty", "use", "x5c"}


def test_dev_issuer_token_shapes(dev: DevIssuer) -> None:
    a2_token = dev.mint_altinn2(
        subject=SUBJECT,
        consumer=CONSUMER,
        services=["4804_210607"],
        supplier="910000002",
        claim_name="ServiceCodes",
        drop=["nbf"],
    )
    jws = parse_compact(a2_token)
    key = dev.key("altinn")
    assert jws.header == {"alg": "RS256", "typ": "JWT", "kid": key.x5t, "x5t": key.x5t}
    claims = jws.payload
    assert claims["ServiceCodes"] == ["4804_210607"] and "Services" not in claims
    assert claims["OfferedBy"] == SUBJECT and claims["CoveredBy"] == CONSUMER
    assert claims["HandledBy"] == "910000002" and "nbf" not in claims
    assert claims["exp"] - claims["DelegatedDate"] == 30
    assert claims["ValidToDate"] - claims["DelegatedDate"] == 86400

    consent = dev.altinn3_consent(
        subject="910000009", consumer=CONSUMER, rights=[("res", {"inntektsaar": "2022"})]
    )
    assert consent["from"] == "urn:altinn:organization:identifier-no:910000009"
    assert consent["validTo"].endswith("Z")
    assert consent["consentRights"][0]["resource"] == [
        {"type": "urn:altinn:resource", "value": "res"}
    ]
    mp_claims = parse_compact(
        dev.mint_maskinporten(
            consumer=CONSUMER, scope="a b", supplier="910000002", authorization_details=[consent]
        )
    ).payload
    assert mp_claims["consumer"] == {"authority": "iso6523-actorid-upis", "ID": f"0192:{CONSUMER}"}
    assert mp_claims["supplier"]["ID"] == "0192:910000002"
    assert mp_claims["delegation_source"] == dev.ALTINN3_DELEGATION_SOURCE
    assert mp_claims["exp"] - mp_claims["iat"] == 120
    assert mp_claims["authorization_details"] == [consent]
    with pytest.raises(ValueError):
        dev.rotate("nav")


# -- issue 11: token age (now - iat), on the gate's injected clock --------------------------------


def _gate_at(now: float, *, issuer_bound: float | None, **route_keys: Any) -> tuple[Any, Any]:
    import tomllib

    from samtykke_gateway.config import parse_config
    from samtykke_gateway.cli.demo import demo_config_text
    from samtykke_gateway.policy.decide import Gate
    from samtykke_gateway.tokens.verify import TokenVerifier

    data = tomllib.loads(demo_config_text(issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                                          audit_url="memory://"))
    if issuer_bound is not None:
        data["issuers"]["maskinporten"]["max_token_age_seconds"] = issuer_bound
    data["routes"][1].update(route_keys)
    from importlib import resources
    from pathlib import Path

    config = parse_config(data, base_dir=Path(str(resources.files("samtykke_gateway.dev.data"))))
    return Gate(config, issuers={}, verifier=TokenVerifier(), clock=lambda: now), config.routes[1]


def _mp(iat: float | None) -> Any:
    from samtykke_gateway.tokens.model import MaskinportenToken

    return MaskinportenToken("maskinporten", "k", "999999999", frozenset({"s"}), 2e9, issued_at=iat)


@pytest.mark.parametrize(
    ("issuer_bound", "route_bound", "age", "refused"),
    [
        (None, None, 10_000, False),  # no bound configured: age is not checked
        (300, None, 300, False),  # exactly at the bound
        (300, None, 301, True),
        (None, 60, 61, True),
        (300, 60, 120, True),  # the stricter (route) wins
        (60, 300, 120, True),  # the stricter (issuer) wins
        (300, 600, 299.5, False),
    ],
)
def test_token_age_bound_is_the_stricter_of_issuer_and_route(
    issuer_bound: float | None, route_bound: float | None, age: float, refused: bool
) -> None:
    now = 1_800_000_000.0
    keys = {} if route_bound is None else {"max_token_age_seconds": route_bound}
    gate, route = _gate_at(now, issuer_bound=issuer_bound, **keys)
    if not refused:
        gate.check_token_age(_mp(now - age), route.max_token_age_seconds)
        return
    with pytest.raises(InvalidTokenError) as info:
        gate.check_token_age(_mp(now - age), route.max_token_age_seconds)
    assert info.value.status_code == 401 and info.value.reason == "token_too_old"
    assert info.value.www_authenticate == 'Bearer error="invalid_token"'


def test_token_without_iat_is_too_old_only_where_age_is_bounded() -> None:
    gate, route = _gate_at(1_800_000_000.0, issuer_bound=None)
    gate.check_token_age(_mp(None), route.max_token_age_seconds)
    bounded, route = _gate_at(1_800_000_000.0, issuer_bound=120)
    with pytest.raises(InvalidTokenError) as info:
        bounded.check_token_age(_mp(None), route.max_token_age_seconds)
    assert info.value.reason == "token_too_old"
