"""The claim parsers' fast paths read every input exactly as the general paths do, and the
claims memo serves only the very claims object it parsed (issue 3, speed)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import InvalidConsentError, InvalidTokenError
from samtykke_gateway.identifiers import Party, is_org_number, is_person_id, party_from_digits
from samtykke_gateway.tokens.jose import parse_compact
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.tokens import altinn2
from samtykke_gateway.tokens.altinn2 import consent_from_altinn2_claims, parse_service_entry
from samtykke_gateway.tokens.altinn3 import parse_iso_instant
from samtykke_gateway.tokens.claims import ISO_INSTANT
from samtykke_gateway.tokens.maskinporten import maskinporten_from_claims
from samtykke_gateway.tokens.memo import VerifiedClaims, remember, remembered

_ENTRY_PIECES = st.sampled_from(
    [
        "4804",
        "210607",
        "1",
        "_",
        ",",
        "=",
        "k",
        "fraOgMed",
        "K9",
        "2018-06",
        "a b",
        "é",
        "\x1f",
        "x" * 70,
    ]
)


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (InvalidTokenError, InvalidConsentError) as exc:
        return ("refused", exc.reason)


@settings(max_examples=500, deadline=None)
@given(st.lists(_ENTRY_PIECES, max_size=8).map("".join))
def test_service_entry_fast_path_agrees_with_general_path(entry: str) -> None:
    assert _outcome(parse_service_entry, entry) == _outcome(altinn2._parse_entry, entry)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("4804_210607", ("4804_210607", {})),
        ("4629,2,inntektsaar=2015", ("4629_2", {"inntektsaar": "2015"})),
        (
            "4630,2,fraOgMed=2017-06,tilOgMed=2017-08",
            ("4630_2", {"fraogmed": "2017-06", "tilogmed": "2017-08"}),
        ),
        ("1_2_k=a_b", ("1_2", {"k": "a_b"})),
    ],
)
def test_service_entry_shapes(entry: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_service_entry(entry) == expected


def _iso_reference(value: str) -> float:
    """The construction used before the fast path: pad/truncate the fraction to 6 digits."""
    m = ISO_INSTANT.fullmatch(value)
    assert m is not None
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").timestamp()


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=0, max_value=7),
    st.sampled_from(["Z", "+00:00", "+01:00", "-02:30", "+14:00"]),
    st.integers(min_value=0, max_value=9_999_999),
)
def test_iso_instant_matches_reference(moment: datetime, digits: int, zone: str, frac: int) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + str(frac).zfill(7)[:digits]
    text += zone
    assert parse_iso_instant(text, claim="v") == _iso_reference(text)


def test_memo_serves_only_the_same_claims_object() -> None:
    claims = VerifiedClaims({"a": 1})
    assert remembered(claims, "p", ("x",)) is None
    assert remember(claims, "p", ("x",), "parsed") == "parsed"
    assert remembered(claims, "p", ("x",)) == "parsed"
    assert remembered(VerifiedClaims(claims), "p", ("x",)) is None  # equal but another object
    assert remembered(claims, "p", ("y",)) is None  # other options
    assert remembered(claims, "q", ("x",)) is None  # another parser
    plain = {"a": 1}  # not verified claims: nothing is remembered on it
    remember(plain, "p", ("x",), "parsed")
    assert remembered(plain, "p", ("x",)) is None
    assert claims == plain and isinstance(claims, dict)


def test_parsers_reuse_results_for_the_same_verified_claims() -> None:
    dev = DevIssuer()
    details = [
        DevIssuer.altinn3_consent(subject="12879397780", consumer="999999999", rights=[("r1", {})])
    ]
    mp = VerifiedClaims(
        parse_compact(
            dev.mint_maskinporten(consumer="999999999", scope="s", authorization_details=details)
        ).payload
    )
    first = maskinporten_from_claims(mp, issuer="maskinporten", key_id="k", expires_at=1.0)
    assert maskinporten_from_claims(mp, issuer="maskinporten", key_id="k", expires_at=1.0) is first
    other = maskinporten_from_claims(mp, issuer="maskinporten", key_id="k2", expires_at=1.0)
    assert other is not first and other.key_id == "k2"
    # A new verification yields a new claims object: parsed again, never served from the memo.
    changed = VerifiedClaims(
        mp, consumer={"authority": "iso6523-actorid-upis", "ID": "0192:888888888"}
    )
    assert (
        maskinporten_from_claims(
            changed, issuer="maskinporten", key_id="k", expires_at=1.0
        ).consumer
        == "888888888"
    )

    a2 = VerifiedClaims(
        parse_compact(
            dev.mint_altinn2(subject="01029413157", consumer="999999999", services=["1_2"])
        ).payload
    )
    consent = consent_from_altinn2_claims(a2, issuer="altinn", key_id="k")
    assert consent_from_altinn2_claims(a2, issuer="altinn", key_id="k") is consent
    test_claims = VerifiedClaims(a2, actual_iss="altinn-test-tools")
    consent_from_altinn2_claims(test_claims, issuer="altinn", key_id="k")
    with pytest.raises(InvalidConsentError) as refused:  # options are part of the key
        consent_from_altinn2_claims(
            test_claims, issuer="altinn", key_id="k", allow_test_tokens=False
        )
    assert refused.value.reason == "test_token_refused"


_DIGITS_LIKE = st.one_of(
    st.text(
        alphabet=st.sampled_from([*"0123456789", "٣", "０", "²", " ", "\n", "_", "a"]),
        max_size=13,
    ),
    st.integers(),
    st.none(),
)


@settings(max_examples=2000, deadline=None)
@given(_DIGITS_LIKE)
def test_identifier_checks_are_exactly_ascii_digit_regexes(value: Any) -> None:
    text = isinstance(value, str)
    assert is_person_id(value) == (text and re.fullmatch(r"[0-9]{11}", value) is not None)
    assert is_org_number(value) == (text and re.fullmatch(r"[0-9]{9}", value) is not None)


def test_party_is_a_frozen_hashable_value() -> None:
    person = party_from_digits("01029413157")
    assert person == Party("person", "01029413157") == Party(kind="person", id="01029413157")
    assert person != Party("organization", "01029413157")
    assert {person: 1}[Party("person", "01029413157")] == 1
    assert (person.kind, person.id) == ("person", "01029413157")
    with pytest.raises(AttributeError):
        person.id = "999999999"  # type: ignore[misc]
