"""The attack catalogue: one test per known JWT attack class — docs/protocol.md §4 steps 1–4, RFC 8725.

Every forged token is built with named helpers from real RSA keys generated at test time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.tokens.jose import parse_compact_tuple, split_compact_fast
from samtykke_gateway.dev.issuer import DevIssuer, DevKey, b64url, encode_token
from samtykke_gateway.tokens.verify import REASONS, IssuerPolicy, TokenVerifier

pytestmark = pytest.mark.anyio

SUBJECT = "01017012345"
CONSUMER = "910000001"


class AttackerServer:
    """Serves the attacker's JWKS / certificate on every path and counts every request."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.requests = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        with self._lock:
            self.requests += 1
        body = json.dumps(self.jwks).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def dev() -> DevIssuer:
    return DevIssuer()


@pytest.fixture(scope="module")
def attacker_key() -> DevKey:
    return DevKey(kid="attacker")


@pytest.fixture(scope="module")
def attacker(attacker_key: DevKey) -> Iterator[tuple[AttackerServer, ThreadedServer]]:
    app = AttackerServer({"keys": [attacker_key.public_jwk()]})
    with ThreadedServer(app) as srv:
        yield app, srv


@pytest.fixture(scope="module")
def issuer_app(dev: DevIssuer) -> Any:
    return dev.asgi_app()


@pytest.fixture
async def policies(dev: DevIssuer, issuer_app: Any) -> AsyncIterator[dict[str, IssuerPolicy]]:
    # The legitimate issuer runs in-process (test_keys/test_verify cover real HTTP); only the
    # attacker needs a real socket, to prove that nothing ever connects to it.
    transport = httpx.ASGITransport(app=issuer_app)
    async with httpx.AsyncClient(transport=transport) as client:
        yield dev.issuer_policies(http=client, base_url="http://issuer.test")


async def refused(
    reason: str, token: str, policy: IssuerPolicy, verifier: TokenVerifier | None = None
) -> None:
    assert reason in REASONS
    with pytest.raises(InvalidTokenError) as info:
        await (verifier or TokenVerifier()).verify(token, policy)
    assert info.value.reason == reason, info.value.detail
    assert token not in info.value.detail and SUBJECT not in info.value.detail


def a2_payload(dev: DevIssuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {
        "Services": ["4804_210607"],
        "AuthorizationCode": "5f0d1f2c-8e2b-4f55-9d4c-2f3f0d6a1e11",
        "OfferedBy": SUBJECT,
        "CoveredBy": CONSUMER,
        "iss": dev.ALTINN_ISSUER,
        "exp": now + 30,
        "nbf": now,
    }
    payload.update(extra)
    return payload


def a2_header(dev: DevIssuer, **extra: Any) -> dict[str, Any]:
    key = dev.key("altinn")
    return {"alg": "RS256", "typ": "JWT", "kid": key.kid, "x5t": key.x5t, **extra}


def signed(dev: DevIssuer, header: dict[str, Any], payload: dict[str, Any] | bytes) -> str:
    """Properly signed by the real Altinn dev key: only the content is hostile."""
    return encode_token(header, payload, dev.key("altinn").private_key, "RS256")


# -- algorithm confusion (CVE-2015-9235, CVE-2022-29217 class) --------------------------------


def _public_key_as_secrets(key: DevKey) -> dict[str, bytes]:
    public = key.public_key
    jwk = key.public_jwk()
    return {
        "spki-pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "pkcs1-pem": public.public_bytes(Encoding.PEM, PublicFormat.PKCS1),
        "spki-der": public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        "openssh": public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH),
        "cert-pem": key.certificate.public_bytes(Encoding.PEM),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "n": base64.urlsafe_b64decode(jwk["n"] + "=="),
    }


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize(
    "form",
    [
        "spki-pem",
        "pkcs1-pem",
        "spki-der",
        "openssh",
        "cert-pem",
        "jwk-json",
        "jwk-json-compact",
        "n",
    ],
)
async def test_hmac_signed_with_the_public_key(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], alg: str, form: str
) -> None:
    secret = _public_key_as_secrets(dev.key("altinn"))[form]
    token = encode_token(a2_header(dev, alg=alg), a2_payload(dev), secret, alg)
    await refused("alg_not_allowed", token, policies["altinn"])


