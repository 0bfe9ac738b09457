"""Route policy: path normalisation and route matching.

The path is normalised exactly once, before matching (RFC 3986 §5.2.4 dot-segment removal,
empty segments collapsed, percent-decoding per segment). An encoded ``/`` or ``\\`` inside a
segment, NUL, invalid UTF-8 or a ``..`` above the root is refused (400): such paths mean
different things to different servers. The upstream receives exactly the path that was
matched, re-encoded canonically (:func:`encode_path`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from samtykke_gateway.config import RouteConfig
from samtykke_gateway.exceptions import BadRequestError, MethodNotAllowedError

__all__ = ["RouteMatch", "Router", "encode_path", "normalize_path"]

_MAX_PATH_BYTES = 4096
_SAFE = "!$&'()*+,;=:@-._~"
# a decoded segment that needs no quoting (what quote(..., safe=_SAFE) leaves as is)
_PLAIN = re.compile(r"[A-Za-z0-9!$&'()*+,;=:@._~-]*")
# never inside a decoded segment: separators (an encoded / or \ means different things to
# different servers) and control characters
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def normalize_path(raw_path: bytes | str) -> tuple[str, ...]:
    """Raw request path (as on the wire, without query) → decoded segments.

    ``/a//b/./c/../d%41`` → ``("a", "b", "dA")``.

    :raises BadRequestError: (400, ``bad_path``) non-ASCII raw bytes, a ``%`` not followed by
        two hex digits, encoded ``/``/``\\``,
        control characters, invalid UTF-8 after decoding, ``..`` above the root, over 4 KiB.
    """
    if isinstance(raw_path, str):
        raw = raw_path
    else:
        if len(raw_path) > _MAX_PATH_BYTES:
            raise BadRequestError("path is too long", reason="bad_path")
        try:
            raw = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequestError("path is not ASCII", reason="bad_path") from None
    if len(raw) > _MAX_PATH_BYTES or not raw.startswith("/"):
        raise BadRequestError("path must be absolute", reason="bad_path")
    out: list[str] = []
    for seg in raw.split("/")[1:]:
        decoded = seg
        if "%" in seg:
            if _BAD_ESCAPE.search(seg):  # RFC 3986 §2.1: "%" starts a pct-encoded octet
                raise BadRequestError("path has an invalid percent-encoding", reason="bad_path")
            try:
                decoded = unquote(seg, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise BadRequestError("path is not valid UTF-8", reason="bad_path") from None
        if _FORBIDDEN.search(decoded):
            raise BadRequestError("path has an encoded separator or control character", reason="bad_path")
        if decoded in ("", "."):
            continue
        if decoded == "..":
            if not out:
                raise BadRequestError("path climbs above the root", reason="bad_path")
            out.pop()
            continue
        out.append(decoded)
    return tuple(out)


def encode_path(segments: Sequence[str]) -> str:
    """Decoded segments → canonical percent-encoded path (``/`` for none)."""
    return "/" + "/".join(s if _PLAIN.fullmatch(s) else quote(s, safe=_SAFE) for s in segments)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A matched route with its decoded path parameters and the canonical path."""

    route: RouteConfig
    params: dict[str, str]
    path: str


class Router:
    """Linear first-match router over the configured routes (a handful per data source)."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = tuple(routes)
        self._prefixes = tuple(dict.fromkeys(route.literal_prefix for route in self._routes))

    def protects(self, segments: Sequence[str]) -> bool:
        """Whether the decoded path ``segments`` lie under a route's literal prefix
        (:attr:`RouteConfig.literal_prefix <samtykke_gateway.config.RouteConfig.literal_prefix>`):
        ``/api/v1/studielan/x`` under ``/api/v1/studielan/{fnr}/saldo``'s, ``/api/v1/status`` not."""
        return any(tuple(segments[:len(prefix)]) == prefix for prefix in self._prefixes)

    def match(self, method: str, segments: Sequence[str]) -> RouteMatch | None:
        """:returns: the first route whose template and method match, else ``None``.

        :raises MethodNotAllowedError: (405) the path matches a route but the method does not.
        """
        decoded = "/" + "/".join(segments)
        allowed: set[str] = set()
        for route in self._routes:
            m = route.pattern.fullmatch(decoded)
            if m is None or any("/" in v for v in m.groupdict().values()):
                continue
            if method not in route.methods:
                allowed.update(route.methods)
                continue
            return RouteMatch(route, m.groupdict(), encode_path(segments))
        if allowed:
            raise MethodNotAllowedError("method not allowed on this route", allow=tuple(sorted(allowed)))
        return None
