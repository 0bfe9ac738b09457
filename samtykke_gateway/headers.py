"""HTTP header rules shared by the middleware and the proxy (framework-free, bytes in ASGI form).

* :func:`strip_hop_by_hop` — RFC 9110 §7.6.1: ``Connection``, the headers it nominates, and the
  fixed hop-by-hop set never cross the gateway in either direction.
* :func:`check_request_framing` — RFC 9112 §6.1/§6.3: a request with both ``Content-Length``
  and ``Transfer-Encoding``, a repeated or non-numeric ``Content-Length``, or a transfer coding
  other than ``chunked`` is refused (400), so the gateway and the upstream can never disagree
  on where a body ends (request smuggling).
* :func:`claim_header_value` — a value copied from a verified claim into an upstream header
  must be printable ASCII without CR/LF (RFC 9110 §5.5), else the request is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .exceptions import BadRequestError, InvalidTokenError

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "check_request_framing",
    "claim_header_value",
    "strip_hop_by_hop",
]

Headers = list[tuple[bytes, bytes]]

#: RFC 9110 §7.6.1 plus the legacy names proxies still see (RFC 2068 ``Keep-Alive``,
#: ``Proxy-Connection``) and ``Trailer``/``TE`` (RFC 9110 §6.6.2, §10.1.4).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

_DIGITS = re.compile(rb"[0-9]{1,15}")
_CLAIM_VALUE = re.compile(r"[\x20-\x7e]{1,256}")


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop the hop-by-hop headers and every header nominated by ``Connection``.

    :param headers: ASGI-style ``(name, value)`` byte pairs, names in any case.
    :returns: a new list, order kept.
    """
    headers = list(headers)
    nominated: set[bytes] | None = None
    for name, value in headers:
        if name.lower() == b"connection":
            nominated = nominated or set()
            nominated.update(t.strip().lower() for t in value.split(b",") if t.strip())
    drop = HOP_BY_HOP | nominated if nominated else HOP_BY_HOP
    return [(n, v) for n, v in headers if n.lower() not in drop]


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