async def test_rs256_header_with_hmac_signature(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    secret = _public_key_as_secrets(dev.key("altinn"))["spki-pem"]
    token = encode_token(a2_header(dev), a2_payload(dev), secret, "HS256")
    await refused("bad_signature", token, policies["altinn"])


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", " none", "none "])
@pytest.mark.parametrize("with_signature", [False, True])
async def test_alg_none(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], alg: str, with_signature: bool
) -> None:
    token = encode_token(a2_header(dev, alg=alg), a2_payload(dev), b"", "none")
    if with_signature:
        token += b64url(b"\x00" * 256)
    await refused("alg_not_allowed", token, policies["altinn"])


@pytest.mark.parametrize(
    "alg", [None, 256, ["RS256"], {"RS256": 1}, "", "rs256", "RS256 ", "RS-256", "RS256\u0000"]
)
async def test_alg_missing_or_not_exact(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], alg: Any
) -> None:
    header = a2_header(dev, alg=alg)
    if alg is None:
        del header["alg"]
    token = signed(dev, header, a2_payload(dev))
    await refused("alg_not_allowed", token, policies["altinn"])


async def test_alg_key_type_mismatch(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    base = policies["altinn"]
    both = IssuerPolicy(base.name, base.issuer, ("RS256", "ES256"), base.keys)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = encode_token(a2_header(dev, alg="ES256"), a2_payload(dev), ec_key, "ES256")
    await refused("alg_not_allowed", token, both)
    # Same with the raw RSA signature relabelled as ES256
    rsa_token = signed(dev, a2_header(dev), a2_payload(dev))
    rsa_signature = rsa_token.rsplit(".", 1)[1]
    unsigned = encode_token(a2_header(dev, alg="ES256"), a2_payload(dev), b"", "none")
    relabelled = unsigned + rsa_signature
    await refused("alg_not_allowed", relabelled, both)


# -- keys named in the token header (jku / x5u / jwk / x5c) -----------------------------------


async def test_header_key_references_never_fetched_or_used(
    dev: DevIssuer,
    policies: dict[str, IssuerPolicy],
    attacker: tuple[AttackerServer, ThreadedServer],
    attacker_key: DevKey,
) -> None:
    app, srv = attacker
    before = app.requests
    evil = {
        "jku": f"{srv.url}/jwks.json",
        "x5u": f"{srv.url}/cert.pem",
        "jwk": attacker_key.public_jwk(include_x5c=False),
        "x5c": attacker_key.public_jwk()["x5c"],
    }
    payload = a2_payload(dev)
    forged = [
        # attacker kid: only resolvable through the header references
        encode_token(
            {"alg": "RS256", "kid": "attacker", **evil}, payload, attacker_key.private_key
        ),
        encode_token(
            {"alg": "RS256", "x5t": attacker_key.x5t, **evil}, payload, attacker_key.private_key
        ),
        # the real kid, the attacker's key embedded
        encode_token(a2_header(dev, **evil), payload, attacker_key.private_key),
    ]
    for param in ("jku", "x5u", "jwk", "x5c"):
        header = {"alg": "RS256", "kid": "attacker", param: evil[param]}
        forged.append(encode_token(header, payload, attacker_key.private_key))
    reasons = []
    for token in forged:
        with pytest.raises(InvalidTokenError) as info:
            await TokenVerifier().verify(token, policies["altinn"])
        reasons.append(info.value.reason)
    assert reasons == ["unknown_key"] * 2 + ["bad_signature"] + ["unknown_key"] * 4
    # A legitimately signed token carrying the same parameters verifies: they are ignored.
    legit = signed(dev, a2_header(dev, **evil), payload)
    verified = await TokenVerifier().verify(legit, policies["altinn"])
    assert verified.key_id == dev.key("altinn").kid
    await asyncio.sleep(0.05)  # any stray request would have reached the server by now
    assert app.requests == before == 0


# -- crit --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "crit", [["exp"], ["b64"], ["x-unknown"], [], "b64", None, [1], ["alg"]], ids=repr
)
async def test_crit_refused(dev: DevIssuer, policies: dict[str, IssuerPolicy], crit: Any) -> None:
    header = a2_header(dev, crit=crit, b64=False, **{"x-unknown": 1})
    await refused("crit_not_supported", signed(dev, header, a2_payload(dev)), policies["altinn"])


# -- JWE / compression markers -----------------------------------------------------------------


@pytest.mark.parametrize("extra", [{"enc": "A256GCM"}, {"zip": "DEF"}, {"enc": None}, {"zip": ""},
                                   {"enc": "A128CBC-HS256", "zip": "DEF"}], ids=repr)
