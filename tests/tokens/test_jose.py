"""Strict compact JWS parsing (RFC 7515 §7.1) — docs/protocol.md §4 step 1."""

from __future__ import annotations

import base64
import binascii
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.tokens.jose import CompactJWS, parse_compact, strict_json_object


def seg(raw: bytes | str) -> str:
    if isinstance(raw, str):
        raw = raw.encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jseg(obj: object) -> str:
    return seg(json.dumps(obj, separators=(",", ":")))


HEADER = jseg({"alg": "RS256", "kid": "k1"})
PAYLOAD = jseg({"iss": "altinn.no", "exp": 1})
SIG = seg(b"\x01\x02\x03\x04\x05")
GOOD = f"{HEADER}.{PAYLOAD}.{SIG}"


def assert_malformed(token: object, **kwargs: int) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as info:
        parse_compact(token, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == "malformed_token"
    return info.value


def test_good_token_parses() -> None:
    jws = parse_compact(GOOD)
    assert jws == CompactJWS(
        header={"alg": "RS256", "kid": "k1"},
        payload={"iss": "altinn.no", "exp": 1},
        signing_input=f"{HEADER}.{PAYLOAD}".encode(),
        signature=b"\x01\x02\x03\x04\x05",
    )


def test_ascii_bytes_accepted_and_empty_signature_allowed_at_parse_time() -> None:
    assert parse_compact(GOOD.encode()).header["kid"] == "k1"
    assert parse_compact(f"{HEADER}.{PAYLOAD}.").signature == b""


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        f"{HEADER}.{PAYLOAD}",
        f"{HEADER}.{PAYLOAD}.{SIG}.{SIG}",
        f"{HEADER}.{PAYLOAD}.{SIG}.",
        f".{PAYLOAD}.{SIG}",
        f"{HEADER}..{SIG}",
        f" {GOOD}",
        f"{GOOD}\n",
        f"{GOOD} ",
        f"{HEADER}.{PAYLOAD}.{SIG}\x00",
        f"{HEADER}.{PAYLOAD}\t.{SIG}",
    ],
    ids=lambda t: repr(t[-12:]),
)
def test_wrong_shape_refused(token: str) -> None:
    assert_malformed(token)


@pytest.mark.parametrize(
    "token",
    [
        f"{HEADER}=.{PAYLOAD}.{SIG}",  # padding
        f"{HEADER}.{PAYLOAD}.{SIG}==",
        f"{HEADER}.{PAYLOAD}.{seg(b'abcd')}==",
    ],
)
def test_padding_refused(token: str) -> None:
    assert_malformed(token)


def test_standard_alphabet_refused() -> None:
    # b"\xfb\xff" encodes to "-_8" in base64url and "+/8" in standard base64.
    assert seg(b"\xfb\xff") == "-_8"
    assert parse_compact(f"{HEADER}.{PAYLOAD}.-_8").signature == b"\xfb\xff"
    assert_malformed(f"{HEADER}.{PAYLOAD}.+/8")
    assert_malformed(f"{HEADER}.{PAYLOAD}.-/8")


@pytest.mark.parametrize(
    ("canonical", "sloppy"),
    [
        ("AQ", "AR"),  # 2 chars: 4 unused bits must be zero
        ("AQ", "AT"),
        ("AAE", "AAF"),  # 3 chars: 2 unused bits must be zero
        ("AAE", "AAH"),
    ],
)
def test_non_canonical_trailing_bits_refused(canonical: str, sloppy: str) -> None:
    # Both decode to the same bytes under a lenient decoder; only the canonical form passes.
    assert base64.urlsafe_b64decode(canonical + "==") == base64.urlsafe_b64decode(sloppy + "==")
    parse_compact(f"{HEADER}.{PAYLOAD}.{canonical}")
    error = assert_malformed(f"{HEADER}.{PAYLOAD}.{sloppy}")
    assert "canonical" in error.detail


def test_impossible_length_refused() -> None:
    assert_malformed(f"{HEADER}.{PAYLOAD}.AAAAA")


