"""Upstream forwarding for the sidecar: an ASGI app (the consent middleware wraps it) that sends
each request to the data API with aiohttp's client and streams the answer back.

HTTP/1.1 proxy semantics (RFC 9110 §7.6): hop-by-hop headers and every header nominated by
``Connection`` are dropped both ways (§7.6.1), and ``Expect`` (the body is already flowing; an
interim 1xx from the upstream is skipped by the client); ``Host`` is rewritten for the upstream
(§7.2); ``X-Forwarded-For/-Proto/-Host`` and ``X-Real-IP`` are set by the gateway — a client's
own values, ``Forwarded`` and every other header that names a client address
(:data:`~samtykke_gateway.asgi.headers.CLIENT_ADDRESS_HEADERS`: ``True-Client-IP``,
``CF-Connecting-IP``, ``Via``, ...) are dropped unless the peer is a configured trusted proxy,
whose ``X-Forwarded-*`` values are kept and extended and whose other address headers are kept
(``Forwarded`` is never passed on); ``X-Real-IP`` is the right-most ``X-Forwarded-For`` address
that is not a trusted proxy (the peer itself when it is not one). No header is
added on the gateway's own account (no ``User-Agent``, ``Accept``, ``Accept-Encoding``,
``Content-Type``, no cookies: on unscoped routes the upstream must answer in a coding the
*client* asked for); bodies are never decompressed here and redirects never followed; proxy
settings from the environment are ignored. Bodies stream in both directions (a request the
client sent chunked is re-framed chunked); the consent middleware decides whether to buffer
(scoped routes) or not. When the middleware's ``send`` raises :class:`OSError` (the client, or
the gateway, is done with the answer) the upstream response is closed, not read to its end.

The path is forwarded exactly as the middleware put it in ``scope["raw_path"]`` (the canonical
matched path, :func:`~samtykke_gateway.policy.routing.encode_path`): no re-quoting, no normalisation.

Upstream failures raise, so the middleware renders and logs them: refused / unreachable / TLS
failure / closed before answering → :class:`UpstreamError` (502, ``upstream_unreachable``);
reset or cut off mid-exchange → ``upstream_broken``; unparsable answer or a protocol switch →
``upstream_bad_response``; no connection, no response head, or no body data within its bound →
:class:`UpstreamTimeoutError` (504, ``upstream_timeout``). The gateway's own process or host out
of file descriptors (``EMFILE``/``ENFILE`` opening the upstream connection) is not an upstream
failure: :class:`UnavailableError` (503, ``gateway_out_of_file_descriptors``). aiohttp's
exceptions never leave this module, and aiohttp is imported only here.

Retries are aiohttp's (RFC 9112 §9.3.1.1): a request with an idempotent method whose connection
fails after it was obtained (typically a pooled connection the upstream had just closed) is
sent once more; a request body that has begun to be read from the client is never replayed, so
a request with a body fails instead (502).

Transport choice (``BENCHMARKS.md``): aiohttp's client directly. It beat httpx (default and
httpx-aiohttp transports) as a no-check proxy; a hand-rolled HTTP/1.1 client tried in its place
gained nothing measurable with distinct tokens per request (the realistic case), so the
library is used.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from samtykke_gateway.exceptions import ClientDisconnectedError, UnavailableError, UpstreamError, UpstreamTimeoutError
from samtykke_gateway.asgi.headers import HOP_BY_HOP, is_client_address_header, peer_trusted, strip_hop_by_hop

__all__ = ["HOP_BY_HOP", "UpstreamProxy", "strip_hop_by_hop"]

log = logging.getLogger("samtykke_gateway.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NOT_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"host",
                            b"expect", b"x-real-ip"})
# Headers aiohttp would otherwise add (ClientRequest defaults, payload Content-Type).
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# Bytes kept as they are in a forwarded query: printable ASCII (anything else is %-encoded).
_QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


class UpstreamProxy:
    """ASGI app forwarding every request to ``upstream_url``.

    :param upstream_url: ``http(s)://host[:port][/base]``; the request path is appended to
        ``/base``. ``https`` verifies the certificate against the system trust store.
    :param session: an ``aiohttp.ClientSession`` to use (its owner sets it up and closes it;
        without ``auto_decompress=False``, ``skip_auto_headers`` and a ``DummyCookieJar`` the
        rules above do not hold); by default one is created on the first request, inside the
        server's event loop, and closed by :meth:`aclose`.
    :param timeout_seconds: most seconds to wait for the upstream's response head (counted
        from the end of the request body) and between two body reads (504 when exceeded).
    :param connect_timeout_seconds: most seconds to get a connection: waiting for a free slot
        plus the TCP/TLS connect, also when a slot is free at once (504 when exceeded).
    :param deadline_seconds: most seconds for the whole exchange, from asking for a connection
        to the last body byte (aiohttp's ``total``): an upstream that trickles its body stays
        under ``timeout_seconds`` per read but not under this. Before the answer has started
        (scoped routes buffer it all) → 504; on a streamed answer the stream is cut.
    :param trusted_proxies: peers whose ``X-Forwarded-*`` values are kept and extended.
    :param max_connections: most connections open to the upstream at once.
    :param keepalive_seconds: an idle pooled connection is closed after this long; keep it
        below the upstream server's own idle timeout (uvicorn: 5 s).
    :raises ValueError: ``upstream_url`` is not ``http(s)://host[:port][/base]``.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 3.0,
        deadline_seconds: float | None = 60.0,
        trusted_proxies: Sequence[Network] = (),
        max_connections: int = 256,
        keepalive_seconds: float = 4.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("upstream_url must be http(s)://host[:port][/base]")
        authority = parts.netloc.rsplit("@", 1)[-1]  # credentials in the URL are never sent
        self._origin = f"{parts.scheme}://{authority}"
        self._base_path = parts.path.rstrip("/")
        self._host_header = authority
        self._session = session
        self._own_session = session is None
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._timeout = aiohttp.ClientTimeout(total=deadline_seconds, connect=connect_timeout_seconds,
                                              sock_connect=connect_timeout_seconds, sock_read=timeout_seconds)
        self.trusted_proxies = tuple(trusted_proxies)

    def _create_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_seconds)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the session this proxy created, if any (idempotent; a later request opens a
        new one)."""
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _peer_trusted(self, scope: dict[str, Any]) -> bool:
        return peer_trusted(scope.get("client"), self.trusted_proxies)

    def _real_ip(self, chain: list[str]) -> str:
        """The right-most address in ``chain`` (``X-Forwarded-For`` entries, the peer last) that
        is not a trusted proxy; an entry that is not an IP address ends the walk (it is taken as
        it is: RFC 7239 allows ``unknown`` and obfuscated identifiers)."""
        for entry in reversed(chain):
            try:
                addr = ipaddress.ip_address(entry.strip().strip("[]"))
            except ValueError:
                return entry.strip()
            if not any(addr in net for net in self.trusted_proxies):
                return entry.strip()
        return chain[0].strip()

    def _request_headers(self, scope: dict[str, Any]) -> list[tuple[str, str]]:
        """The upstream request's header fields, in order.

        Values are passed to aiohttp as ``str`` and written by it as UTF-8: a value that is
        valid UTF-8 (ASCII included) arrives byte for byte; other obs-text (RFC 9110 §5.5) is
        read as Latin-1 and so arrives UTF-8 encoded.
        """
        out = [("host", self._host_header)]
        prior_for: list[str] = []
        client_host = proto = fwd_host = None
        trusted = self._peer_trusted(scope)
        for name, value in strip_hop_by_hop(scope.get("headers", ())):
            lname = name.lower()
            text = _text(value)
            if lname not in _NOT_FORWARDED:
                if b"_" in lname and lname.replace(b"_", b"-") in _NOT_FORWARDED:
                    continue  # X_Forwarded_For: a CGI/WSGI-style upstream reads it as the real one
                if is_client_address_header(lname) and (not trusted or b"_" in lname):
                    continue  # True-Client-IP, Via, ...: only a trusted proxy may say these
                out.append((name.decode("latin-1"), text))
            elif lname == b"x-forwarded-for":
                prior_for.append(text)
            elif lname == b"x-forwarded-proto":
                proto = text
            elif lname == b"x-forwarded-host":
                fwd_host = text
            elif lname == b"host":
                client_host = text
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if trusted:
            chain = [entry for value in prior_for for entry in value.split(",") if entry.strip()]
            xff = ", ".join([*prior_for, peer])
            real_ip = self._real_ip([*chain, peer])
        else:
            xff, proto, fwd_host, real_ip = peer, None, None, peer
        out.append(("x-forwarded-for", xff))
        out.append(("x-real-ip", real_ip))
        out.append(("x-forwarded-proto", proto or scope.get("scheme", "http")))
        if fwd_host or client_host:
            out.append(("x-forwarded-host", fwd_host or client_host))  # type: ignore[arg-type]
        return out

    def _url(self, scope: dict[str, Any]) -> URL:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        target = self._base_path + raw_path.decode("latin-1")
        if query:
            target += "?" + (query.decode("ascii") if query.isascii() else quote(query, safe=_QUERY_SAFE))
        return URL(self._origin + target, encoded=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")
        has_body = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in scope.get("headers", ()))
        response = await self._open(scope["method"], self._url(scope), self._request_headers(scope),
                                    _body(receive) if has_body else None)
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": strip_hop_by_hop(response.raw_headers)})
            content = response.content
            while True:
                chunk = await _read(content)
                more = bool(chunk) and not content.at_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    break
        except BaseException:
            response.close()  # stop reading; the connection is not reused
            raise
        response.release()

    async def _open(self, method: str, url: URL, headers: list[tuple[str, str]],
                    body: AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:
        """Send the request; return once the response head has arrived.

        :raises UpstreamError: (502) refused, unreachable, TLS failure, closed or reset before
            answering, malformed answer, protocol switch.
        :raises UpstreamTimeoutError: (504) no connection or no response head in time.
        :raises UnavailableError: (503, ``gateway_out_of_file_descriptors``) no socket could be
            opened: this process (``EMFILE``) or the host (``ENFILE``) is out of file descriptors.
        """
        if self._session is None:
            self._session = self._create_session()
        try:
            try:
                response = await self._session.request(method, url, headers=headers, data=body,
                                                       allow_redirects=False)
            except (aiohttp.ClientError, OSError) as exc:
                if _body_cut(exc):  # aiohttp stopped without the final chunk: the upstream sees a cut
                    raise ClientDisconnectedError("the client disconnected while sending the body") from None
                if (code := _out_of_fds(exc)) is not None:
                    log.error("no file descriptor for an upstream connection (%s)", errno.errorcode[code])
                    raise UnavailableError("the gateway is out of file descriptors",
                                           reason="gateway_out_of_file_descriptors") from None
                raise
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutError subclasses
            raise UpstreamTimeoutError("the data API did not answer in time", reason="upstream_timeout") from None
        except aiohttp.ClientResponseError as exc:
            raise _failure(exc, "malformed response from the data API", "upstream_bad_response") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise _failure(exc, "the data API is unreachable", "upstream_unreachable") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _failure(exc, "the data API broke off", "upstream_broken") from None
        if response.status == 101:
            response.close()
            raise UpstreamError("the data API switched protocols", reason="upstream_bad_response")
        return response

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _failure(exc: BaseException, detail: str, reason: str) -> UpstreamError:
    # The exception's text names the upstream URL (with a person id in the path): type only.
    log.debug("upstream request failed: %s", type(exc).__name__)
    return UpstreamError(detail, reason=reason)


async def _read(content: aiohttp.StreamReader) -> bytes:
    """The next part of the response body (``b""`` at its end).

    :raises UpstreamTimeoutError: (504) no data for ``timeout_seconds``.
    :raises UpstreamError: (502, ``upstream_broken``) cut off, or a malformed body framing.
    """
    try:
        return await content.readany()
    except TimeoutError:
        raise UpstreamTimeoutError("the data API stalled", reason="upstream_timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _failure(exc, "the data API broke off", "upstream_broken") from None


_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def _out_of_fds(exc: BaseException) -> int | None:
    """``EMFILE``/``ENFILE`` when ``exc`` (or what it wraps: aiohttp keeps the ``OSError`` as
    ``os_error`` and as the cause) says no file descriptor was left, else ``None``."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        for candidate in (seen, getattr(seen, "os_error", None)):
            code = getattr(candidate, "errno", None)
            if isinstance(candidate, OSError) and code in _FD_ERRNOS:
                return int(code)
        seen = seen.__cause__ or seen.__context__
    return None


class _BodyCut(Exception):
    """The client left before its request body ended (raised into aiohttp's body writer)."""


def _body_cut(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # aiohttp wraps the body iterator's exception (``__cause__``)
        if seen is None:
            return False
        if isinstance(seen, _BodyCut):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _body(receive: Any) -> AsyncIterator[bytes]:
    """The client's request body, chunk by chunk, as ASGI delivers it.

    :raises _BodyCut: the client disconnected before the body ended; aiohttp then closes the
        upstream connection without the final chunk (a chunked body) or short of its
        ``Content-Length``, so the upstream never sees a complete request.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _BodyCut
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
