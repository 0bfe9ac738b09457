"""Simple token claims declared once on the model (``samtykke_gateway/tokens/claims.py``): each kind
read strictly, every declared claim in the typed fast path's closed schema, and a new claim
added as one annotated field is read alike by the strict reader and the fast path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import InvalidConsentError, InvalidTokenError
from samtykke_gateway.tokens import typed
from samtykke_gateway.tokens.altinn3 import CONSENT_MEMBERS
from samtykke_gateway.tokens.claims import Claim, read_claim
from samtykke_gateway.tokens.maskinporten import MASKINPORTEN_CLAIMS


def _bad(detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason="bad_maskinporten_claims")


ORG = {"authority": "iso6523-actorid-upis", "ID": "0192:999999999"}


@pytest.mark.parametrize(
    ("claim", "source", "expected"),
    [
        (Claim("jti"), {}, None),
        (Claim("jti"), {"jti": None}, None),
        (Claim("jti"), {"jti": "abc"}, "abc"),
        (Claim("jti", max_chars=3), {"jti": "abc"}, "abc"),
        (Claim("supplier", "org"), {"supplier": ORG}, "999999999"),
        (Claim("supplier", "org"), {"supplier": "urn:altinn:organization:identifier-no:999999999"}, "999999999"),
        (Claim("supplier", "org"), {"supplier": None}, None),
        (Claim("consented", "instant"), {}, None),
        (Claim("consented", "instant"), {"consented": "1970-01-01T00:00:01Z"}, 1.0),
        (Claim("consented", "instant"), {"consented": "1970-01-01T01:00:01.5000000+01:00"}, 1.5),
    ],
)
def test_each_kind_reads_a_well_formed_or_absent_claim(claim: Claim, source: dict[str, Any], expected: Any) -> None:
    assert read_claim(source, claim, _bad) == expected


@pytest.mark.parametrize(
    ("claim", "source", "detail"),
    [
        (Claim("jti"), {"jti": 1}, "jti is not a string"),
        (Claim("jti", max_chars=3), {"jti": "abcd"}, "jti is not a string"),
        (Claim("supplier", "org"), {"supplier": {"authority": "x", "ID": "0192:999999999"}},
         "supplier is not an organisation"),
        (Claim("supplier", "org"), {"supplier": "urn:altinn:person:identifier-no:12879397780"},
         "supplier is not an organisation"),
        (Claim("consented", "instant"), {"consented": None}, "consented is missing or not a string"),
        (Claim("consented", "instant"), {"consented": "2026-01-01T00:00:00"}, "consented is not an ISO 8601 instant"
                                                                             " with offset"),
        (Claim("consented", "instant"), {"consented": "2026-02-30T00:00:00Z"}, "consented is not a valid date"),
    ],
)
def test_each_kind_refuses_a_malformed_claim_with_the_readers_error(claim: Claim, source: dict[str, Any],
                                                                      detail: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        read_claim(source, claim, _bad)
    assert caught.value.detail == detail and caught.value.reason == "bad_maskinporten_claims"


def test_the_models_declare_the_simple_claims() -> None:
    assert [claim.name for _, claim in MASKINPORTEN_CLAIMS] == ["supplier", "delegation_source", "client_id", "jti"]
    assert [claim.name for _, claim in CONSENT_MEMBERS] == ["consented", "handledBy"]


def test_every_declared_claim_is_a_field_of_the_typed_schema() -> None:
    maskinporten_fields = set(typed._Claims.__struct_encode_fields__)
    consent_fields = set(typed._Detail.__struct_encode_fields__)
    assert {claim.name for _, claim in MASKINPORTEN_CLAIMS} <= maskinporten_fields
    assert {claim.name for _, claim in CONSENT_MEMBERS} <= consent_fields


_TEXT = st.one_of(st.none(), st.text(max_size=8), st.text(min_size=510, max_size=514), st.integers(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={claim.name: _TEXT for _, claim in MASKINPORTEN_CLAIMS if claim.kind == "text"}))
def test_declared_text_claims_read_alike_on_both_paths(extra: dict[str, Any]) -> None:
    from samtykke_gateway.tokens.maskinporten import maskinporten_from_claims

    claims = {"iss": "maskinporten", "exp": 2_000_000_000, "scope": "a:b", "consumer": ORG, **extra}
    payload = msgspec.json.encode(claims)
    try:
        strict: Any = maskinporten_from_claims(claims, issuer="maskinporten", key_id="k", expires_at=1.0)
    except (InvalidTokenError, InvalidConsentError) as exc:
        strict = exc.reason
    decoded = typed.decode_maskinporten(payload)
    fast = None if decoded is None else typed.maskinporten_from_typed(decoded, issuer="maskinporten", key_id="k",
                                                                       expires_at=1.0)
    if fast is not None:  # the fast path may leave a token to the strict reader, never read it otherwise
        assert fast == strict


_NEW_CLAIM = textwrap.dedent(
    """
    import json
    from typing import Annotated

    import samtykke_gateway.tokens.model as model
    from samtykke_gateway.tokens.claims import Claim

    # What adding a claim means: one annotated field (here on a subclass put in the model's
    # place, the readers then loaded afresh; in the code base it is a line in model.py).
    class Token(model.MaskinportenToken, frozen=True, gc=False):
        consumer_reference: Annotated[str | None, Claim("consumer_reference", max_chars=8)] = None

    class Consent(model.Consent, frozen=True, gc=False):
        request_id: Annotated[str | None, Claim("requestId")] = None

    model.MaskinportenToken, model.Consent = Token, Consent
    import importlib
    from samtykke_gateway.tokens import altinn3, maskinporten, typed
    for reader in (altinn3, maskinporten, typed):
        importlib.reload(reader)
    maskinporten_from_claims = maskinporten.maskinporten_from_claims

    entry = {"type": "urn:altinn:consent", "id": "c1", "from": "urn:altinn:person:identifier-no:12879397780",
             "to": "urn:altinn:organization:identifier-no:999999999", "validTo": "2030-01-01T00:00:00Z",
             "requestId": "r-1",
             "consentRights": [{"action": ["consent"], "resource": [{"type": "urn:altinn:resource", "value": "x"}]}]}
    claims = {"iss": "maskinporten", "exp": 2000000000, "scope": "a:b", "consumer_reference": "ref-1",
              "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:999999999"},
              "authorization_details": [entry]}
    strict = maskinporten_from_claims(claims, issuer="maskinporten", key_id="k", expires_at=1.0)
    payload = json.dumps(claims, separators=(",", ":")).encode()
    fast = typed.maskinporten_from_typed(typed.decode_maskinporten(payload), issuer="maskinporten", key_id="k",
                                         expires_at=1.0)
    assert fast is not None and fast == strict, (fast, strict)
    assert (strict.consumer_reference, strict.consent.request_id) == ("ref-1", "r-1")
    try:
        maskinporten_from_claims({**claims, "consumer_reference": "too-long-1"}, issuer="maskinporten", key_id="k",
                                 expires_at=1.0)
    except Exception as exc:
        print(type(exc).__name__, exc.status_code, exc.reason)
    """
)


def test_a_new_claim_is_one_annotated_field_read_alike_by_both_readers() -> None:
    # a child interpreter: the readers take their claim lists from the model at import
    result = subprocess.run([sys.executable, "-c", _NEW_CLAIM], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "InvalidTokenError 401 bad_maskinporten_claims"
