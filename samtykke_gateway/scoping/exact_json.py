"""Exact JSON codec for response scoping: numbers leave exactly as they arrived.

:func:`decode_json` turns an upstream body into Python values with the stdlib C scanner:
objects -> ``dict``, arrays -> ``list``, strings -> ``str``, ``true``/``false``/``null`` ->
``bool``/``None``, integers -> ``int`` (exact), and every other number -> a
:class:`JsonNumber` holding the source literal: any fraction or exponent (``1.10``,
``1e400``, ``-0.0``), ``-0``, and integers past :func:`sys.get_int_max_str_digits` (when
``-0`` forces the slower exact path, every integer over 40 digits). :func:`encode_json` writes compact UTF-8
(``,`` and ``:`` separators, non-ASCII as is) and each :class:`JsonNumber` verbatim.

How the verbatim write works: the C encoder cannot emit raw text, so a :class:`JsonNumber` is
first encoded as the string ``"<C><literal>"`` with a control character ``C`` that occurs in
no string of the document (checked against the body's escapes), and that quoted form is then
replaced by the literal. If every candidate character occurs (a hostile body), a pure-Python
encoder is used instead. Strict JSON only (RFC 8259): UTF-8 without BOM, no ``NaN`` /
``Infinity``; duplicate member names keep the last value (stdlib behaviour).

Fast path: :func:`decode_fast` decodes with :mod:`orjson` (about 3x faster) only when that is
provably exact, and :func:`encode_fast` encodes its results. orjson turns every number with a
fraction or exponent into a ``float``, ``-0`` into ``0`` and integers past 64 bits into a
``float``, and rejects lone surrogate escapes; a guard over the raw bytes
(in :func:`decode_fast`) finds every number token that could be affected (string contents
that merely look like one only send the body to the exact path), and any body orjson refuses
also goes to the exact path, which then decides (and raises) exactly as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json import encoder as _stdlib_encoder
from typing import Any, Final

import orjson

from samtykke_gateway.exceptions import UpstreamError

__all__ = ["INEXACT", "JsonNumber", "decode_fast", "decode_json", "encode_fast", "encode_json"]

NOT_JSON: Final = "upstream_body_not_json"


class JsonNumber:
    """A JSON number kept as its exact source text, e.g. ``JsonNumber("1.10")``.

    Equality is textual: ``JsonNumber("1.10") != JsonNumber("1.1")``.
    """

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __eq__(self, other: object) -> bool:
        if other.__class__ is JsonNumber:
            return self.literal == other.literal
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("JsonNumber", self.literal))

    def __repr__(self) -> str:
        return f"JsonNumber({self.literal!r})"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_int(literal: str) -> int | JsonNumber:
    if literal == "-0" or len(literal) > 40:
        return JsonNumber(literal)
    return int(literal)


# Decoders are built once: json.loads(..., parse_float=...) builds a decoder per call.
_FAST: Final = json.JSONDecoder(parse_float=JsonNumber, parse_constant=_refuse_constant)
_EXACT_INTS: Final = json.JSONDecoder(
    parse_float=JsonNumber, parse_int=_exact_int, parse_constant=_refuse_constant
)
# "-0" as a whole number literal (also matches inside strings: that only costs speed).
_NEGATIVE_ZERO: Final = re.compile(r"-0(?![0-9.eE])")

# Depth pre-check on the raw bytes: drop escaped backslashes and quotes, keep only '"' and
# brackets ({} -> []), drop string contents, then peel innermost pairs once per level.
_DEPTH_TABLE: Final = bytes.maketrans(b"{}", b"[]")
_DEPTH_DELETE: Final = bytes(c for c in range(256) if c not in b'"[]{}')


def _nesting_exceeds(body: bytes, max_depth: int) -> bool:
    """True when ``body`` nests deeper than ``max_depth`` (or is not balanced JSON)."""
    if b"\\" in body:  # rare: escapes; after this, every '"' delimits a string
        body = _drop_escaped_quotes(body)
    return _structure_exceeds(body.translate(_DEPTH_TABLE, _DEPTH_DELETE), max_depth)


def _drop_escaped_quotes(body: bytes) -> bytes:
    """Remove ``\\\\`` and ``\\"`` pairs (only ever inside strings in JSON)."""
    return body.replace(b"\\\\", b"").replace(b'\\"', b"")


