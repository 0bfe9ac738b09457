"""Strict JWS compact serialization parsing (RFC 7515 §3.1, §7.1). No cryptography here.

This is the first step of docs/protocol.md §4: the token is split, size-bounded, base64url-decoded and its
header and payload are decoded as JSON objects. Everything that a lenient parser would quietly
accept is refused, because two parsers that disagree about one token are an attack surface:

* size bounded (``max_bytes``) before anything else is looked at;
* exactly three segments of the base64url alphabet (RFC 4648 §5), ASCII only, no padding, no
  ``+``/``/``, no whitespace, canonical encoding (unused trailing bits must be zero);
* header and payload are UTF-8 (strict) JSON *objects* (RFC 7519 §7.2 steps 3–10);
* duplicate member names refused (RFC 7515 §5.2 allows parsers to refuse; we do);
* ``NaN`` / ``Infinity`` literals refused (not JSON per RFC 8259 §6), unpaired surrogates refused;
* nesting depth bounded before :func:`json.loads` can recurse.

JSON is read by :mod:`orjson` first; its result is taken only when re-serialising it gives back
exactly the input bytes (compact, canonical JSON as issuers write it). That equality proves
everything the strict reference reader (:func:`json` with a duplicate-name hook) would check,
so both read such input alike; anything else — whitespace, escapes, floats, errors — is read
by the reference reader, which decides.

Every failure raises :class:`~samtykke_gateway.exceptions.InvalidTokenError` with
``reason="malformed_token"``; the detail never quotes the token.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

from samtykke_gateway.exceptions import InvalidTokenError

__all__ = [
    "CompactJWS",
    "parse_compact",
    "parse_compact_tuple",
    "split_compact_fast",
    "strict_json_object",
]

#: Default nesting bound for header/payload JSON (objects + arrays).
MAX_JSON_DEPTH = 32

_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
# Last character of a segment whose length is 2 (mod 4) encodes 4 unused bits, 3 (mod 4) two:
# canonical encodings leave them zero (RFC 4648 §3.5).
_CANONICAL_LAST = {
    2: frozenset(b"AQgw"),
    3: frozenset(b"AEIMQUYcgkosw048"),
}
_PADDING = (b"", b"", b"==", b"=")
_BRACKETS = re.compile(r"[\[\]{}]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A parsed, *unverified* JWS in compact serialization (RFC 7515 §7.1).

    :ivar header: decoded JOSE header (JSON object).
    :ivar payload: decoded payload (JSON object; the JWT claims set, RFC 7519 §4).
    :ivar signing_input: ``ASCII(BASE64URL(header) || "." || BASE64URL(payload))``, the exact
        bytes the signature covers (RFC 7515 §5.2 step 8).
    :ivar signature: decoded signature bytes (empty for an unsecured JWS, which the verifier
        refuses).
    """

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _malformed(detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason="malformed_token")


def _b64decode(segment: bytes, what: str) -> bytes:
    """Decode one canonical, unpadded base64url segment (alphabet already checked)."""
    rest = len(segment) % 4
    if rest == 1:
        raise _malformed(f"The token {what} has an impossible base64url length.")
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:
        raise _malformed(f"The token {what} is not canonical base64url.")
    try:
        return binascii.a2b_base64(
            segment.translate(_URLSAFE_TO_STD) + _PADDING[rest], strict_mode=True
        )
    except binascii.Error:  # pragma: no cover - alphabet and length were checked above
        raise _malformed(f"The token {what} is not valid base64url.") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_WS = " \t\n\r"


