"""Request intake: the raw facts of one HTTP request, read the same way by every caller.

Framework-free (bytes in, strings and segments out): the ASGI adapter, the sidecar (which is
the adapter around a proxy) and ``samtykke-gateway explain`` all hand their request to
:meth:`~samtykke_gateway.policy.decide.Gate.decide` as a :class:`RawRequest`, so there is one
query parser, one path normaliser and one framing check (docs/protocol.md §4).

* :class:`RawRequest` — method, path bytes, query bytes, header pairs and ASGI ``root_path``;
  its :attr:`~RawRequest.headers` map is built once, in one pass.
* :func:`parse_query` — the query string, bounded (:data:`MAX_QUERY_BYTES`,
  :data:`MAX_QUERY_PARAMETERS`), strict UTF-8.
* :func:`check_request_framing` — RFC 9112 §6.1/§6.3 (request smuggling).
* :func:`check_no_unexpected_body` — a ``GET``/``HEAD`` body is refused (nothing governs it).
* :func:`app_segments` — path normalisation (:func:`~samtykke_gateway.policy.routing.normalize_path`)
  under the mount prefix.
* :func:`claim_header_value` — a verified claim as an upstream header value (RFC 9110 §5.5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from samtykke_gateway.exceptions import BadRequestError, InvalidTokenError, NotFoundError
from samtykke_gateway.policy.routing import normalize_path

__all__ = [
    "MAX_QUERY_BYTES",
    "MAX_QUERY_PARAMETERS",
    "RawRequest",
    "app_segments",
    "check_no_unexpected_body",
    "check_request_framing",
    "claim_header_value",
    "declared_body_length",
    "declares_body",
    "parse_query",
]

#: Most bytes of a raw query string (after the ``?``).
MAX_QUERY_BYTES = 8192
#: Most query parameters (``&``-separated fields, empty ones included) in one request.
MAX_QUERY_PARAMETERS = 100

_DIGITS = re.compile(rb"[0-9]{1,15}")
_CLAIM_VALUE = re.compile(r"[\x20-\x7e]{1,256}")


class RawRequest:
    """What a server received, before any check (the input of ``Gate.decide``).

    :param method: the request method as sent (``"GET"``; case kept: methods are
        case-sensitive, RFC 9110 §9.1).
    :param raw_path: the path as on the wire, without the query (ASGI ``raw_path``; it includes
        the ``root_path`` when the app is mounted under one).
    :param query_string: the bytes after ``?`` (ASGI ``query_string``), not decoded.
    :param raw_headers: ``(name, value)`` byte pairs in order, repeats kept, names in any case.
    :param root_path: the ASGI ``root_path`` (mount prefix / ``--root-path``), ``""`` for none.

    :attr:`headers` is the header block as ``lower-cased name → [values]`` (Latin-1 decoded,
    repeats kept in order), built once here.
    """

    __slots__ = ("headers", "method", "query_string", "raw_headers", "raw_path", "root_path")

    def __init__(self, method: str, raw_path: bytes, query_string: bytes = b"",
                 raw_headers: Sequence[tuple[bytes, bytes]] = (), root_path: str = "") -> None:
        self.method = method
        self.raw_path = raw_path
        self.query_string = query_string
        self.raw_headers = raw_headers
        self.root_path = root_path
        headers: dict[str, list[str]] = {}
        for raw_name, raw_value in raw_headers:
            headers.setdefault(raw_name.decode("latin-1").lower(), []).append(raw_value.decode("latin-1"))
        self.headers: Mapping[str, list[str]] = headers


def parse_query(raw: bytes) -> list[tuple[str, str]]:
    """The raw query string → decoded ``(name, value)`` pairs in order, blanks kept, ``+`` as a
    space (``application/x-www-form-urlencoded``, as the upstream frameworks read it).

    :param raw: the bytes after ``?`` (ASCII on the wire; percent-escapes decode as UTF-8).
    :raises BadRequestError: (400) ``bad_query``: over :data:`MAX_QUERY_BYTES` bytes, a raw
        non-ASCII byte, or an escape that is not UTF-8; ``too_many_parameters``: more than
        :data:`MAX_QUERY_PARAMETERS` fields.
    """
    if not raw:
        return []
    if len(raw) > MAX_QUERY_BYTES:
        raise BadRequestError("query string too long", reason="bad_query")
    if raw.count(b"&") >= MAX_QUERY_PARAMETERS:  # parse_qsl's own count (it would say ValueError)
        raise BadRequestError(f"more than {MAX_QUERY_PARAMETERS} query parameters", reason="too_many_parameters")
    try:
        return parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                         encoding="utf-8", errors="strict", max_num_fields=MAX_QUERY_PARAMETERS)
    except (UnicodeDecodeError, ValueError):
        raise BadRequestError("query string is malformed", reason="bad_query") from None


def check_request_framing(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Refuse request framing that two HTTP/1.1 parsers could read differently.

    :param headers: the request's ASGI headers (names in any case).
    :raises BadRequestError: (400, ``ambiguous_framing``) both ``Content-Length`` and
        ``Transfer-Encoding``; ``Content-Length`` repeated or not 1–15 ASCII digits;
        ``Transfer-Encoding`` repeated or anything but ``chunked`` (RFC 9112 §6.1, §6.3, §7).
    """
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if not lengths and not codings:
        return
    if lengths and codings:
        raise BadRequestError("both Content-Length and Transfer-Encoding", reason="ambiguous_framing")
    if len(lengths) > 1 or len(codings) > 1:
        raise BadRequestError("repeated framing header", reason="ambiguous_framing")
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        raise BadRequestError("Content-Length is not a number", reason="ambiguous_framing")
    if codings and codings[0].strip().lower() != b"chunked":
        raise BadRequestError("unsupported Transfer-Encoding", reason="ambiguous_framing")