def _structure_exceeds(structure: bytes, max_depth: int) -> bool:
    """The depth check on ``structure``: only '"' and '[' / ']' of an escape-free body."""
    if structure.count(b"[") <= max_depth:
        return False
    # Removing two adjacent quotes never changes which bytes are inside a string.
    brackets = structure.replace(b'""', b"")
    if b'"' in brackets:  # some strings hold brackets
        brackets = b"".join(brackets.split(b'"')[::2])
    for _ in range(max_depth):
        if not brackets:
            return False
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return True  # unbalanced: not JSON
        brackets = peeled
    return bool(brackets)


def _not_json(detail: str) -> UpstreamError:
    return UpstreamError(detail, reason=NOT_JSON)


def decode_json(body: bytes, *, max_depth: int = 64) -> Any:
    """Decode an upstream body (RFC 8259 JSON, UTF-8, no BOM) keeping numbers exact.

    :param max_depth: most nested arrays/objects allowed (``[[1]]`` is 2); at least 1.
    :returns: ``dict`` / ``list`` / ``str`` / ``int`` / :class:`JsonNumber` / ``bool`` / ``None``.
    :raises UpstreamError: ``reason="upstream_body_not_json"`` for a BOM, invalid UTF-8,
        invalid JSON (including ``NaN``/``Infinity``) or nesting deeper than ``max_depth``.
    :raises ValueError: ``max_depth`` below 1.
    """
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1")
    if body.startswith(b"\xef\xbb\xbf"):
        raise _not_json("upstream body starts with a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_json("upstream body is not UTF-8") from None
    if _nesting_exceeds(body, max_depth):
        raise _not_json(f"upstream body is not JSON or nests deeper than {max_depth}")
    decoder = _EXACT_INTS if _NEGATIVE_ZERO.search(text) else _FAST
    try:
        return decoder.decode(text)
    except json.JSONDecodeError:
        # not the error's message or offset: an offset into the withheld body tells the lengths of its values
        raise _not_json("upstream body is not JSON") from None
    except RecursionError:
        raise _not_json("upstream body nests too deeply") from None
    except ValueError:  # NaN/Infinity, or an int past sys.get_int_max_str_digits()
        if decoder is _EXACT_INTS:
            raise _not_json("upstream body is not JSON") from None
    try:
        return _EXACT_INTS.decode(text)
    except (ValueError, RecursionError):
        raise _not_json("upstream body is not JSON") from None


# --- fast path (orjson) ------------------------------------------------------------------

#: Returned by :func:`decode_fast` when the body needs the exact path.
INEXACT: Final = object()

# Guard translation: digits -> "0" and the fraction / exponent marks ".eE" -> "."; ASCII
# punctuation (brackets, quotes, ",", "-", "+", ...) stays; letters other than e/E,
# whitespace and non-ASCII bytes are deleted. Deleting can only make bytes adjacent that were
# not (more hits, never fewer): nothing it deletes can sit inside a number token or between a
# number token and the "," / "]" / "}" (after whitespace) or end of text that follows it.
_GUARD_MAP = bytearray(range(256))
_GUARD_MAP[ord("1") : ord("9") + 1] = b"0" * 9
for _mark in b".eE":
    _GUARD_MAP[_mark] = ord(".")
_GUARD_TABLE: Final = bytes(_GUARD_MAP)
_GUARD_DELETE: Final = bytes(
    c for c in range(256) if c >= 0x80 or c in b" \t\n\r" or (chr(c).isalpha() and c not in b"eE")
)
del _GUARD_MAP, _mark
# Searched in the translated body. A number token with a fraction or exponent is a digit, a
# mark, digits (with a sign after an exponent mark) and then the end of the token: ",", "]",
# "}" or the end of the text (string contents end at '"' or go on, so a date-time's
# "12:53:05.985" does not match). "-0" at the end of a token also matches one-digit negative
# integers: a second look at the body tells them apart.
_FLOAT_TOKEN: Final = re.compile(rb"0\.[-+]?0+(?:\.[-+]?0+)?(?:[,\]}]|\Z)")
_MINUS_DIGIT_TOKEN: Final = re.compile(rb"-0(?:[,\]}]|\Z)")
_LONG_INTEGER: Final = b"0" * 19  # 19 digits: at least 10**18, near the 64-bit limits
_NEGATIVE_ZERO_BYTES: Final = re.compile(rb"-0(?![0-9.eE])")


def decode_fast(body: bytes, *, max_depth: int = 64) -> Any:
    """Decode with orjson when that is exact, else return :data:`INEXACT`.

    The result (when not :data:`INEXACT`) equals :func:`decode_json`'s for the same body: it
    holds no :class:`JsonNumber` and no ``float``. :data:`INEXACT` when ``body`` may hold a
    number token with a fraction or exponent, ``-0`` or 19 or more digits (also for some
    bodies that only hold such text in strings), and for every body :func:`decode_json` would
    refuse, so that the exact path raises its usual error.
    """
    if max_depth < 1:
        return INEXACT
    # Dropping escaped quotes and backslashes (inside strings only) serves the depth check
    # and cannot hide a number token from the guard.
    stripped = _drop_escaped_quotes(body) if b"\\" in body else body
    guard = stripped.translate(_GUARD_TABLE, _GUARD_DELETE)
    if (
        _FLOAT_TOKEN.search(guard) is not None
        or _LONG_INTEGER in guard
        or (
            _MINUS_DIGIT_TOKEN.search(guard) is not None
            and _NEGATIVE_ZERO_BYTES.search(body) is not None
        )
        or _structure_exceeds(guard.translate(_DEPTH_TABLE, _DEPTH_DELETE), max_depth)
    ):
        return INEXACT
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # not JSON, a lone surrogate, ...: the exact path decides
        return INEXACT


def encode_fast(value: Any) -> bytes:
    """Encode a value from :func:`decode_fast` (or a part of one) like :func:`encode_json`."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # nesting past orjson's limit (254)
        return encode_json(value)


# Control characters the C encoder writes as \u00XX with decimal digits only (so the
# escape has one spelling); \b \t \n \f \r use short escapes and are not candidates.
_CANDIDATES: Final = tuple(chr(c) for c in (*range(0x08), *range(0x10, 0x1A)))
_Encoder = Callable[[Any, int], list[str]]
_Entry = tuple[_Encoder, str, bytes, re.Pattern[str]]
_ENCODERS: dict[tuple[str, bool], _Entry] = {}


def _sentinel_encoder(marker: str, ascii_only: bool) -> _Entry:
    cached = _ENCODERS.get((marker, ascii_only))
    if cached is not None:
        return cached

    def default(value: object) -> str:
        if value.__class__ is JsonNumber:
            return marker + value.literal
        raise TypeError(f"{type(value).__name__} is not a JSON value")

    escape = f"\\u{ord(marker):04x}" if marker else "\\u"
    make = getattr(_stdlib_encoder, "c_make_encoder", None)
    string = (
        _stdlib_encoder.encode_basestring_ascii if ascii_only else _stdlib_encoder.encode_basestring
    )
    if make is None:  # pragma: no cover - non-CPython
        py = json.JSONEncoder(ensure_ascii=ascii_only, separators=(",", ":"), default=default)

        def encode(value: Any, _level: int) -> list[str]:
            return [py.encode(value)]
    else:
        encode = make(None, default, string, None, ":", ",", False, False, False)
    pattern = re.compile('"' + re.escape(escape) + '([-+.0-9eE]+)"')
    entry = (encode, escape, escape.encode("ascii"), pattern)
    _ENCODERS[(marker, ascii_only)] = entry
    return entry


def _encode_python(value: Any, out: list[str], string: Callable[[str], str]) -> None:
    if value.__class__ is JsonNumber:
        out.append(value.literal)
    elif isinstance(value, str):
        out.append(string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(json.dumps(value, allow_nan=False))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(string(key))
            out.append(":")
            _encode_python(item, out, string)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode_python(item, out, string)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def encode_json(value: Any, *, source: bytes | None = None) -> bytes:
    """Encode compactly as UTF-8, writing each :class:`JsonNumber` literal verbatim.

    :param source: the body ``value`` was decoded from; its escapes tell which marker
        characters no string can hold. Without it, a first encoding is made to find out.
    :returns: UTF-8 JSON; lone surrogates (legal in JSON escapes) come out ``\\uXXXX``-escaped.
    :raises TypeError: ``value`` holds something that is not a JSON value.
    """
    try:
        return _encode_text(value, source, ascii_only=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape everything non-ASCII instead
        return _encode_text(value, source, ascii_only=True).encode("ascii")


def _encode_text(value: Any, source: bytes | None, *, ascii_only: bool) -> str:
    if source is None:
        probe = _sentinel_encoder("", ascii_only)[0]
        source = "".join(probe(value, 0)).encode("utf-8", "surrogatepass")
    no_escapes = b"\\" not in source  # memchr: much faster than searching for "\\u0000"
    for marker in _CANDIDATES:
        encode, escape, escape_bytes, pattern = _sentinel_encoder(marker, ascii_only)
        if not no_escapes and escape_bytes in source:
            continue
        out = "".join(encode(value, 0))
        return pattern.sub(r"\1", out) if escape in out else out
    string = (
        _stdlib_encoder.encode_basestring_ascii if ascii_only else _stdlib_encoder.encode_basestring
    )
    parts: list[str] = []
    _encode_python(value, parts, string)
    return "".join(parts)
