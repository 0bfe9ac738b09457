"""The fast path of :func:`parse_compact_tuple` accepts and refuses exactly like the step-by-step
reference parser, with the same result or the same error (issue 3, speed)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pybase64
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from samtykke_gateway.tokens import jose
from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.tokens.jose import _parse_compact_reference, parse_compact_tuple


def seg(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


HEADER = seg(b'{"alg":"RS256","kid":"k1"}')
PAYLOAD = seg(json.dumps({"iss": "altinn.no", "exp": 1, "s": ["4804_210607"]}).encode())
SIG = seg(bytes(range(40)))


def _outcome(fn: Any, token: Any, max_bytes: int = 16384) -> Any:
    try:
        return ("ok", fn(token, max_bytes=max_bytes))
    except InvalidTokenError as exc:
        return ("refused", exc.reason, exc.detail)


def _agree(token: Any, max_bytes: int = 16384) -> None:
    assert _outcome(parse_compact_tuple, token, max_bytes) == _outcome(
        _parse_compact_reference, token, max_bytes
    )


@pytest.fixture(autouse=True)
def _header_known() -> None:
    # The fast path needs a header segment the reference has parsed before.
    _parse_compact_reference(f"{HEADER}.{PAYLOAD}.{SIG}")


_PIECES = st.sampled_from(
    [
        HEADER,
        PAYLOAD,
        SIG,
        ".",
        ".",
        "A",
        "AQ",
        "AR",
        "AAE",
        "AAF",
        "-",
        "_",
        "+",
        "/",
        "=",
        "==",
        " ",
        "\n",
        "é",
        "\x00",
        "e30",
        "W10",
        "eyJhIjoxLCJhIjoyfQ",
        seg('{"a":"\\ud800"}'),
        seg('{"a":1e400}'),
        seg('{"a":1} '),
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_PIECES, max_size=7).map("".join))
@example(f"{HEADER}.{PAYLOAD}.{SIG}")
@example(f"{HEADER}.{PAYLOAD}.")
@example(f"{HEADER}..{SIG}")
@example(f".{PAYLOAD}.{SIG}")
@example(f"{HEADER}.{PAYLOAD}.{SIG}.")
@example(f"{HEADER}.{PAYLOAD}+.{SIG}")
@example(f"{HEADER}.{PAYLOAD}.{SIG}=")
@example(f"{HEADER}.{PAYLOAD}.AR")
@example(f"{HEADER}.{PAYLOAD}.AAAAA")
@example(f"{HEADER}.{PAYLOAD[:-1]}.{SIG}")
def test_fast_path_agrees_with_reference(token: str) -> None:
    _agree(token)
    _agree(token, max_bytes=len(token) - 1)
    _agree(token.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(PAYLOAD) - 1), st.characters(max_codepoint=0x7F))
def test_one_changed_payload_character_agrees(index: int, char: str) -> None:
    _agree(f"{HEADER}.{PAYLOAD[:index]}{char}{PAYLOAD[index + 1 :]}.{SIG}")


def test_valid_token_with_known_header_skips_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> object:
        raise AssertionError("reference parser used")

    expected = _parse_compact_reference(f"{HEADER}.{PAYLOAD}.{SIG}")
    monkeypatch.setattr(jose, "_parse_compact_reference", explode)
    assert parse_compact_tuple(f"{HEADER}.{PAYLOAD}.{SIG}") == expected


# --- pybase64 (the fast path's decoder) against the strict reference decoder -----------------

_B64_TEXT = st.text(
    alphabet=st.sampled_from(
        list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        + list("+/=. \t\n\r\x00!~é")
    ),
    max_size=40,
)


def _reference_segment(segment: bytes) -> Any:
    """What the reference makes of one segment: the alphabet check, then strict decoding."""
    if segment.translate(None, jose._B64URL_ALPHABET):
        return "refused"
    try:
        return jose._b64decode(segment, "signature")
    except InvalidTokenError:
        return "refused"


def _fast_segment(segment: bytes) -> Any:
    """The fast path's steps for one segment (see ``_parse_compact_fast``), pybase64 deciding."""
    rest = len(segment) % 4
    if b"+" in segment or b"/" in segment or segment[-1:] == b"=" or rest == 1:
        return "refused"
    if rest and segment[-1] not in jose._CANONICAL_LAST[rest]:
        return "refused"
    try:
        return pybase64.b64decode(segment + jose._PADDING[rest], jose._URLSAFE, True)
    except binascii.Error:
        return "refused"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=40), _B64_TEXT.map(lambda s: s.encode("utf-8"))))
@example(b"AR")  # non-zero trailing bits
@example(b"AAF")
@example(b"A")  # impossible length
@example(b"AQ==")  # padding
@example(b"AB=C")  # padding inside
@example(b"+/+/")  # standard alphabet
@example(b"-_-_")
@example(b"AA\nA")  # whitespace
@example(b"")
def test_pybase64_decodes_exactly_like_the_strict_reference(segment: bytes) -> None:
    assert _fast_segment(segment) == _reference_segment(segment)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_pybase64_round_trips_canonical_segments(data: bytes) -> None:
    segment = seg(data).encode()
    assert _fast_segment(segment) == data == _reference_segment(segment)


@settings(max_examples=1500, deadline=None)
@given(_B64_TEXT)
def test_arbitrary_signature_segment_agrees(signature: str) -> None:
    # Exercises the fast path's own decoder calls (the signature is not JSON-checked).
    _agree(f"{HEADER}.{PAYLOAD}.{signature}")
    _agree(f"{HEADER}.{PAYLOAD}{signature}.{SIG}")
