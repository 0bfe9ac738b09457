"""Upstream forwarding for the sidecar: an ASGI app (the consent middleware wraps it) that sends
each request to the data API with aiohttp's client and streams the answer back.

HTTP/1.1 proxy semantics (RFC 9110 §7.6): hop-by-hop headers and every header nominated by
``Connection`` are dropped both ways (§7.6.1); ``Host`` is rewritten for the upstream (§7.2);
``X-Forwarded-For/-Proto/-Host`` are set by the gateway — a client's own values, and
``Forwarded``, are dropped unless the peer is a configured trusted proxy, whose values are kept
and extended. The client library adds no headers of its own (no ``User-Agent``,
``Accept-Encoding``: on unscoped routes the upstream must answer in a coding the *client*
asked for), never decompresses and never follows redirects. Bodies stream in both directions;
the consent middleware decides whether to buffer (scoped routes) or not.

The path is forwarded exactly as the middleware put it in ``scope["raw_path"]`` (the canonical
matched path, :func:`~samtykke_gateway.policy.encode_path`): no re-quoting, no normalisation.

Upstream failures before the response starts raise, so the middleware renders and logs them:
refused/unreachable/broken → :class:`UpstreamError` (502), connect or read timeout →
:class:`UpstreamTimeoutError` (504). aiohttp's exceptions never leave this module.

Transport choice (``BENCHMARKS.md``): aiohttp's client directly, not httpx. On the benchmark
machine a minimal Starlette proxy reached ~5× the requests/s over aiohttp than over httpx's
default transport and ~1.6× httpx over the httpx-aiohttp transport; the extra layer costs as much
as the whole gateway's checks. aiohttp is imported only here.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from .exceptions import UpstreamError, UpstreamTimeoutError
from .headers import HOP_BY_HOP, strip_hop_by_hop

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HOP_BY_HOP", "UpstreamProxy", "strip_hop_by_hop"]

log = logging.getLogger("samtykke_gateway.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"host"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# Headers aiohttp would otherwise invent (ClientRequest auto headers / payload defaults).
_NO_AUTO = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a core dependency
        raise RuntimeError("the sidecar proxy needs aiohttp: pip install aiohttp") from None
    return aiohttp


class UpstreamProxy:
    """ASGI app forwarding every request to ``upstream_url``.

    :param upstream_url: ``http(s)://host[:port][/base]``; the request path is appended to
        ``/base``.
    :param session: an ``aiohttp.ClientSession`` to use (its owner closes it); by default one is
        created on the first request (inside the server's event loop) and closed by
        :meth:`aclose`.
    :param timeout_seconds: most seconds to wait for the upstream's response head and between
        two body reads (504 when exceeded).
    :param connect_timeout_seconds: most seconds to get a connection (from the pool or new).
    :param trusted_proxies: peers whose ``X-Forwarded-*`` values are kept and extended.
    :param max_connections: pool size towards the upstream.
    :param keepalive_seconds: how long an idle pooled connection is reused; keep it below the
        upstream server's own idle timeout (uvicorn: 5 s) so a request is never sent on a
        connection the upstream is closing.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 3.0,
        trusted_proxies: Sequence[Network] = (),
        max_connections: int = 256,
        keepalive_seconds: float = 4.0,
    ) -> None:
        self._aiohttp = _import_aiohttp()
        from yarl import URL

        self._url_type = URL
        base = URL(upstream_url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("upstream_url must be http(s)://host[:port][/base]")
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self._host_header = base.raw_authority.encode("ascii")
        self._session = session
        self._own_session = session is None
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._timeout = self._aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_seconds, sock_read=timeout_seconds
        )
        self.trusted_proxies = tuple(trusted_proxies)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            aiohttp = self._aiohttp
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_seconds, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO,
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session this proxy created (idempotent)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _peer_trusted(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        if not client or not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)

    def _request_headers(self, scope: dict[str, Any]) -> list[tuple[str, str]]:
        """Upstream request headers as ``str`` pairs (latin-1, RFC 9110 §5.5 obs-text kept)."""
        incoming = strip_hop_by_hop(scope.get("headers", []))
        out = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in incoming if n.lower() not in _FORWARDED]
        trusted = self._peer_trusted(scope)
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        prior_for = ", ".join(v.decode("latin-1") for n, v in incoming if n.lower() == b"x-forwarded-for")
        proto = host = None
        if trusted:
            proto = next((v.decode("latin-1") for n, v in incoming if n.lower() == b"x-forwarded-proto"), None)
            host = next((v.decode("latin-1") for n, v in incoming if n.lower() == b"x-forwarded-host"), None)
        if host is None:
            host = next((v.decode("latin-1") for n, v in incoming if n.lower() == b"host"), None)
        out.append(("Host", self._host_header.decode("ascii")))
        out.append(("X-Forwarded-For", f"{prior_for}, {peer}" if trusted and prior_for else peer))
        out.append(("X-Forwarded-Proto", proto or scope.get("scheme", "http")))
        if host:
            out.append(("X-Forwarded-Host", host))
        return out

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        target = self._base_path + raw_path.decode("ascii") + ("?" + query.decode("ascii") if query else "")
        url = self._url_type(self._origin + target, encoded=True)
        method = scope["method"]
        headers = self._request_headers(scope)
        has_body = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in scope.get("headers", []))
        response = await self._open(method, url, headers, receive if has_body else None)
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": strip_hop_by_hop(response.raw_headers)})
            if method != "HEAD":
                try:
                    async for chunk in response.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    raise UpstreamTimeoutError("the data API stalled", reason="upstream_timeout") from None
                except self._aiohttp.ClientError:
                    raise UpstreamError("the data API broke off", reason="upstream_broken") from None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.release()

    async def _open(self, method: str, url: Any, headers: list[tuple[str, str]], receive: Any) -> Any:
        """Send the request; the response head is read. Retries once, for an idempotent
        request without a body, when a pooled connection turned out to be closed by the
        upstream before it answered (nothing was processed).

        :raises UpstreamError: (502) refused, reset, malformed answer.
        :raises UpstreamTimeoutError: (504) connect or response-head timeout.
        """
        aiohttp = self._aiohttp
        data = _body(receive) if receive is not None else None
        retry = data is None and method in _IDEMPOTENT
        while True:
            try:
                return await self._client().request(method, url, headers=headers, data=data, allow_redirects=False)
            except aiohttp.ServerDisconnectedError:
                if retry:
                    retry = False
                    continue
                raise UpstreamError("the data API closed the connection", reason="upstream_unreachable") from None
            except TimeoutError:
                raise UpstreamTimeoutError("the data API did not answer in time", reason="upstream_timeout") from None
            except aiohttp.ClientError as exc:
                log.warning("upstream request failed: %s", type(exc).__name__)
                raise UpstreamError("the data API is unreachable", reason="upstream_unreachable") from None

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