async def test_enc_and_zip_headers_refused_on_the_strict_and_fast_paths(
        dev: DevIssuer, policies: dict[str, IssuerPolicy], extra: dict[str, Any]) -> None:
    """Issue 16: ``enc`` / ``zip`` mark an encrypted or compressed token (RFC 7516 §4.1.2-3),
    not the plain JWS the verifier reads; a validly signed one was accepted."""
    payload = a2_payload(dev)
    control = signed(dev, a2_header(dev), payload)
    await TokenVerifier().verify(control, policies["altinn"])
    assert split_compact_fast(control) is not None  # the fast path is live for a known header
    token = signed(dev, a2_header(dev, **extra), payload)
    for _ in range(2):  # a second sight would take the fast paths had the header been cached
        await refused("malformed_token", token, policies["altinn"])
        assert split_compact_fast(token) is None  # jose's fast parse and verify_typed's entry
        with pytest.raises(InvalidTokenError) as info:
            parse_compact_tuple(token)
        assert info.value.reason == "malformed_token"


# -- hostile kid -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        (1, "malformed_token"),
        (True, "malformed_token"),
        (["k"], "malformed_token"),
        ({"$ne": None}, "malformed_token"),
        ("", "malformed_token"),
        ("k" * 257, "malformed_token"),
        ("k" * 10_000, "malformed_token"),
        ("../../../../etc/passwd", "unknown_key"),
        ("/dev/null", "unknown_key"),
        ("' OR '1'='1' --", "unknown_key"),
        ("1; DROP TABLE keys", "unknown_key"),
        ("kid\u0000", "unknown_key"),
        ("http://127.0.0.1:1/", "unknown_key"),
        ("__proto__", "unknown_key"),
    ],
    ids=lambda v: repr(v)[:24],
)
async def test_hostile_kid(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], kid: Any, reason: str
) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    await refused(reason, signed(dev, header, a2_payload(dev)), policies["altinn"])
    # The real key still works afterwards (no poisoning of the key set).
    await TokenVerifier().verify(signed(dev, a2_header(dev), a2_payload(dev)), policies["altinn"])


async def test_hostile_x5t(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    for x5t, reason in [(7, "malformed_token"), ("../x", "unknown_key")]:
        header = {"alg": "RS256", "x5t": x5t}
        await refused(reason, signed(dev, header, a2_payload(dev)), policies["altinn"])


async def test_no_key_reference_at_all(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    token = signed(dev, {"alg": "RS256", "typ": "JWT"}, a2_payload(dev))
    await refused("unknown_key", token, policies["altinn"])


# -- time claims ------------------------------------------------------------------------------


def _raw_payload(dev: DevIssuer, claim: str, literal: str) -> bytes:
    """Payload JSON with ``claim`` set to a raw JSON literal (no Python round trip)."""
    body = a2_payload(dev)
    body.pop(claim, None)
    text = json.dumps(body, separators=(",", ":"))
    return f'{text[:-1]},"{claim}":{literal}}}'.encode()


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ('"{soon}"', "bad_time_claim"),  # numeric string (PyJWT accepts these)
        ('"{soon}.0"', "bad_time_claim"),
        ("true", "bad_time_claim"),
        ("false", "bad_time_claim"),
        ("null", "bad_time_claim"),
        ("[{soon}]", "bad_time_claim"),
        ('{{"t":{soon}}}', "bad_time_claim"),
        ("-1", "bad_time_claim"),
        ("253402300800", "bad_time_claim"),  # year 10000
        ("1e300", "bad_time_claim"),
        ("1e400", "bad_time_claim"),  # json.loads makes this inf
        ("-1e400", "bad_time_claim"),
        ("1" + "0" * 40, "bad_time_claim"),
        ("NaN", "malformed_token"),  # not JSON: refused by the parser
        ("Infinity", "malformed_token"),
        ("-Infinity", "malformed_token"),
    ],
    ids=lambda v: str(v)[:16],
)
async def test_bad_time_claims(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], claim: str, literal: str, reason: str
) -> None:
    soon = int(time.time()) + 10
    payload = _raw_payload(dev, claim, literal.format(soon=soon))
    await refused(reason, signed(dev, a2_header(dev), payload), policies["altinn"])


