"""Upstream forwarding for the sidecar (an ASGI app the middleware wraps).

HTTP/1.1 proxy semantics (RFC 9110 §7.6.1): hop-by-hop headers and every header nominated by
``Connection`` are dropped both ways; ``Host`` is rewritten for the upstream;
``X-Forwarded-For/-Proto/-Host`` are set by the gateway (a client's own values are kept and
extended only when the peer is a configured trusted proxy). Bodies stream in both
directions; the consent middleware decides whether to buffer (scoped routes) or not.

Upstream failures raise before the response starts, so the middleware can render and log
them: refused/unreachable → :class:`UpstreamError` (502), timeout →
:class:`UpstreamTimeoutError` (504).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from .exceptions import UpstreamError, UpstreamTimeoutError
from .headers import HOP_BY_HOP, strip_hop_by_hop

__all__ = ["HOP_BY_HOP", "UpstreamProxy", "strip_hop_by_hop"]

log = logging.getLogger("samtykke_gateway.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UpstreamProxy:
    """ASGI app forwarding every request to ``upstream_url``.

    :param upstream_url: ``http(s)://host[:port][/base]``; the request path is appended.
    :param client: the HTTP client (created, and closed by :meth:`aclose`, when omitted).
    :param timeout_seconds: read/write/pool timeout; ``connect_timeout_seconds`` for connect.
    :param trusted_proxies: peers whose ``X-Forwarded-*`` values are kept and extended.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 3.0,
        trusted_proxies: Sequence[Network] = (),
        max_connections: int = 256,
    ) -> None:
        self.base = httpx.URL(upstream_url)
        self._base_path = self.base.raw_path.rstrip(b"/")
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=connect_timeout_seconds),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
        )
        if self._own_client:  # forward exactly the client's headers: no defaults of httpx's own
            for name in ("accept", "accept-encoding", "user-agent"):
                del self.client.headers[name]
        self.trusted_proxies = tuple(trusted_proxies)
        host = self.base.host
        port = self.base.port
        self._host_header = (f"{host}:{port}" if port else host).encode("ascii")

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def _peer_trusted(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        if not client or not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)

    def _request_headers(self, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        incoming = strip_hop_by_hop(scope.get("headers", []))
        trusted = self._peer_trusted(scope)
        forwarded = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
        prior_for = b", ".join(v for n, v in incoming if n.lower() == b"x-forwarded-for")
        orig_host = next((v for n, v in incoming if n.lower() == b"host"), b"")
        out = [(n, v) for n, v in incoming if n.lower() not in forwarded and n.lower() != b"host"]
        if trusted:
            out += [(n, v) for n, v in incoming if n.lower() in (b"x-forwarded-proto", b"x-forwarded-host")]
        client = scope.get("client")
        peer = client[0].encode("ascii", "replace") if client else b"unknown"
        xff = prior_for + b", " + peer if trusted and prior_for else peer
        out.append((b"host", self._host_header))
        out.append((b"x-forwarded-for", xff))
        if not (trusted and any(n.lower() == b"x-forwarded-proto" for n, _ in out)):
            out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("ascii")))
        if orig_host and not (trusted and any(n.lower() == b"x-forwarded-host" for n, _ in out)):
            out.append((b"x-forwarded-host", orig_host))
        return out

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = self._base_path + raw_path + (b"?" + query if query else b"")
        url = self.base.copy_with(raw_path=target)
        method = scope["method"]
        headers = self._request_headers(scope)
        has_body = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in scope.get("headers", []))

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        request = self.client.build_request(method, url, headers=headers, content=body() if has_body else None)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("the data API did not answer in time", reason="upstream_timeout") from None
        except httpx.HTTPError as exc:
            log.warning("upstream request failed: %s", type(exc).__name__)
            raise UpstreamError("the data API is unreachable", reason="upstream_unreachable") from None
        try:
            out_headers = strip_hop_by_hop(response.headers.raw)
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            try:
                async for chunk in response.aiter_raw():
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TimeoutException:
                raise UpstreamTimeoutError("the data API stalled", reason="upstream_timeout") from None
            except httpx.HTTPError:
                raise UpstreamError("the data API broke off", reason="upstream_broken") from None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