def test_non_canonical_header_refused() -> None:
    sloppy_header = HEADER[:-1] + chr(ord(HEADER[-1]) + 1) if len(HEADER) % 4 else None
    if sloppy_header is None:  # pragma: no cover - the header length is fixed above
        pytest.skip("header length is a multiple of 4")
    assert_malformed(f"{sloppy_header}.{PAYLOAD}.{SIG}")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"RS256","alg":"none"}',
        b'{"alg":"RS256","x":{"a":1,"a":2}}',
        b'{"alg":"RS256","x":[{"k":1,"k":1}]}',
    ],
)
def test_duplicate_member_names_refused(raw: bytes) -> None:
    error = assert_malformed(f"{seg(raw)}.{PAYLOAD}.{SIG}")
    assert "duplicate" in error.detail
    assert_malformed(f"{HEADER}.{seg(raw)}.{SIG}")


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'"alg"',
        b"1",
        b"null",
        b"true",
        b"",
        b"{",
        b'{"a":1} {"b":2}',
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b'{"exp":-Infinity}',
        b"\xef\xbb\xbf{}",  # BOM
        b'{"a":"\xff"}',  # invalid UTF-8
        b'{"a":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'{"a":"\\udc00"}',  # unpaired surrogate escape
        b'{"a":"\\ud800x"}',
        b'{"a":' + b"9" * 5000 + b"}",  # beyond int max digits
    ],
)
def test_non_objects_and_non_json_refused(raw: bytes) -> None:
    assert_malformed(f"{seg(raw)}.{PAYLOAD}.{SIG}")
    assert_malformed(f"{HEADER}.{seg(raw)}.{SIG}")