def _depth_exceeds(text: str, max_depth: int) -> bool:
    """True when objects/arrays in ``text`` nest deeper than ``max_depth``.

    Fast path: fewer opening brackets than the bound cannot nest deeper. Otherwise strings are
    blanked out (they may contain brackets) and only the bracket characters are walked.
    """
    if text.count("{") + text.count("[") <= max_depth:
        return False
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def strict_json_object(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Decode ``data`` as a strict UTF-8 JSON object.

    Strict means: UTF-8 without BOM, an object at the top, no duplicate member names, no
    ``NaN``/``Infinity``, no unpaired surrogates, nesting at most ``max_depth``.

    Fast path: :func:`orjson.loads`, kept only when :func:`orjson.dumps` of the result equals
    ``data`` byte for byte. Then ``data`` is compact JSON whose members are exactly those of a
    dict (no duplicate names: a dropped duplicate would make the output shorter), valid UTF-8
    without escaped surrogates, with integers that fit 64 bits (larger ones come back as
    floats and print differently) and floats in shortest round-trip form (read to the same
    value by any correctly rounding reader); the bracket count bounds the depth. So the
    reference reader would return an equal object. Everything else goes to the reference
    reader, whose answer (value or error) is the answer.

    :raises ValueError: with a short reason, for anything else (also used for JWKS and
        RFC 8414 metadata documents by :mod:`samtykke_gateway.tokens.keys`).
    """
    if data.count(b"{") + data.count(b"[") <= max_depth:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(obj) is dict and orjson.dumps(obj) == data:
                return obj
    return _reference_json_object(data, max_depth=max_depth)


def _reference_json_object(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """:func:`strict_json_object` by the standard library's reader alone (the reference)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if _depth_exceeds(text, max_depth):
        raise ValueError("nested too deeply")
    start = 0
    if text[:1] in _JSON_WS:  # JSON allows surrounding whitespace (RFC 8259 §2)
        start = len(text) - len(text.lstrip(_JSON_WS))
    try:
        # The C scanner directly: JSONDecoder.decode adds two regex passes and Python frames.
        obj, end = _SCAN_ONCE(text, start)
    except StopIteration:
        raise ValueError("Expecting value") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate names, int digit limit
        raise ValueError(str(exc).split(":")[0]) from None
    if end != len(text) and text[end:].strip(_JSON_WS):
        raise ValueError("Extra data")
    if type(obj) is not dict:
        raise ValueError("not a JSON object")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("unpaired surrogate") from None
    return obj


#: Parsed flat headers by their exact base64url segment. Headers repeat across tokens (one
#: ``kid`` per issuer), so this saves a base64 + JSON decode per token. Only headers whose
#: values are all immutable scalars are kept, and callers get a copy: nothing can be mutated
#: through the cache. Bounded by clearing when full (an attacker can only cost us the saving).
_HEADER_CACHE: dict[bytes, dict[str, Any]] = {}
_HEADER_CACHE_SIZE = 256
_SCALARS = (str, int, float, bool, type(None))


def _remember_header(segment: bytes, header: dict[str, Any]) -> None:
    if len(segment) > 512 or not all(type(v) in _SCALARS for v in header.values()):
        return
    if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[segment] = dict(header)


def parse_compact(token: str | bytes, *, max_bytes: int = 16384) -> CompactJWS:
    """Split and decode a JWS compact serialization without verifying it.

    :param token: ``"<b64url header>.<b64url payload>.<b64url signature>"`` (ASCII ``str``;
        ASCII ``bytes`` are accepted too).
    :param max_bytes: upper bound on the token length, checked before any other work.
    :returns: :class:`CompactJWS`.
    :raises InvalidTokenError: ``reason="malformed_token"`` for anything that is not a strict
        compact JWS with JSON-object header and payload (RFC 7515 §7.1, RFC 7519 §7.2), and for
        a header with ``enc`` or ``zip`` (JWE / compression markers, RFC 7516 §4.1.2-§4.1.3).
    """
    return CompactJWS(*parse_compact_tuple(token, max_bytes=max_bytes))


def parse_compact_tuple(
    token: str | bytes, *, max_bytes: int = 16384
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """:func:`parse_compact` as a plain ``(header, payload, signing_input, signature)`` tuple.

    For the verifier's hot path (a frozen dataclass costs about a microsecond to build).
    A well-formed ``str`` token takes :func:`_parse_compact_fast`; anything it does not accept
    outright is parsed again by :func:`_parse_compact_reference`, which raises the error (the
    first failing check, in the documented order) or returns the same result.
    """
    if type(token) is str:
        parsed = _parse_compact_fast(token, max_bytes)
        if parsed is not None:
            return parsed
    return _parse_compact_reference(token, max_bytes=max_bytes)


#: base64url alternative characters for :func:`pybase64.b64decode`.
_URLSAFE = b"-_"


def split_compact_fast(
    token: str, max_bytes: int = 16384
) -> tuple[dict[str, Any], bytes, bytes, bytes] | None:
    """The checks of :func:`_parse_compact_reference` up to the payload JSON, with fewer passes
    over the token and no helper calls: ``(header, payload bytes, signing_input, signature)``,
    or ``None`` when any of them fails (the reference then names the failure).

    ``header`` is the cached parse of a header segment the reference has accepted before
    (``None`` on first sight): it is shared, so callers must not mutate it (copy it to hand
    it on). The payload is base64url-decoded but not yet read as JSON: the caller must give
    it to :func:`strict_json_object` (or prove its reading equal to it).

    The payload and signature are decoded by :mod:`pybase64` (SIMD C) with ``altchars=b"-_"``
    and ``validate=True``, after the padding the reference adds too: then it refuses every
    character outside ``A-Za-z0-9-_`` and ``+``/``/``, and ``=`` anywhere but at the end.
    ``+`` and ``/`` (which it would read as ``-`` and ``_``) are refused by two ``in`` checks
    on the whole token first, a segment ending in ``=`` by its last character; bad lengths and
    non-zero trailing bits by the last-character check, as in the reference. So it accepts
    exactly the segments the reference accepts, with the same bytes (pinned by property tests
    in ``tests/tokens/test_jose_compact_fastpath.py``). The dots are found with ``find`` (exactly
    two).
    """
    if len(token) > max_bytes or not token.isascii():
        return None
    raw = token.encode("ascii")
    first = raw.find(b".")
    second = raw.find(b".", first + 1)
    if first <= 0 or second <= first + 1 or raw.find(b".", second + 1) != -1:
        return None  # not three segments, or an empty header / payload
    # Only header segments that passed all of the reference's checks are cached.
    cached = _HEADER_CACHE.get(raw[:first])
    if cached is None:
        return None  # first sight of this header: the reference parses and remembers it
    payload_rest = (second - first - 1) % 4
    signature_rest = (len(raw) - second - 1) % 4
    if (
        payload_rest == 1
        or signature_rest == 1
        or (payload_rest and raw[second - 1] not in _CANONICAL_LAST[payload_rest])
        or (signature_rest and raw[-1] not in _CANONICAL_LAST[signature_rest])
    ):
        return None
    if 43 in raw or 47 in raw or raw[second - 1] == 61 or raw[-1] == 61:
        # "+" / "/" would be read as "-" / "_"; "=" ending a segment as padding (inside one,
        # or after one whose length is not a multiple of 4, pybase64 refuses it). An int
        # operand makes ``in`` one memchr (a bytes operand takes the general search).
        return None
    try:
        payload = pybase64.b64decode(
            raw[first + 1 : second] + _PADDING[payload_rest], _URLSAFE, True
        )
        # An empty signature segment decodes to b"" (refused later, as "bad_signature").
        signature = pybase64.b64decode(raw[second + 1 :] + _PADDING[signature_rest], _URLSAFE, True)
    except binascii.Error:
        return None
    return cached, payload, raw[:second], signature


def _parse_compact_fast(
    token: str, max_bytes: int
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes] | None:
    """:func:`split_compact_fast`, then the payload JSON by :func:`strict_json_object`'s
    orjson path, inlined; ``None`` when anything fails (the reference then decides)."""
    parts = split_compact_fast(token, max_bytes)
    if parts is None:
        return None
    cached, payload, signing_input, signature = parts
    claims: Any
    try:
        shallow = payload.count(b"{") + payload.count(b"[") <= MAX_JSON_DEPTH
        claims = orjson.loads(payload) if shallow else None
    except orjson.JSONDecodeError:
        claims = None
    if type(claims) is not dict or orjson.dumps(claims) != payload:
        try:
            claims = _reference_json_object(payload)
        except ValueError:
            return None
    return dict(cached), claims, signing_input, signature


def _parse_compact_reference(
    token: str | bytes, *, max_bytes: int = 16384
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """:func:`parse_compact_tuple`, each check a step of its own (the reference)."""
    if isinstance(token, str):
        # Characters <= bytes, and non-ASCII is refused right after: the bound is in bytes.
        if len(token) > max_bytes:
            raise _malformed("The token is too large.")
        if not token.isascii():
            raise _malformed("The token contains non-ASCII characters.")
        raw = token.encode("ascii")
    elif isinstance(token, (bytes, bytearray)):
        if len(token) > max_bytes:
            raise _malformed("The token is too large.")
        raw = bytes(token)
        if not raw.isascii():
            raise _malformed("The token contains non-ASCII characters.")
    else:
        raise _malformed("The token is not a string.")
    # Deleting the base64url alphabet must leave exactly the two separating dots.
    if raw.translate(None, _B64URL_ALPHABET) != b"..":
        raise _malformed(
            "The token is not three base64url segments separated by dots "
            "(no padding, whitespace or other characters allowed)."
        )
    header_b64, payload_b64, signature_b64 = raw.split(b".")
    if not header_b64 or not payload_b64:
        raise _malformed("The token header or payload segment is empty.")
    cached = _HEADER_CACHE.get(header_b64)
    if cached is not None:
        header = dict(cached)
    else:
        try:
            header = strict_json_object(_b64decode(header_b64, "header"))
        except ValueError as exc:
            raise _malformed(f"The token header is not a strict JSON object ({exc}).") from None
        if "enc" in header or "zip" in header:
            # JWE parameters (RFC 7516 §4.1.2, §4.1.3): an encrypted or compressed token is not
            # the plain JWS this reads. Checked before the header is cached, so the fast paths
            # (which only take cached headers) never see one either.
            raise _malformed("The token header has 'enc' or 'zip': an encrypted or compressed token is not accepted.")
        _remember_header(header_b64, header)
    payload_raw = _b64decode(payload_b64, "payload")
    signature = _b64decode(signature_b64, "signature") if signature_b64 else b""
    try:
        payload = strict_json_object(payload_raw)
    except ValueError as exc:
        raise _malformed(f"The token payload is not a strict JSON object ({exc}).") from None
    return header, payload, raw[: len(header_b64) + 1 + len(payload_b64)], signature
