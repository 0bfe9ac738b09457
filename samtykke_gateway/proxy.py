"""Upstream forwarding for the sidecar: an ASGI app (the consent middleware wraps it) that sends
each request to the data API over :class:`~samtykke_gateway.upstream.UpstreamPool` and streams
the answer back.

HTTP/1.1 proxy semantics (RFC 9110 §7.6): hop-by-hop headers and every header nominated by
``Connection`` are dropped both ways (§7.6.1), and ``Expect`` (the body is already flowing; an
interim 100 from the upstream is skipped); ``Host`` is rewritten for the upstream (§7.2);
``X-Forwarded-For/-Proto/-Host`` are set by the gateway — a client's own values, and
``Forwarded``, are dropped unless the peer is a configured trusted proxy, whose values are kept
and extended. No header is added on the gateway's own account (no ``User-Agent``, no
``Accept-Encoding``: on unscoped routes the upstream must answer in a coding the *client* asked
for); bodies are never decompressed here and redirects never followed. Bodies stream in both
directions; the consent middleware decides whether to buffer (scoped routes) or not.

The path is forwarded exactly as the middleware put it in ``scope["raw_path"]`` (the canonical
matched path, :func:`~samtykke_gateway.policy.encode_path`): no re-quoting, no normalisation.

Upstream failures before the response starts raise, so the middleware renders and logs them:
refused/unreachable/broken → :class:`UpstreamError` (502), connect or read timeout →
:class:`UpstreamTimeoutError` (504).

Transport choice (measured, ``BENCHMARKS.md``): a minimal no-check Starlette proxy was fastest
over aiohttp's client (≈1.6× httpx over the httpx-aiohttp transport, ≈5× httpx's default
transport), but in the sidecar aiohttp's per-request client work (request object, auto headers,
three writes) cost more than all the gateway's checks; the sidecar therefore speaks HTTP/1.1 to
its one upstream itself (:mod:`samtykke_gateway.upstream`, llhttp via httptools).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from .exceptions import UpstreamError
from .headers import HOP_BY_HOP, strip_hop_by_hop
from .upstream import StaleConnection, UpstreamPool, UpstreamResponse

__all__ = ["HOP_BY_HOP", "UpstreamProxy", "strip_hop_by_hop"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NOT_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"host",
                            b"expect"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamProxy:
    """ASGI app forwarding every request to ``upstream_url``.

    :param upstream_url: ``http(s)://host[:port][/base]``; the request path is appended to
        ``/base``.
    :param pool: the connection pool to use (its owner closes it); by default one is created
        and closed by :meth:`aclose`.
    :param timeout_seconds: most seconds to wait for the upstream's response head and between
        two body reads (504 when exceeded).
    :param connect_timeout_seconds: most seconds to get a connection (from the pool or new).
    :param trusted_proxies: peers whose ``X-Forwarded-*`` values are kept and extended.
    :param max_connections: pool size towards the upstream.
    :param keepalive_seconds: idle connections older than this are not reused (below the
        upstream's own idle timeout; uvicorn's is 5 s).
    :raises ValueError: ``upstream_url`` is not ``http(s)://host[:port][/base]``.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        pool: UpstreamPool | None = None,
        timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 3.0,
        trusted_proxies: Sequence[Network] = (),
        max_connections: int = 256,
        keepalive_seconds: float = 4.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("upstream_url must be http(s)://host[:port][/base]")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/").encode("ascii")
        self._host_header = parts.netloc.rsplit("@", 1)[-1].encode("ascii")
        self._own_pool = pool is None
        self.pool = pool or UpstreamPool(
            parts.hostname,
            port,
            tls=ssl.create_default_context() if parts.scheme == "https" else None,
            max_connections=max_connections,
            keepalive_seconds=keepalive_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=timeout_seconds,
        )
        self.trusted_proxies = tuple(trusted_proxies)

    async def aclose(self) -> None:
        """Close the pool this proxy created (idempotent)."""
        if self._own_pool:
            await self.pool.aclose()

    def _peer_trusted(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        if not client or not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)

    def _request_head(self, scope: dict[str, Any], *, chunked: bool) -> bytes:
        """Request line and header block for the upstream (RFC 9112 §3, §5)."""
        incoming = strip_hop_by_hop(scope.get("headers", []))
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        parts = [scope["method"].encode("ascii"), b" ", self._base_path, raw_path]
        if query:
            parts += (b"?", query)
        parts += (b" HTTP/1.1\r\nhost: ", self._host_header, b"\r\n")
        prior_for: list[bytes] = []
        client_host = proto = fwd_host = None
        for name, value in incoming:
            lname = name.lower()
            if lname not in _NOT_FORWARDED:
                parts += (name, b": ", value, b"\r\n")
            elif lname == b"x-forwarded-for":
                prior_for.append(value)
            elif lname == b"x-forwarded-proto":
                proto = value
            elif lname == b"x-forwarded-host":
                fwd_host = value
            elif lname == b"host":
                client_host = value
        client = scope.get("client")
        peer = client[0].encode("ascii", "replace") if client else b"unknown"
        if self._peer_trusted(scope):
            xff = b", ".join([*prior_for, peer])
        else:
            xff, proto, fwd_host = peer, None, None
        parts += (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: ",
                  proto or scope.get("scheme", "http").encode("ascii"), b"\r\n")
        if fwd_host or client_host:
            parts += (b"x-forwarded-host: ", fwd_host or client_host, b"\r\n")  # type: ignore[arg-type]
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")
        method = scope["method"]
        framing = {n.lower() for n, _ in scope.get("headers", ())} & {b"content-length", b"transfer-encoding"}
        chunked = b"transfer-encoding" in framing  # the server de-chunked it; we re-frame it
        head = self._request_head(scope, chunked=chunked)
        response = await self._open(head, method, receive if framing else None, chunked=chunked)
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": strip_hop_by_hop(response.headers)})
            more = True
            async for chunk in response.chunks():
                more = not response.at_end
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.release()

    async def _open(self, head: bytes, method: str, receive: Any, *, chunked: bool) -> UpstreamResponse:
        """Send the request and wait for the response head; retry once on a fresh connection
        when a pooled one was already closed and the request is idempotent without a body."""
        try:
            return await self.pool.request(head, method=method, body=_body(receive) if receive else None,
                                           chunked=chunked)
        except StaleConnection:
            if receive is not None or method not in _IDEMPOTENT:
                raise UpstreamError("the data API closed the connection", reason="upstream_unreachable") from None
        return await self.pool.request(head, method=method)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _body(receive: Any) -> AsyncIterator[bytes]:
    """The client's request body, chunk by chunk, as ASGI delivers it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