def test_paired_surrogate_escape_accepted() -> None:
    emoji = seg(b'{"n":"\\ud83d\\ude00"}')
    jws = parse_compact(f"{HEADER}.{emoji}.{SIG}")
    assert jws.payload == {"n": "\U0001f600"}


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_refused_before_json_recursion(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = "{" + '"x":' + opener * 33 + "1" + closer * 33 + "}"
    error = assert_malformed(f"{HEADER}.{seg(deep)}.{SIG}")
    assert "deep" in error.detail
    # depth 32 in total (outer object + 31) is fine
    ok = "{" + '"x":' + opener * 31 + "1" + closer * 31 + "}"
    parse_compact(f"{HEADER}.{seg(ok)}.{SIG}")
    # recursion-limit sized input is refused, not a RecursionError
    huge = "{" + '"x":' + "[" * 5000 + "]" * 5000 + "}"
    assert_malformed(f"{HEADER}.{seg(huge)}.{SIG}", max_bytes=100_000)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[[[[{{{{" * 20, "t": '\\"[[[['})
    assert parse_compact(f"{HEADER}.{seg(text)}.{SIG}").payload["s"].startswith("[[[[")


def test_oversized_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtykke_gateway.tokens import jose

    def explode(*args: object, **kwargs: object) -> object:
        raise AssertionError("decoded an oversized token")

    monkeypatch.setattr(jose, "_b64decode", explode)
    monkeypatch.setattr(jose, "strict_json_object", explode)
    monkeypatch.setattr(binascii, "a2b_base64", explode)
    big = "A" * 16385
    error = assert_malformed(big)
    assert "too large" in error.detail
    assert_malformed(big.encode())
    assert_malformed("é" * 16385)  # size is checked even before the ASCII check
    assert "too large" in assert_malformed("x" * 101, max_bytes=100).detail


def test_size_limit_is_inclusive() -> None:
    assert len(GOOD) < 200
    parse_compact(GOOD, max_bytes=len(GOOD))
    assert_malformed(GOOD, max_bytes=len(GOOD) - 1)


@pytest.mark.parametrize(
    "token",
    [GOOD.replace("e", "é", 1), GOOD + "\u200b", GOOD.encode() + b"\xff", "\ufeff" + GOOD],
)
def test_non_ascii_refused(token: str | bytes) -> None:
    assert_malformed(token)


@pytest.mark.parametrize("token", [None, 42, 1.5, ["a", "b", "c"], {"a": 1}, object()])
def test_non_string_refused(token: object) -> None:
    assert_malformed(token)


def test_detail_never_quotes_the_token() -> None:
    secret = seg(b'{"OfferedBy":"01017012345"')
    error = assert_malformed(f"{HEADER}.{secret}.{SIG}")
    assert secret not in error.detail
    assert "01017012345" not in error.detail


def test_strict_json_object_is_used_for_documents() -> None:
    assert strict_json_object(b'{"keys":[]}') == {"keys": []}
    with pytest.raises(ValueError, match="duplicate"):
        strict_json_object(b'{"keys":[],"keys":[]}')


# -- properties ------------------------------------------------------------------------------

_B64URL = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def _only_invalid_token_error(token: object) -> None:
    try:
        parse_compact(token)  # type: ignore[arg-type]
    except InvalidTokenError as exc:
        assert exc.reason == "malformed_token"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_invalid_token(token: str) -> None:
    _only_invalid_token_error(token)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_invalid_token(token: bytes) -> None:
    _only_invalid_token_error(token)


@settings(max_examples=300, deadline=None)
@given(_B64URL, _B64URL, _B64URL)
def test_arbitrary_base64url_segments_only_raise_invalid_token(a: str, b: str, c: str) -> None:
    _only_invalid_token_error(f"{a}.{b}.{c}")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.binary(max_size=120))
def test_arbitrary_decoded_bytes_only_raise_invalid_token(header: bytes, payload: bytes) -> None:
    _only_invalid_token_error(f"{seg(header)}.{seg(payload)}.{SIG}")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _JSON, max_size=5), _JSON)
def test_json_roundtrip_of_objects(header: dict[str, object], payload: object) -> None:
    token = f"{jseg(header)}.{jseg(payload)}.{SIG}"
    if "enc" in header or "zip" in header:  # JWE / compression markers: refused by design
        assert_malformed(token)               # (test_token_attacks' enc/zip test pins the rest)
    elif isinstance(payload, dict):
        jws = parse_compact(token)
        assert jws.header == header
        assert jws.payload == payload
        assert jws.signature == b"\x01\x02\x03\x04\x05"
    else:
        assert_malformed(token)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_base64url_roundtrip_and_any_single_char_change_is_not_silently_equal(
    raw: bytes,
) -> None:
    sig = seg(raw)
    assert parse_compact(f"{HEADER}.{PAYLOAD}.{sig}").signature == raw
    for replacement in "AB_-":
        mutated = sig[:-1] + replacement
        if mutated == sig:
            continue
        try:
            decoded = parse_compact(f"{HEADER}.{PAYLOAD}.{mutated}").signature
        except InvalidTokenError:
            continue
        assert decoded != raw  # canonical encoding: one byte string, one spelling


def test_cached_header_is_a_private_copy() -> None:
    first = parse_compact(GOOD)
    first.header["alg"] = "none"
    first.header["jku"] = "http://evil/"
    again = parse_compact(GOOD)
    assert again.header == {"alg": "RS256", "kid": "k1"}
    assert again.header is not first.header


def test_nested_headers_are_parsed_fresh_each_time() -> None:
    header = jseg({"alg": "RS256", "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}})
    first = parse_compact(f"{header}.{PAYLOAD}.{SIG}")
    first.header["jwk"]["n"] = "changed"
    assert parse_compact(f"{header}.{PAYLOAD}.{SIG}").header["jwk"]["n"] == "AQAB"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b' {"a":1} ', {"a": 1}), (b'\t\r\n{"a":[]}\n', {"a": []})],
)
def test_json_whitespace_around_the_object_is_allowed(raw: bytes, expected: object) -> None:
    assert parse_compact(f"{HEADER}.{seg(raw)}.{SIG}").payload == expected


@pytest.mark.parametrize("raw", [b'{"a":1}x', b"{} {}", b'{"a":1}\x00', b'{"a":"\x01"}'])
def test_trailing_data_and_control_characters_refused(raw: bytes) -> None:
    assert_malformed(f"{HEADER}.{seg(raw)}.{SIG}")
