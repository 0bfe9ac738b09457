"""The orjson fast path of :func:`strict_json_object` reads every input exactly as the strict
reference reader does: the same object (types included) or a refusal (issue 3, speed)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from samtykke_gateway.tokens import jose
from samtykke_gateway.tokens.jose import _reference_json_object, strict_json_object


def _outcome(fn: Any, data: bytes) -> tuple[str, str]:
    try:
        # repr keeps types apart (1 / 1.0 / True, -0.0) and member order.
        return ("ok", repr(fn(data)))
    except ValueError as exc:
        return ("refused", str(exc))


def _agree(data: bytes) -> None:
    assert _outcome(strict_json_object, data) == _outcome(_reference_json_object, data)


_KEYS = st.sampled_from(["a", "b", "alg", "exp", "é", "a\"b", "a\\b", "\x01", "\u2028", "😀"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_OBJECTS = st.dictionaries(_KEYS, _VALUES, max_size=6)


@settings(max_examples=400, deadline=None)
@given(_OBJECTS)
def test_canonical_and_python_written_json_agree(obj: dict[str, Any]) -> None:
    try:
        canonical = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        canonical = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    _agree(canonical)
    _agree(json.dumps(obj).encode())  # spaces, \\u escapes
    _agree(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


# Pieces of JSON text, valid and not: duplicate names, escapes (surrogates among them), number
# forms (beyond 64 bits, overflowing, -0), non-JSON literals, whitespace, BOM, bad UTF-8.
_PIECES = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"a"',
        '"a"',
        '"b"',
        '"a":1',
        '"a":1',
        '"\\u00e9"',
        '"\\ud83d\\ude00"',
        '"\\ud800"',
        '"\\udc00x"',
        '"\\/"',
        '"\\\\"',
        '"\\""',
        '"\\u0000"',
        "1",
        "-0",
        "-0.0",
        "1.5e3",
        "1E400",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1",
        "1.0",
        "NaN",
        "Infinity",
        "true",
        "null",
        " ",
        "\n",
        "\x0c",
        "\u00a0",
        "\ufeff",
        "é",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
@example('{"a":1,"a":1}')
@example('{"a":{"b":1,"b":2}}')
@example('{"a":[{"k":1,"k":1}]}')
@example('{"a":18446744073709551616}')
@example('{"a":1E400}')
@example('{"a":"\\ud800"}')
@example('{"a":NaN}')
def test_text_pieces_agree(text: str) -> None:
    _agree(text.encode("utf-8"))
    _agree(("{" + text + "}").encode("utf-8"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=24))
def test_arbitrary_bytes_agree(data: bytes) -> None:
    _agree(data)
    _agree(b'{"a":"' + data + b'"}')


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_depth_bound_agrees_at_the_edge(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    for depth in (30, 31, 32, 33):
        _agree(("{" + '"x":' + opener * depth + "1" + closer * depth + "}").encode())


def test_canonical_json_skips_the_reference_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> object:
        raise AssertionError("reference reader used")

    monkeypatch.setattr(jose, "_reference_json_object", explode)
    assert strict_json_object(b'{"alg":"RS256","n":[1,2.5,{"k":null}]}') == {
        "alg": "RS256",
        "n": [1, 2.5, {"k": None}],
    }


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"RS256","alg":"none"}',  # orjson keeps the last; dumps is shorter
        b'{"a":1 }',
        b'{"a":"\\/"}',
        b'{"a":18446744073709551616}',
    ],
)
def test_everything_else_goes_to_the_reference_reader(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[bytes] = []
    reference = jose._reference_json_object

    def spy(data: bytes, **kwargs: Any) -> dict[str, Any]:
        used.append(data)
        return reference(data, **kwargs)

    monkeypatch.setattr(jose, "_reference_json_object", spy)
    _outcome(strict_json_object, raw)
    assert used == [raw]