def declares_body(headers: Mapping[str, list[str]]) -> bool:
    """Whether the header block announces a body: ``Transfer-Encoding``, or a
    ``Content-Length`` other than 0."""
    return "transfer-encoding" in headers or any(v.strip() not in ("", "0") for v in headers.get("content-length", ()))


def declared_body_length(headers: Mapping[str, list[str]]) -> int | None:
    """``Content-Length`` in bytes, ``None`` without one (call after
    :func:`check_request_framing`: then it is one value of 1–15 digits)."""
    lengths = headers.get("content-length")
    return int(lengths[0]) if lengths else None


def check_no_unexpected_body(method: str, headers: Mapping[str, list[str]]) -> None:
    """A ``GET`` or ``HEAD`` request carries no body: nothing governs it, so none is forwarded.

    :raises BadRequestError: (400, ``unexpected_body``) ``Transfer-Encoding`` or a
        ``Content-Length`` above 0 on ``GET``/``HEAD``.
    """
    if method in ("GET", "HEAD") and declares_body(headers):
        raise BadRequestError("a GET or HEAD request must not carry a body", reason="unexpected_body")


def app_segments(raw_path: bytes, root_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The normalised path, split into the mount prefix and the app-relative rest.

    Routes are app-relative: a mount prefix / ``--root-path`` (ASGI ``root_path``, which
    ``raw_path`` includes) is not part of them, as Starlette routes without it too. Each path
    is normalised once (:func:`~samtykke_gateway.policy.routing.normalize_path`); the app later
    gets exactly what was matched.

    :returns: ``(root segments, app segments)``, both decoded.
    :raises BadRequestError: (400, ``bad_path``) see ``normalize_path``.
    :raises NotFoundError: (404, ``no_route``) the path is not under ``root_path``.
    """
    segments = normalize_path(raw_path)
    root = normalize_path(root_path) if root_path else ()
    if segments[: len(root)] != root:
        raise NotFoundError("path is outside the application's root path", reason="no_route")
    return root, segments[len(root):]


def claim_header_value(value: str) -> bytes:
    """A claim value as an upstream header value.

    :param value: the verified claim (an org number, consent id, resource id, ...).
    :returns: its ASCII bytes.
    :raises InvalidTokenError: (401, ``unforwardable_claim``) empty, over 256 characters, or
        anything outside printable ASCII (CR, LF, NUL, non-ASCII): never forwarded, never
        silently dropped.
    """
    if _CLAIM_VALUE.fullmatch(value) is None:
        raise InvalidTokenError("a claim value cannot be forwarded", reason="unforwardable_claim")
    return value.encode("ascii")
