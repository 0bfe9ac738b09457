"""The typed one-pass reading of Maskinporten tokens (:mod:`samtykke_gateway.tokens.typed`,
:meth:`TokenVerifier.verify_typed`) accepts only what the strict path accepts, with the same
result; everything else is left to the strict path (issue 3, speed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import InvalidConsentError, InvalidTokenError
from samtykke_gateway.tokens.jose import _reference_json_object
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.tokens import typed
from samtykke_gateway.tokens.maskinporten import maskinporten_from_claims
from samtykke_gateway.tokens.memo import VerifiedClaims
from samtykke_gateway.tokens.verify import IssuerPolicy, TokenVerifier
import time
import uuid
from samtykke_gateway.dev.issuer import encode_token
from tests.support import BANK, TAX_BASE_PERSON, TAX_BASE_RESOURCE, TAX_BASE_SCOPE, running_gateway, tax_base_path

NOW = 1_800_000_000
ORG = {"authority": "iso6523-actorid-upis", "ID": "0192:999999999"}

_ORGS = st.sampled_from(
    [
        *[ORG] * 8,
        {"authority": "iso6523-actorid-upis", "ID": "0192:12345678"},
        {"authority": "iso6523-actorid-upis", "ID": "0192:１２３４５６７８９"},
        {"authority": "iso6523-actorid-upis", "ID": "0193:999999999"},
        {"authority": "other", "ID": "0192:999999999"},
        {"authority": "iso6523-actorid-upis", "ID": "0192:999999999", "x": 1},
        {"authority": "iso6523-actorid-upis"},
        "urn:altinn:organization:identifier-no:999999999",
        "urn:altinn:person:identifier-no:01029413157",
        "0192:999999999",
        None,
        7,
    ]
)
_INSTANTS = st.sampled_from(
    [
        *["2026-11-30T13:15:31Z"] * 8,
        "2026-11-30T13:15:31.1234567+01:00",
        "2026-11-30T13:15:31.12Z",
        "2024-02-29T00:00:00-02:30",
        "2023-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-30T24:00:00Z",
        "2026-11-30 13:15:31Z",
        "2026-11-30T13:15:31",
        "2026-11-30T13:15:31z",
        "2026-11-30T13:15:31.12345678Z",
        "٢٠٢٦-11-30T13:15:31Z",
        "",
        None,
        5,
    ]
)
_METADATA = st.dictionaries(
    st.sampled_from(["inntektsaar", "Inntektsaar", "fraOgMed", "fraogmed", "k", "é"]),
    st.one_of(
        st.sampled_from(["2022", "2018-06", "", "x" * 257, "æøå"]), st.integers(0, 3), st.none()
    ),
    max_size=4,
)
_RESOURCE = st.fixed_dictionaries(
    {
        "type": st.sampled_from([*["urn:altinn:resource"] * 5, "urn:altinn:other"]),
        "value": st.sampled_from(["ske-tax", "ske-tax", "r1", "r1", "974761076_4804_210607", "-bad", "a b", ""]),
    },
    optional={"extra": st.sampled_from([None, [1, [2]]])},
).map(lambda r: r if r.get("extra") else {k: v for k, v in r.items() if k != "extra"})
_RIGHT = st.fixed_dictionaries(
    {"resource": st.one_of(st.lists(_RESOURCE, min_size=1, max_size=3), st.none(), st.just("r1"), st.just([]))},
    optional={
        "action": st.sampled_from([*[["consent"]] * 6, ["read"], [], ["consent", "read"], "consent", None,
                                   ["Read", "Write"], ["READ", "read"], [1], ["a b"], ["x" * 65], ["r"] * 17]),
        "metadata": st.one_of(_METADATA, st.none(), st.just([])),
        "metaData": st.one_of(_METADATA, st.none()),
    },
)
_DETAIL = st.fixed_dictionaries(
    {
        "type": st.sampled_from([*["urn:altinn:consent"] * 6, "other", "concent"]),
        "id": st.sampled_from(
            [*["443805FC-5901-4d4d-a37d-643897984acf"] * 6, "a", "-a", "a b", "x" * 129, ""]
        ),
        "from": st.sampled_from(
            [
                *["urn:altinn:person:identifier-no:12879397780"] * 4,
                "urn:altinn:organization:identifier-no:999999999",
                "urn:altinn:person:identifier-no:999999999",
                "urn:altinn:person:identifier-no:1287939778０",
                "12879397780",
            ]
        ),
        "to": _ORGS,
        "validTo": _INSTANTS,
        "consentRights": st.one_of(st.lists(_RIGHT, min_size=1, max_size=3), st.none()),
    },
    optional={"consented": _INSTANTS, "handledBy": st.one_of(_ORGS, st.none())},
)
_DEEP: Any = 1
for _ in range(34):
    _DEEP = [_DEEP]
_INTS = st.sampled_from([*[NOW] * 8, NOW + 60, 0, 253402300799, 253402300800, -1, 2**70, 1.5, True, "1"])
_CLAIMS = st.fixed_dictionaries(
    {
        "iss": st.sampled_from(["https://dev.maskinporten.local/", "other"]),
        "scope": st.one_of(
            st.sampled_from([*["a b"] * 8, " a  b ", "", "s" * 4097, "skatteetaten:inntekt"]),
            st.integers(0, 1),
        ),
        "consumer": _ORGS,
        "exp": _INTS,
    },
    optional={
        "iat": _INTS,
        "nbf": _INTS,
        "aud": st.sampled_from(["unspecified", ["a", "b"], ["a", "b"], [1], 5]),
        "supplier": _ORGS,
        "delegation_source": st.sampled_from(["https://altinn.no", "x" * 513, 3]),
        "client_id": st.sampled_from(["dev-client", "x" * 513, None]),
        "client_amr": st.sampled_from(["private_key_jwt", 1]),
        "token_type": st.sampled_from(["Bearer", None]),
        "jti": st.sampled_from(["e971339c", "x" * 513, [1]]),
        "authorization_details": st.one_of(
            st.lists(_DETAIL, max_size=2), st.none(), st.just({"type": "urn:altinn:consent"})
        ),
    },
)
_EXTRA = st.sampled_from([{}, {}, {}, {}, {"pid": "12879397780"}, {"deep": _DEEP}])
_DETAIL_EXTRA: st.SearchStrategy[dict[str, Any]] = st.sampled_from([{}, {}, {}, {"extra": {"deep": [[[]]]}}])


def _serialise(claims: dict[str, Any], how: str) -> bytes:
    if how == "compact":
        return json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    if how == "spaced":
        return json.dumps(claims, ensure_ascii=False).encode()
    if how == "ascii":
        return json.dumps(claims, separators=(",", ":")).encode()
    text = json.dumps(claims, separators=(",", ":"), ensure_ascii=False)
    if how == "dup-first":  # repeat the first member at the end, with another value
        name = next(iter(claims))
        text = text[:-1] + f',"{name}":"dup"}}'
    elif how == "dup-same":  # repeat a nested member with the same value
        text = text.replace('"ID":"0192:999999999"', '"ID":"0192:999999999","ID":"0192:999999999"', 1)
    elif how == "dup-short":  # repeat a member whose second value is shorter
        text = text.replace('"scope":', '"scope":"x","scope":', 1)
    elif how == "minus-zero":
        text = text.replace(f'"exp":{claims.get("exp")}', '"exp":-0', 1)
    elif how == "null-member":
        text = text[:-1] + ',"supplier":null}'
    return text.encode()


def _strict(payload: bytes) -> Any:
    try:
        claims = _reference_json_object(payload)
    except ValueError as exc:
        return ("malformed", str(exc))
    try:
        return maskinporten_from_claims(claims, issuer="maskinporten", key_id="k", expires_at=1.0)
    except (InvalidTokenError, InvalidConsentError) as exc:
        return ("refused", exc.reason, exc.detail)


def _check(payload: bytes) -> bool:
    """Asserts agreement; returns whether the typed path accepted the payload."""
    decoded = typed.decode_maskinporten(payload)
    if decoded is None:
        return False
    # Read alike: the strict reader accepts the payload and gives the same claims set.
    assert msgspec.to_builtins(decoded) == _reference_json_object(payload)
    built = typed.maskinporten_from_typed(
        decoded, issuer="maskinporten", key_id="k", expires_at=1.0
    )
    if built is not None:
        assert built == _strict(payload)
    return built is not None


_HOW = st.sampled_from(
    ["compact", "compact", "compact", "spaced", "ascii", "dup-first", "dup-same", "dup-short",
     "minus-zero", "null-member"]
)


@settings(max_examples=3000, deadline=None)
@given(_CLAIMS, _HOW, _EXTRA, _DETAIL_EXTRA)
def test_typed_reading_agrees_with_the_strict_path(
    claims: dict[str, Any], how: str, extra: dict[str, Any], detail_extra: dict[str, Any]
) -> None:
    details = claims.get("authorization_details")
    if detail_extra and type(details) is list and details:
        details[0].update(detail_extra)
    _check(_serialise({**claims, **extra}, how))


def _a3_claims(**changes: Any) -> dict[str, Any]:
    detail = DevIssuer.altinn3_consent(
        subject="12879397780",
        consumer="999999999",
        rights=[("ske-a", {"inntektsaar": "2022"}), ("ske-a", {"Inntektsaar": "2021"}), ("r2", {})],
        consent_id="443805FC-5901-4d4d-a37d-643897984acf",
        consented="2026-11-29T13:15:31Z",
        valid_to="2026-11-30T13:15:31.1234567+01:00",
    )
    claims = {
        "iss": "https://dev.maskinporten.local/",
        "scope": "a b",
        "consumer": ORG,
        "client_id": "dev-client",
        "jti": "j",
        "iat": NOW,
        "exp": NOW + 60,
        "token_type": "Bearer",
        "authorization_details": [detail],
    }
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    ("payload", "accepted"),
    [
        (_serialise(_a3_claims(), "compact"), True),
        (_serialise(_a3_claims(authorization_details=None), "compact"), False),  # explicit null
        (_serialise({k: v for k, v in _a3_claims().items() if k != "authorization_details"}, "compact"), True),
        (_serialise(_a3_claims(), "dup-first"), False),
        (_serialise(_a3_claims(), "dup-same"), False),
        (_serialise(_a3_claims(), "dup-short"), False),
        (_serialise(_a3_claims(), "spaced"), False),
        (_serialise(_a3_claims(), "minus-zero"), False),
        (_serialise(_a3_claims(), "null-member"), False),
        (_serialise(_a3_claims(scope="ø\\"), "compact"), False),  # a backslash: escapes
        (_serialise(_a3_claims(extra=1), "compact"), False),  # unknown claim
        (_serialise(_a3_claims(exp=1.5), "compact"), False),
        (b'{"iss":"a","scope":"s","consumer":{"authority":"iso6523-actorid-upis","ID":"0192:\xff"},"exp":1}', False),
    ],
)
def test_typed_reading_examples(payload: bytes, accepted: bool) -> None:
    assert _check(payload) is accepted


def test_typed_result_equals_the_strict_result_for_the_usual_token() -> None:
    payload = _serialise(_a3_claims(), "compact")
    decoded = typed.decode_maskinporten(payload)
    assert decoded is not None
    built = typed.maskinporten_from_typed(decoded, issuer="maskinporten", key_id="k", expires_at=1.0)
    assert built is not None and built.consent is not None
    assert built == _strict(payload)
    rights = {r.resource: dict(r.metadata) for r in built.consent.rights}
    assert rights == {"ske-a": {"inntektsaar": ("2022", "2021")}, "r2": {}}
    assert built.issued_at == float(NOW)


def test_typed_and_strict_read_the_published_shapes_alike() -> None:
    """Issue 11 shapes on the fast path: ``["read"]``, migrated ``["Read","Write"]`` with
    ``skd_4628_210607`` and lower-cased keys, a right without a resource, ``handledBy``."""
    detail = DevIssuer.altinn3_consent(
        subject="12879397780", consumer="999999999",
        rights=[("skd_4628_210607", {"inntektsaar": "2022"}), (None, {"inntektsaar": "2021"})],
        consent_id="443805FC-5901-4d4d-a37d-643897984acf", consented="2026-11-29T13:15:31Z",
        valid_to="2026-11-30T13:15:31Z", actions=["Read", "Write"], handled_by="312345678",
    )
    payload = _serialise(_a3_claims(authorization_details=[detail]), "compact")
    decoded = typed.decode_maskinporten(payload)
    assert decoded is not None
    built = typed.maskinporten_from_typed(decoded, issuer="maskinporten", key_id="k", expires_at=1.0)
    assert built is not None and built.consent is not None
    assert built == _strict(payload)
    assert built.consent.handled_by == "312345678"
    assert [(r.resource, dict(r.metadata), r.actions) for r in built.consent.rights] == [
        ("skd_4628_210607", {"inntektsaar": ("2022",)}, ("read", "write"))
    ]
    # the same resource under other actions is not merged into the same right
    split = DevIssuer.altinn3_consent(
        subject="12879397780", consumer="999999999", rights=[("r1", {"inntektsaar": "2022"})],
        consent_id="443805FC-5901-4d4d-a37d-643897984acf", valid_to="2026-11-30T13:15:31Z",
    )
    split["consentRights"].append(
        {"action": ["write"], "resource": [{"type": "urn:altinn:resource", "value": "r1"}],
         "metadata": {"inntektsaar": "2021"}}
    )
    payload = _serialise(_a3_claims(authorization_details=[split]), "compact")
    decoded = typed.decode_maskinporten(payload)
    assert decoded is not None
    built = typed.maskinporten_from_typed(decoded, issuer="maskinporten", key_id="k", expires_at=1.0)
    assert built is not None and built == _strict(payload) and built.consent is not None
    assert built.consent.rights_for(["r1"], ["consent", "read"]) == (built.consent.rights[0],)
    assert dict(built.consent.rights[0].metadata) == {"inntektsaar": ("2022",)}


# -- verify_typed against verify + maskinporten_from_claims -------------------------------------


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except (InvalidTokenError, InvalidConsentError) as exc:
        return ("refused", exc.reason, exc.detail)


async def _compare(dev: DevIssuer, policy: IssuerPolicy, token: str, *, cache: int) -> Any:
    clock = lambda: float(NOW)  # noqa: E731
    fast_verifier = TokenVerifier(cache_size=cache, clock=clock)
    strict_verifier = TokenVerifier(cache_size=cache, clock=clock)

    async def strict() -> Any:
        verified = await strict_verifier.verify(token, policy)
        return maskinporten_from_claims(
            verified.claims,
            issuer=verified.issuer,
            key_id=verified.key_id,
            expires_at=verified.expires_at,
        )

    try:
        expected: Any = ("ok", await strict())
    except (InvalidTokenError, InvalidConsentError) as exc:
        expected = ("refused", exc.reason, exc.detail)
    fast = _outcome(
        lambda: fast_verifier.verify_typed(
            token,
            policy,
            typed.decode_maskinporten,
            typed.maskinporten_from_typed,
            "maskinporten",
        )
    )
    if fast == ("ok", None):  # left to the strict path
        return None
    assert fast == expected
    if cache and fast[0] == "ok":
        # Cached like verify() caches: same claims set, the parsed result remembered on it.
        verified = await fast_verifier.verify(token, policy)
        strict_verified = await strict_verifier.verify(token, policy)
        assert type(verified.claims) is VerifiedClaims
        assert verified.claims == strict_verified.claims
        assert verified.header == strict_verified.header
        assert (verified.issuer, verified.key_id, verified.expires_at) == (
            strict_verified.issuer,
            strict_verified.key_id,
            strict_verified.expires_at,
        )
        again = maskinporten_from_claims(
            verified.claims,
            issuer=verified.issuer,
            key_id=verified.key_id,
            expires_at=verified.expires_at,
        )
        assert again is fast[1]
        # A token in the cache is left to verify(), which serves it.
        assert (
            fast_verifier.verify_typed(
                token, policy, typed.decode_maskinporten, typed.maskinporten_from_typed, "maskinporten"
            )
            is None
        )
    return fast


def _tamper_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


def test_verify_typed_agrees_with_verify() -> None:
    dev = DevIssuer()
    import samtykke_gateway.dev.issuer as testing

    original_now = testing._now
    testing._now = lambda: NOW  # type: ignore[assignment]
    try:
        details = [
            DevIssuer.altinn3_consent(subject="12879397780", consumer="999999999", rights=[("r", {})])
        ]
        tokens = {
            "a3": dev.mint_maskinporten(consumer="999999999", scope="s", authorization_details=details),
            "plain": dev.mint_maskinporten(consumer="999999999", scope="s t"),
            "supplier": dev.mint_maskinporten(consumer="999999999", scope="s", supplier="888888888"),
            "expired": dev.mint_maskinporten(consumer="999999999", scope="s", lifetime_seconds=-60),
            "nbf": dev.mint_maskinporten(consumer="999999999", scope="s", claims={"nbf": NOW + 600}),
            "iat": dev.mint_maskinporten(consumer="999999999", scope="s", claims={"iat": NOW + 600}),
            "wrong_iss": dev.mint_maskinporten(consumer="999999999", scope="s", claims={"iss": "x"}),
            "aud": dev.mint_maskinporten(consumer="999999999", scope="s", claims={"aud": "api"}),
            "bad_consumer": dev.mint_maskinporten(consumer="99999999", scope="s"),
            "alg": dev.mint_maskinporten(consumer="999999999", scope="s", header={"alg": "RS384"}),
            "crit": dev.mint_maskinporten(consumer="999999999", scope="s", header={"crit": ["x"]}),
            "kid": dev.mint_maskinporten(consumer="999999999", scope="s", header={"kid": "nope"}),
            "altinn_key": dev.mint_maskinporten(
                consumer="999999999", scope="s", key=dev.key("altinn")
            ),
        }
    finally:
        testing._now = original_now  # type: ignore[assignment]
    tokens["bad_signature"] = _tamper_signature(tokens["a3"])
    tokens["bad_signature_expired"] = _tamper_signature(tokens["expired"])
    tokens["not_a_token"] = "a.b"

    async def run() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=dev.asgi_app())
        async with httpx.AsyncClient(transport=transport) as http:
            policies = dev.issuer_policies(http=http, base_url="http://issuer.test")
            policy = policies["maskinporten"]
            with_aud = IssuerPolicy(
                name=policy.name,
                issuer=policy.issuer,
                algorithms=policy.algorithms,
                keys=policy.keys,
                audiences=("api",),
            )
            await policy.keys.refresh()
            outcomes: dict[str, Any] = {}
            for name, token in tokens.items():
                # The first sight of a header is the strict path's: parse each token once.
                await _compare(dev, policy, token, cache=0)
                for cache in (0, 16):
                    for pol, label in ((policy, ""), (with_aud, "+aud")):
                        outcomes[f"{name}{label}/{cache}"] = await _compare(
                            dev, pol, token, cache=cache
                        )
            return outcomes

    outcomes = asyncio.run(run())
    for name in ("a3", "plain", "supplier"):
        assert outcomes[f"{name}/0"][0] == "ok" and outcomes[f"{name}/16"][0] == "ok"
    assert outcomes["aud+aud/0"][0] == "ok"
    assert outcomes["bad_signature/0"][:2] == ("refused", "bad_signature")
    # Only the signature is decided here; everything else is left to the strict path.
    for name in ("expired", "nbf", "iat", "wrong_iss", "bad_consumer", "alg", "crit", "kid",
                 "altinn_key", "bad_signature_expired", "not_a_token", "a3+aud"):
        assert outcomes[f"{name}/0"] is None, name


def _set(claims: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = claims
    for step in path[:-1]:
        target = target[step]
    if value is _DROP:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


_DROP = object()
_D = ("authorization_details", 0)
_R = (*_D, "consentRights", 0)
_MUTATIONS = st.one_of(
    st.tuples(st.just(("exp",)), _INTS),
    st.tuples(st.just(("iat",)), st.one_of(_INTS, st.just(_DROP))),
    st.tuples(st.just(("nbf",)), _INTS),
    st.tuples(st.just(("consumer",)), _ORGS),
    st.tuples(st.just(("supplier",)), _ORGS),
    st.tuples(st.just(("scope",)), st.sampled_from(["", " a", "a  b", "s" * 4097, "s" * 4096])),
    st.tuples(st.sampled_from([("jti",), ("client_id",), ("delegation_source",)]),
              st.sampled_from(["x" * 512, "x" * 513, "", _DROP])),
    st.tuples(st.just(("authorization_details",)), st.sampled_from([[], _DROP])),
    st.tuples(st.just(_D), _DETAIL),
    st.tuples(st.just((*_D, "id")), st.sampled_from(["A" * 128, "A" * 129, "a.b:c_d-e", "-"])),
    st.tuples(st.just((*_D, "from")), st.sampled_from(
        ["urn:altinn:organization:identifier-no:999999999",
         "urn:altinn:organization:identifier-no:12879397780", "urn:altinn:person:identifier-no:1"])),
    st.tuples(st.just((*_D, "to")), _ORGS),
    st.tuples(st.sampled_from([(*_D, "validTo"), (*_D, "consented")]),
              st.one_of(_INSTANTS, st.just(_DROP))),
    st.tuples(st.just((*_D, "consentRights")), st.lists(_RIGHT, max_size=4)),
    st.tuples(st.sampled_from([(*_R, "metadata"), (*_R, "metaData")]),
              st.one_of(_METADATA, st.just(_DROP))),
    st.tuples(st.just((*_R, "action")), st.sampled_from([["read"], [], _DROP, ["Read", "Write"], ["READ"], [7]])),
    st.tuples(st.just((*_R, "resource")), st.one_of(st.lists(_RESOURCE, max_size=3), st.just(_DROP))),
    st.tuples(st.just((*_D, "handledBy")), st.one_of(_ORGS, st.just(_DROP))),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_MUTATIONS, max_size=3), st.sampled_from(["compact"] * 4 + ["ascii", "dup-same"]))
def test_typed_reading_agrees_near_the_usual_token(
    mutations: list[tuple[tuple[Any, ...], Any]], how: str
) -> None:
    claims = json.loads(json.dumps(_a3_claims()))
    for path, value in mutations:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # path gone after an earlier one
            _set(claims, path, json.loads(json.dumps(value)) if value is not _DROP else value)
    _check(_serialise(claims, how))


_OTHER_ORG = "310000002"


def _claims(dev: DevIssuer) -> dict[str, Any]:
    now = int(time.time())
    rights = [(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})]
    return {
        "iss": dev.MASKINPORTEN_ISSUER,
        "scope": TAX_BASE_SCOPE,
        "consumer": {"authority": "iso6523-actorid-upis", "ID": f"0192:{BANK}"},
        "client_id": "c",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 120,
        "token_type": "Bearer",
        "authorization_details": [
            DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=rights)
        ],
    }


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.anyio
async def test_signed_non_canonical_payloads_through_the_fast_path(
    dev_issuer: DevIssuer, issuer_url: str
) -> None:
    key = dev_issuer.key("maskinporten")
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    claims = _claims(dev_issuer)
    good = _compact(claims)
    other = b'"consumer":{"authority":"iso6523-actorid-upis","ID":"0192:' + _OTHER_ORG.encode()
    cases = {
        "canonical": (good, 200),
        "whitespace": (b" " + json.dumps(claims).encode() + b"\n", 200),
        "escaped name": (good.replace(b'"scope"', b'"\\u0073cope"'), 200),
        "float exp": (_compact({**claims, "exp": float(claims["exp"])}), 200),
        "duplicate consumer": (good[:-1] + b"," + other + b'"}}', 401),
        "duplicate exp": (good[:-1] + b',"exp":1}', 401),
        "NaN": (good[:-1] + b',"x":NaN}', 401),
        "BOM": (b"\xef\xbb\xbf" + good, 401),
        "lone surrogate": (good[:-1] + b',"x":"\\ud800"}', 401),
        "exp 2**64": (_compact({**claims, "exp": 2**64}), 401),
        "exp true": (_compact({**claims, "exp": True}), 401),
        "depth 33": (good[:-1] + b',"d":' + b"[" * 32 + b"]" * 32 + b"}", 401),
    }
    async with running_gateway("middleware", issuer_url) as gw:
        got = {}
        for name, (payload, _) in cases.items():
            token = encode_token(header, payload, key.private_key)
            response = await gw.client.get(
                tax_base_path("2022"), headers={"Authorization": f"Bearer {token}"}
            )
            got[name] = response.status_code
    assert got == {name: want for name, (_, want) in cases.items()}
