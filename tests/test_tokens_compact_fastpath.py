"""The fast path of :func:`parse_compact_tuple` accepts and refuses exactly like the step-by-step
reference parser, with the same result or the same error (issue 3, speed)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from samtykke_gateway import jose
from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.jose import _parse_compact_reference, parse_compact_tuple


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
    [HEADER, PAYLOAD, SIG, ".", ".", "A", "AQ", "AR", "AAE", "AAF", "-", "_", "+", "/", "=", "==",
     " ", "\n", "é", "\x00", "e30", "W10", "eyJhIjoxLCJhIjoyfQ", seg('{"a":"\\ud800"}'),
     seg('{"a":1e400}'), seg("{\"a\":1} ")]
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
    _agree(f"{HEADER}.{PAYLOAD[:index]}{char}{PAYLOAD[index + 1:]}.{SIG}")


def test_valid_token_with_known_header_skips_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> object:
        raise AssertionError("reference parser used")

    expected = _parse_compact_reference(f"{HEADER}.{PAYLOAD}.{SIG}")
    monkeypatch.setattr(jose, "_parse_compact_reference", explode)
    assert parse_compact_tuple(f"{HEADER}.{PAYLOAD}.{SIG}") == expected
