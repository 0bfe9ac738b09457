"""The orjson fast path of ``scope_body`` agrees with the exact path (hypothesis).

- when :func:`decode_fast` decodes, its value is :func:`decode_json`'s, type for type (no
  ``float``, no :class:`JsonNumber`, ``True`` never ``1``);
- the guard sends every number orjson would change (fraction, exponent, ``-0``, 19+ digits)
  to the exact path, wherever it sits and whatever whitespace surrounds it;
- :func:`decode_fast` never decodes a body :func:`decode_json` refuses, and never raises;
- ``scope_body`` releases the same bytes as the exact path (decode, apply, encode).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import UpstreamError
from samtykke_gateway.scoping.package import JsonNumber, RightsPackage, ScopeContext, scope_body
from samtykke_gateway.scoping.exact_json import (
    INEXACT,
    decode_fast,
    decode_json,
    encode_fast,
    encode_json,
)
from tests.scoping.test_scoping_properties import (
    contexts,
    json_texts,
    number_literals,
    package_tables,
    packages_and_documents,
    string_literals,
    whitespace,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DATA = Path(__file__).resolve().parent.parent.parent / "samtykke_gateway" / "dev" / "data"


def same(left: Any, right: Any) -> bool:
    """Equal value by value, and type by type (``1 == True`` and ``1 == 1.0`` do not count)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    return bool(left == right)


def exact_path(body: bytes, package: RightsPackage, context: ScopeContext) -> tuple[bytes, Any]:
    """``scope_body`` as it was before the fast path: stdlib decode, apply, exact encode."""
    scoped, released = package.apply(decode_json(body), context)
    return encode_json(scoped, source=body), released


def inexact_literal(literal: str) -> bool:
    digits = literal.lstrip("-")
    return any(c in literal for c in ".eE") or literal == "-0" or len(digits) >= 19


def check_agrees(body: bytes) -> Any:
    """decode_fast is INEXACT or decode_json's value; returns decode_fast's answer."""
    fast = decode_fast(body)
    try:
        exact = decode_json(body)
    except UpstreamError:
        assert fast is INEXACT
        return fast
    if fast is not INEXACT:
        assert same(fast, exact), (fast, exact)
        assert encode_fast(fast) == encode_json(exact, source=body)
    return fast


# --- numbers ------------------------------------------------------------------------------

integer_literals = st.integers(min_value=-(10**25), max_value=10**25).map(str) | st.sampled_from(
    [
        "0",
        "-0",
        str(2**63 - 1),
        str(-(2**63)),
        str(2**63),
        str(-(2**63) - 1),
        str(2**64 - 1),
        str(2**64),
        "9" * 18,
        "9" * 19,
        "-" + "9" * 18,
        "-" + "9" * 19,
        "1" + "0" * 400,
    ]
)
any_number = (
    number_literals
    | integer_literals
    | st.sampled_from(
        ["-0.0", "0e0", "-0E-0", "1E400", "-1e400", "0.1e-400", "1.10", "2e+5", "-0e1"]
    )
)


def in_context(literal: str, shape: int, ws: str) -> bytes:
    """A number literal in one of several places of a document."""
    forms = [
        "{literal}",
        "[{ws}{literal}{ws}]",
        '{{"a":{ws}{literal}{ws}}}',
        '{{"a":[1,{ws}{literal}{ws},2],"b":"x"}}',
        '[{ws}"s",{ws}{literal}]',
        '{{"k":{{"k":[[{literal}]]}}}}',
        '["2018-07-01T12:00:00.5",{ws}{literal}{ws}]',
    ]
    return forms[shape].format(literal=literal, ws=ws).encode()


@SETTINGS
@given(any_number, st.integers(min_value=0, max_value=6), whitespace)
def test_guard_sends_every_inexact_number_to_the_exact_path(
    literal: str, shape: int, ws: str
) -> None:
    body = in_context(literal, shape, ws)
    fast = check_agrees(body)
    if inexact_literal(literal):
        assert fast is INEXACT
    assert scope_body(body, ALL, ScopeContext()).body == exact_path(body, ALL, ScopeContext())[0]


@SETTINGS
@given(st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1), whitespace)
def test_plain_integers_take_the_fast_path(number: int, ws: str) -> None:
    body = ('{"a":' + ws + str(number) + ws + ',"d":"2018-07-01"}').encode()
    assert same(decode_fast(body), {"a": number, "d": "2018-07-01"})


