"""What leaves the gateway on the response side (framework-free; the middleware drives it).

Scoped routes (a rights package applies): the upstream body has been buffered (bounded by
``max_body_bytes``); :func:`scoped_release` decodes it (``Content-Encoding`` gzip / deflate /
br, RFC 9110 §8.4), scopes it (:func:`~samtykke_gateway.scoping.package.scope_body`) and re-labels it:
of the upstream's headers only ``Content-Type`` (the checked JSON media type, no parameters) and
``Content-Language`` (language tags) leave, plus the deployment's ``release_headers``
(:data:`SCOPED_HEADER_ALLOW`); ``Content-Length`` is the gateway's (never with
``Transfer-Encoding``, RFC 9112 §6.2), ``Cache-Control: no-store`` (RFC 9111 §5.2.2.5), the
gateway's correlation id. An upstream
status other than 2xx gets a generic body of the same status: the upstream's own error body may
carry personal data. HEAD, 204, 205 and 304 carry no body. Anything the gateway cannot scope
raises :class:`UpstreamError` (502) and nothing is released.

Unscoped routes stream; :func:`streaming_headers` drops the hop-by-hop headers, the server-owned
``Date`` / ``Server``, the upstream's correlation id and, on 204/304, ``Content-Length``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import brotli  # type: ignore[import-untyped]

from samtykke_gateway.asgi.error_bodies import generic_body
from samtykke_gateway.exceptions import UpstreamError
from samtykke_gateway.asgi.headers import Headers, strip_hop_by_hop
from samtykke_gateway.scoping.package import RightsPackage, ScopeContext, scope_body

__all__ = ["Release", "declared_length", "decode_body", "scoped_release", "streaming_headers"]

_JSON_TYPE = re.compile(rb"^application/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.I)
#: Headers describing the upstream's representation, invalid after scoping.
_REPRESENTATION = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"etag",
        b"content-md5",
        b"digest",
        b"content-digest",
        b"repr-digest",
        b"cache-control",
        b"expires",
        b"last-modified",
        b"content-range",
        b"accept-ranges",
        b"x-correlation-id",
    }
)
#: Upstream response headers that may reach the client on a scoped route: an allow-list,
#: since any other header (Set-Cookie, Link, Content-Disposition, debug headers) can carry
#: personal data or internals the rights package never released. Their values are not free
#: text either: ``Content-Type`` leaves as the one checked JSON media type, without
#: parameters (:func:`_scoped_headers`); ``Content-Language`` only as a short list of
#: language tags (``nb``, ``en-GB``). ``Vary`` does not leave: a scoped answer is ``no-store``.
#: Extend per deployment with ``[upstream] release_headers`` (released as the upstream sent them).
SCOPED_HEADER_ALLOW = frozenset({b"content-type", b"content-language"})
_LANGUAGES = re.compile(rb"[A-Za-z]{2,3}(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:\s*,\s*[A-Za-z]{2,3}(?:-(?:[A-Za-z]{2}|[0-9]{3}))?){0,3}")
#: Set by the server that answers the client (uvicorn / the host app), never copied upstream's.
_SERVER_OWNED = frozenset({b"date", b"server"})
_BODYLESS = frozenset({204, 205, 304})
_TOO_LARGE = "upstream_body_too_large"


@dataclass(frozen=True, slots=True)
class Release:
    """What the client receives.

    :param status: HTTP status.
    :param headers: ASGI headers, final.
    :param body: the bytes to send (empty for HEAD / bodyless statuses).
    :param released_paths: rights-package paths present in ``body``.
    :param rows_withheld: ``(row-filter path, rows removed whole)`` pairs of a scoped body.
    :param data_released: ``True`` when ``body`` holds data from the source (a scoped 2xx
        body); ``False`` for a generic error body or no body.
    :param reason: disclosure-record reason: ``"ok"`` (data released), ``"upstream_status"``
        (the upstream answered 400 or above) or ``"no_data_released"`` (headers only: ``HEAD``,
        204/304, a 1xx/3xx answered with the generic body).
    """

    status: int
    headers: Headers
    body: bytes
    released_paths: tuple[str, ...] = ()
    data_released: bool = False
    reason: str = "ok"
    rows_withheld: tuple[tuple[str, int], ...] = ()


def decode_body(body: bytes, encoding: str, *, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` (RFC 9110 §8.4.1: codings listed in the order applied, so
    undone in reverse). Accepts ``identity``, ``gzip``/``x-gzip``, ``deflate`` (zlib-wrapped
    or raw, as servers send both) and ``br`` (RFC 7932).

    :param body: the received bytes.
    :param encoding: the ``Content-Encoding`` field value(s), comma-joined.
    :param max_bytes: bound on every decoded stage (zip bombs).
    :raises UpstreamError: (502) ``upstream_unknown_encoding``, ``upstream_bad_encoding``
        (corrupt or truncated) or ``upstream_body_too_large``.
    """
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        try:
            if coding == "identity":
                continue
            if coding in ("gzip", "x-gzip"):
                body = _gzip(body, max_bytes)
            elif coding == "deflate":
                d = zlib.decompressobj(zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
                body = _inflate(d, body, max_bytes)
                if d.unused_data:
                    raise UpstreamError("data after the compressed body", reason="upstream_bad_encoding")
            elif coding == "br":
                body = _brotli(body, max_bytes)
            else:
                raise UpstreamError("upstream used an unknown content encoding", reason="upstream_unknown_encoding")
        except (zlib.error, brotli.error):
            raise UpstreamError("corrupt compressed upstream body", reason="upstream_bad_encoding") from None
    return body


def _inflate(d: Any, body: bytes, max_bytes: int) -> bytes:
    out = d.decompress(body, max_bytes + 1)
    if len(out) > max_bytes:
        raise UpstreamError("upstream body too large", reason=_TOO_LARGE)
    if not d.eof:
        raise UpstreamError("truncated compressed body", reason="upstream_bad_encoding")
    return bytes(out)


def _gzip(body: bytes, max_bytes: int) -> bytes:
    """gzip, every member (RFC 1952 §2.2: a file is a series of members, as ``gzip.decompress``
    reads it); anything after the last member that is not a member is a corrupt body (502),
    never ignored."""
    parts: list[bytes] = []
    left = max_bytes
    rest = body
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        part = _inflate(d, rest, left)
        parts.append(part)
        left -= len(part)
        rest = d.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if rest[:2] != b"\x1f\x8b":
            raise UpstreamError("data after the compressed body", reason="upstream_bad_encoding")


def _brotli(body: bytes, max_bytes: int) -> bytes:
    """br with its output bounded per call (``output_buffer_limit``, brotli ≥ 1.2): a few
    hundred bytes can expand to gigabytes, which one unbounded call would allocate first."""
    decompressor = brotli.Decompressor()
    chunks: list[bytes] = []
    total = pos = 0
    step = 65536
    while not decompressor.is_finished():
        if decompressor.can_accept_more_data():
            if pos >= len(body):
                raise UpstreamError("truncated br body", reason="upstream_bad_encoding")
            data = body[pos : pos + step]
            pos += step
        else:
            data = b""  # output still pending from input already given
        part = decompressor.process(data, output_buffer_limit=step)
        if not data and not part:  # no input taken and nothing out: never spin
            raise UpstreamError("corrupt compressed upstream body", reason="upstream_bad_encoding")
        total += len(part)
        if total > max_bytes:
            raise UpstreamError("upstream body too large", reason=_TOO_LARGE)
        chunks.append(part)
    if pos < len(body):
        raise UpstreamError("data after the compressed body", reason="upstream_bad_encoding")
    return b"".join(chunks)


def declared_length(headers: Headers) -> int | None:
    """The upstream's ``Content-Length`` as an int, ``None`` if absent or not a plain number."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _scoped_headers(headers: Headers, allow: frozenset[bytes], extra: frozenset[bytes] = frozenset()) -> Headers:
    """The upstream headers that may leave with a scoped answer (:data:`SCOPED_HEADER_ALLOW`, as
    its values are checked, plus ``extra``, the deployment's ``release_headers``, as sent):
    ``Content-Type`` only when the upstream sent exactly one, a JSON media type, and then as
    that media type alone (lower-cased, no parameters); ``Content-Language`` only as language tags."""
    out: Headers = []
    types = [v for n, v in headers if n.lower() == b"content-type"]
    for name, value in headers:
        lname = name.lower()
        if lname not in allow or lname in _REPRESENTATION:
            continue
        if lname in extra:
            out.append((name, value))
        elif lname == b"content-type":
            if len(types) == 1 and _JSON_TYPE.match(value.strip()):
                out.append((b"content-type", value.split(b";", 1)[0].strip().lower()))
        elif lname == b"content-language":
            if _LANGUAGES.fullmatch(value.strip()):
                out.append((b"content-language", value.strip()))
        else:
            out.append((name, value))
    return out


def streaming_headers(headers: Headers, correlation_id: bytes, *, status: int = 200) -> Headers:
    """Headers of an unscoped (streamed) response: hop-by-hop and server-owned (``Date``,
    ``Server``) dropped, our correlation id. A 204 or 304 never has content (RFC 9110
    §6.4.1), so its ``Content-Length`` is dropped too: an ASGI server such as uvicorn would take
    it as the length of a body to come and break the connection when none does."""
    bodyless = status in (204, 304)
    out = [
        (n, v)
        for n, v in strip_hop_by_hop(headers)
        if n.lower() != b"x-correlation-id" and n.lower() not in _SERVER_OWNED
        and not (bodyless and n.lower() == b"content-length")
    ]
    out.append((b"x-correlation-id", correlation_id))
    return out


def scoped_release(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    method: str,
    package: RightsPackage,
    context: ScopeContext,
    max_body_bytes: int,
    correlation_id: str,
    error_style: str = "problem",
    release_headers: frozenset[bytes] = frozenset(),
) -> Release:
    """Turn a buffered upstream response on a scoped route into what the client may see.

    :param status: upstream status.
    :param headers: upstream response headers (ASGI form).
    :param body: the upstream body as received (possibly content-encoded).
    :param method: request method (``HEAD`` releases headers only).
    :param release_headers: lower-cased upstream header names released besides
        :data:`SCOPED_HEADER_ALLOW`; every other upstream header is dropped.
    :raises UpstreamError: (502) not JSON (by ``Content-Type`` or by parse), unknown or corrupt
        encoding, decoded body over ``max_body_bytes``, a body whose top-level value fits no
        path of the package (``upstream_body_unexpected_shape``).
    """
    cid = correlation_id.encode()
    allow = SCOPED_HEADER_ALLOW | release_headers
    if not 200 <= status < 300 or status in _BODYLESS or method == "HEAD":
        if status in _BODYLESS or (method == "HEAD" and 200 <= status < 300):
            kept = _scoped_headers(headers, allow, release_headers - SCOPED_HEADER_ALLOW)
            kept += [(b"cache-control", b"no-store"), (b"x-correlation-id", cid)]
            return Release(status, kept, b"", reason="no_data_released")
        out_headers, generic = generic_body(status, correlation_id=correlation_id, style=error_style)
        return Release(status, out_headers, b"" if method == "HEAD" else generic,
                       reason="upstream_status" if status >= 400 else "no_data_released")
    content_types: list[bytes] = []
    encodings: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            content_types.append(value)
        elif lname == b"content-encoding":
            encodings.append(value)
    if len(content_types) != 1 or not _JSON_TYPE.match(content_types[0].strip()):  # none, two, or not JSON
        raise UpstreamError("upstream body is not JSON", reason="upstream_body_not_json")
    if encodings:
        body = decode_body(body, b", ".join(encodings).decode("latin-1"), max_bytes=max_body_bytes)
    scoped = scope_body(body, package, context)
    if scoped.body == b"null":
        raise UpstreamError("upstream body does not have the shape the rights package describes",
                            reason="upstream_body_unexpected_shape")
    out = _scoped_headers(headers, allow, release_headers - SCOPED_HEADER_ALLOW)
    out += [
        (b"content-length", str(len(scoped.body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-correlation-id", cid),
    ]
    return Release(status, out, scoped.body, scoped.released_paths, data_released=True,
                   rows_withheld=scoped.rows_withheld)