async def test_exp_missing(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    payload = a2_payload(dev)
    del payload["exp"]
    await refused("bad_time_claim", signed(dev, a2_header(dev), payload), policies["altinn"])


async def test_nbf_and_iat_are_optional(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    payload = a2_payload(dev)
    del payload["nbf"]
    await TokenVerifier().verify(signed(dev, a2_header(dev), payload), policies["altinn"])


async def test_python_nan_from_a_lax_encoder(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    payload = a2_payload(dev, exp=float("nan"))  # json.dumps writes the NaN literal
    await refused("malformed_token", signed(dev, a2_header(dev), payload), policies["altinn"])


@pytest.mark.parametrize("offset", [-31, -30, -3600, -(10**9)])
async def test_expired_beyond_leeway(
    dev: DevIssuer, policies: dict[str, IssuerPolicy], offset: int
) -> None:
    payload = a2_payload(dev, exp=int(time.time()) + offset, nbf=0)
    await refused("token_expired", signed(dev, a2_header(dev), payload), policies["altinn"])


async def test_expired_within_leeway_is_accepted_but_not_at_the_boundary(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    now = 1_800_000_000.0
    token = signed(dev, a2_header(dev), a2_payload(dev, exp=int(now) - 29, nbf=0))
    await TokenVerifier(clock=lambda: now).verify(token, policies["altinn"])
    await refused("token_expired", token, policies["altinn"], TokenVerifier(clock=lambda: now + 1))


async def test_not_yet_valid(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    payload = a2_payload(dev, nbf=int(time.time()) + 120, exp=int(time.time()) + 300)
    await refused("token_not_yet_valid", signed(dev, a2_header(dev), payload), policies["altinn"])


# -- issuer confusion -----------------------------------------------------------------------


async def test_altinn_token_under_maskinporten_policy(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    token = signed(dev, a2_header(dev), a2_payload(dev))
    verifier = TokenVerifier()
    await verifier.verify(token, policies["altinn"])  # now cached for altinn
    await refused("unknown_key", token, policies["maskinporten"], verifier)


async def test_maskinporten_token_under_altinn_policy(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    token = dev.mint_maskinporten(consumer=CONSUMER, scope="s")
    await refused("unknown_key", token, policies["altinn"])


async def test_shared_key_different_issuer_claim(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    # Even if two issuers shared a key, the iss claim separates them.
    base = policies["altinn"]
    impostor = IssuerPolicy("maskinporten", dev.MASKINPORTEN_ISSUER, ("RS256",), base.keys)
    token = signed(dev, a2_header(dev), a2_payload(dev))
    verifier = TokenVerifier()
    await verifier.verify(token, base)
    await refused("wrong_issuer", token, impostor, verifier)


# -- tampering --------------------------------------------------------------------------------


async def test_flipped_signature_bytes(dev: DevIssuer, policies: dict[str, IssuerPolicy]) -> None:
    token = signed(dev, a2_header(dev), a2_payload(dev))
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    for position in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        await refused(
            "bad_signature", f"{head}.{payload}.{b64url(bytes(flipped))}", policies["altinn"]
        )
    await refused(
        "bad_signature", f"{head}.{payload}.{b64url(bytes(raw[:-1]))}", policies["altinn"]
    )
    await refused(
        "bad_signature", f"{head}.{payload}.{b64url(bytes(raw) + b'x')}", policies["altinn"]
    )
    await refused("bad_signature", f"{head}.{payload}.", policies["altinn"])


async def test_payload_swapped_under_valid_signature(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    token = signed(dev, a2_header(dev), a2_payload(dev))
    other = signed(dev, a2_header(dev), a2_payload(dev, OfferedBy="02027012345"))
    head, _, sig = token.split(".")
    await refused("bad_signature", f"{head}.{other.split('.')[1]}.{sig}", policies["altinn"])


async def test_duplicate_claims_refused_even_when_signed(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    text = json.dumps(a2_payload(dev), separators=(",", ":"))
    payload = (text[:-1] + ',"OfferedBy":"02027012345"}').encode()
    await refused("malformed_token", signed(dev, a2_header(dev), payload), policies["altinn"])
    header = b'{"alg":"RS256","alg":"none","kid":"' + dev.key("altinn").kid.encode() + b'"}'
    token = encode_token(header, a2_payload(dev), dev.key("altinn").private_key)
    await refused("malformed_token", token, policies["altinn"])


async def test_signature_with_padding_refused(
    dev: DevIssuer, policies: dict[str, IssuerPolicy]
) -> None:
    token = signed(dev, a2_header(dev), a2_payload(dev))
    await refused("malformed_token", token + "==", policies["altinn"])


# -- property: whatever a validly signed token contains, only InvalidTokenError comes out ------

_JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_JSON_VALUE = st.recursive(
    _JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_HEADER_NAMES = st.sampled_from(["alg", "kid", "x5t", "crit", "jku", "jwk", "typ", "b64", "zip"])
_CLAIM_NAMES = st.sampled_from(["iss", "exp", "nbf", "iat", "aud", "sub"])


def test_signed_hostile_content_only_raises_invalid_token(dev: DevIssuer) -> None:
    """Fuzz header and claims of tokens that carry a *valid* RS256 signature."""
    verdicts: set[str] = set()
    with asyncio.Runner() as runner:
        transport = httpx.ASGITransport(app=dev.asgi_app())
        client = httpx.AsyncClient(transport=transport)
        policy = dev.issuer_policies(http=client, base_url="http://issuer.test")["altinn"]
        verifier = TokenVerifier()

        @settings(max_examples=150, deadline=None)
        @given(
            st.dictionaries(_HEADER_NAMES, _JSON_VALUE, max_size=4),
            st.dictionaries(_CLAIM_NAMES, _JSON_VALUE, max_size=5),
            st.booleans(),
        )
        def check(header_extra: dict[str, Any], claims: dict[str, Any], base: bool) -> None:
            header = {**a2_header(dev), **header_extra} if base else header_extra
            payload = {**a2_payload(dev), **claims} if base else claims
            token = signed(dev, header, payload)
            try:
                runner.run(verifier.verify(token, policy))
                verdicts.add("ok")
            except InvalidTokenError as exc:
                assert exc.reason in REASONS
                verdicts.add(exc.reason)

        check()
        runner.run(client.aclose())
    assert "ok" in verdicts and len(verdicts) > 3


# -- issue 11: delegation_source look-alikes; handledBy never widens the consent ----------------


@pytest.mark.parametrize(
    ("sent", "accepted"),
    [
        ("https://tt02.altinn.no/", True),
        ("https://tt02.altinn.no", True),
        ("https://tt02.altinn.no//", False),  # only one trailing '/' is ignored
        ("https://tt02.altinn.no/x", False),
        ("https://tt02.altinn.no.evil.example/", False),
        ("HTTPS://TT02.ALTINN.NO/", False),  # exact apart from the one '/'
        ("https://tt02.altinn.no/ ", False),
        ("", False),
        (None, False),
    ],
)
def test_delegation_source_compared_exactly_but_for_one_trailing_slash(sent: str | None, accepted: bool) -> None:
    from samtykke_gateway.policy.binding import delegation_source_accepted

    assert delegation_source_accepted(sent, ["https://tt02.altinn.no/"]) is accepted
    assert delegation_source_accepted(sent, ["https://tt02.altinn.no"]) is accepted
    assert delegation_source_accepted(sent, []) is False


def test_handled_by_only_lets_the_named_handler_in_and_only_where_opted_in() -> None:
    from samtykke_gateway.policy.binding import check_consumer
    from samtykke_gateway.exceptions import InsufficientConsentError
    from samtykke_gateway.identifiers import Party
    from samtykke_gateway.tokens.model import Consent, MaskinportenToken

    consent = Consent("altinn3", "c", Party("person", "12879397780"), "999999999", 2e9, (), "maskinporten", "k",
                      handled_by="312345678")

    def caller(org: str) -> MaskinportenToken:
        return MaskinportenToken("maskinporten", "k", org, frozenset(), 2e9)

    assert check_consumer(consent, caller("999999999"), []) is None  # the recipient itself
    assert check_consumer(consent, caller("312345678"), [], accept_handled_by=True) == "312345678"
    for org, opt_in, reason in (("312345678", False, "handled_by_not_accepted"),
                                ("888888888", True, "consumer_mismatch")):
        with pytest.raises(InsufficientConsentError) as info:
            check_consumer(consent, caller(org), [], accept_handled_by=opt_in)
        assert info.value.reason == reason and info.value.status_code == 403
    # Altinn 2 has no handler rule: HandledBy there is the supplier
    a2 = Consent("altinn2", "c", Party("person", "12879397780"), "999999999", 2e9, (), "altinn", "k",
                 supplier="312345678")
    with pytest.raises(InsufficientConsentError):
        check_consumer(a2, caller("312345678"), [], accept_handled_by=True)