@pytest.mark.parametrize(
    "text",
    [
        '"12:53:05.985"',  # looks like a fraction, inside a string
        '"x-0"',
        '"x-0,"',
        '"Utover28Doegn"',
        '"1e5 "',
        '"abc 1.5, x"',
        '"2023-02-03T12:53:05Z"',
        '"' + "1" * 30 + '"',
    ],
)
def test_number_lookalikes_in_strings_are_safe(text: str) -> None:
    body = ('{"v": [' + text + ", -5, 7]}").encode()
    check_agrees(body)
    assert scope_body(body, ALL, ScopeContext()).body == exact_path(body, ALL, ScopeContext())[0]


@pytest.mark.parametrize("name", sorted(path.name for path in DATA.glob("*.json")))
def test_published_examples_take_the_fast_path(name: str) -> None:
    body = (DATA / name).read_bytes()
    assert check_agrees(body) is not INEXACT


# --- whole documents ----------------------------------------------------------------------

ALL = RightsPackage.from_config(
    "all", {"fields": ["[]", "v", "a", "b", "k", "æ"]}, base_dir=Path("."), key_path="p.all"
)


@SETTINGS
@given(json_texts())
def test_fast_path_equals_exact_path_for_json_texts(text: str) -> None:
    body = text.encode()
    check_agrees(body)
    wrapped = ('{"v":' + text + "}").encode()
    check_agrees(wrapped)
    for candidate in (body, wrapped):
        assert (
            scope_body(candidate, ALL, ScopeContext()).body
            == exact_path(candidate, ALL, ScopeContext())[0]
        )


plain_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(), inner)),
    max_leaves=30,
)


@SETTINGS
@given(plain_json, st.booleans(), st.sampled_from([None, 1, 2]))
def test_fast_path_equals_exact_path_for_arbitrary_documents(
    document: Any, ascii_only: bool, indent: int | None
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only, indent=indent).encode()
    check_agrees(body)
    assert scope_body(body, ALL, ScopeContext()).body == exact_path(body, ALL, ScopeContext())[0]


@SETTINGS
@given(packages_and_documents(), contexts, st.booleans())
def test_scope_body_fast_equals_exact_for_packages(
    case: tuple[dict[str, Any], Any], context: ScopeContext, ascii_only: bool
) -> None:
    table, document = case
    package = RightsPackage.from_config("p", table, base_dir=Path("."), key_path="p.p")
    body = encode_json(document)
    if ascii_only:
        body = json.dumps(json.loads(body), ensure_ascii=True).encode()
        if any(isinstance(v, JsonNumber) for v in _leaves(document)):
            return  # json.loads would round the decimals: covered by the text strategies
    result = scope_body(body, package, context)
    assert (result.body, result.released_paths) == exact_path(body, package, context)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@SETTINGS
@given(package_tables(), json_texts(), contexts)
def test_scope_body_fast_equals_exact_for_texts(
    table: dict[str, Any], text: str, context: ScopeContext
) -> None:
    package = RightsPackage.from_config("p", table, base_dir=Path("."), key_path="p.p")
    body = text.encode()
    result = scope_body(body, package, context)
    assert (result.body, result.released_paths) == exact_path(body, package, context)


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=64),
        st.tuples(json_texts(), st.integers(0, 200), st.binary(max_size=3)).map(
            lambda t: t[0].encode()[: t[1]] + t[2] + t[0].encode()[t[1] :]
        ),
        st.tuples(json_texts(), st.integers(0, 200)).map(
            lambda t: t[0].encode()[: t[1]] + t[0].encode()[t[1] + 1 :]
        ),
        string_literals.map(str.encode),
        st.text().map(lambda text: ('["' + text + '"]').encode("utf-8", "surrogatepass")),
    )
)
def test_fast_path_never_accepts_what_the_exact_path_refuses(body: bytes) -> None:
    check_agrees(body)


@pytest.mark.parametrize(
    "body",
    [
        b'["\\ud800"]',
        b'{"v": "\\udfff x"}',
        b"[1e400]",
        b"\xef\xbb\xbf{}",
        b"[" * 65 + b"]" * 65,
        b"[" * 2000 + b"]" * 2000,
        b'{"a":1,"b":2,"a":3}',
        b'"\\u0000\\u001f\\u007f\\u2028"',
    ],
)
def test_refused_or_special_bodies_agree(body: bytes) -> None:
    check_agrees(body)


def test_deep_output_past_orjson_encode_limit_falls_back() -> None:
    body = b'{"v":' + b"[" * 300 + b"]" * 300 + b"}"
    result = scope_body(body, ALL, ScopeContext(), max_depth=400)
    assert result.body == body
    assert decode_fast(body, max_depth=400) is not INEXACT


def test_orjson_writes_every_character_like_the_exact_encoder() -> None:
    """Byte-identical output needs orjson's string escaping to be the stdlib's
    (``ensure_ascii=False``) for every code point a decoded body can hold."""
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    assert encode_fast([text, {text: text}]) == encode_json([text, {text: text}])
