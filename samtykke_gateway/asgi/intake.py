"""The request side of one exchange: what arrived, and what the protected app receives.

* :class:`Intake` — per request: the raw facts as a
  :class:`~samtykke_gateway.policy.intake.RawRequest` (for
  :meth:`~samtykke_gateway.policy.decide.Gate.decide`), the request body when the decision read
  it (:meth:`Intake.read_body`, the decision's body reader), its replay to the app, and the
  scope the app sees: the canonical matched path, the effective query, the client's headers
  without the tokens, with the verified claims (:meth:`Intake.upstream_scope`), or, for an
  unmatched path under ``gateway.unmatched = "pass"``, without the tokens only
  (:meth:`Intake.passed_scope`).

The checks themselves (framing, query, path) are framework-free and live in
:mod:`samtykke_gateway.policy.intake`; this module only speaks ASGI.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlencode

from samtykke_gateway.asgi.headers import is_client_address_header, peer_trusted
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.exceptions import BadRequestError, ClientDisconnectedError
from samtykke_gateway.exceptions import RequestBodyTooLargeError
from samtykke_gateway.policy.decide import Decision, Grant
from samtykke_gateway.policy.intake import RawRequest, declares_body
from samtykke_gateway.policy.routing import encode_path

__all__ = ["CONSENT_SCOPE_KEY", "Intake", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: ``scope[CONSENT_SCOPE_KEY]``: the :class:`~samtykke_gateway.policy.decide.Grant` the app sees.
CONSENT_SCOPE_KEY = "samtykke.consent"

# Request headers never forwarded on scoped routes: the gateway must receive the whole current
# representation to scope it (RFC 9110 §13.1 conditionals, §14.2 Range), in a coding it decodes.
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since", b"if-range", b"if-match",
                          b"if-unmodified-since", b"range", b"accept-encoding"})
_GATEWAY_PREFIX = b"x-samtykke-"  # our claim headers: a client's own copies never pass
#: Request headers some servers and frameworks honour to change the method or the path after
#: the gateway matched and checked them: never forwarded.
_OVERRIDES = frozenset({b"x-original-url", b"x-rewrite-url", b"x-http-method-override", b"x-http-method",
                        b"x-method-override", b"x-forwarded-prefix", b"x-forwarded-path"})


@functools.lru_cache(maxsize=16)
def _dropped_upstream(consent_header: str, scoped: bool) -> frozenset[bytes]:
    """The client headers never forwarded to the app (before ``Connection``'s nominations):
    the tokens, the client's correlation id, the method/path overrides; on a scoped route
    also the conditionals, ``Range`` and ``Accept-Encoding``. Built once per consent header."""
    drop = {b"authorization", consent_header.encode(), b"x-correlation-id", *_OVERRIDES}
    if scoped:
        drop |= _CONDITIONAL
    drop -= {b"transfer-encoding", b"content-length"}
    return frozenset(drop)


def _dropped(name: bytes, drop: set[bytes] | frozenset[bytes]) -> bool:
    """Whether a client header is kept from the app: named in ``drop`` or ``X-Samtykke-*``,
    also spelt with ``_`` for ``-`` (CGI/WSGI-style servers read ``X_Samtykke_Consumer`` as
    ``HTTP_X_SAMTYKKE_CONSUMER``, the same as the gateway's own header)."""
    lname = name.lower()
    if b"_" in lname:
        lname = lname.replace(b"_", b"-")
    return lname in drop or lname.startswith(_GATEWAY_PREFIX)


class Intake:
    """One request as it arrived (per-request state; the middleware holds none).

    :param scope: the ASGI HTTP scope.
    :param receive: the server's ``receive``.
    :param config: the gateway's configuration (consent header, trusted proxies).

    :attr:`request` is the raw request for the decision. Its headers are a snapshot: uvicorn's
    parser appends HTTP trailers to the live ``scope["headers"]`` while the body is read; only
    the header block the gate checked may reach the app. :attr:`body` is the request body once
    the decision has read it (body-subject routes only), else ``None``.
    """

    __slots__ = ("body", "config", "receive", "request", "scope")

    def __init__(self, scope: Scope, receive: Receive, config: GatewayConfig) -> None:
        self.scope = scope
        self.receive = receive
        self.config = config
        self.body: bytes | None = None
        raw_path = scope.get("raw_path") or scope.get("path", "/").encode("utf-8")
        if isinstance(raw_path, bytes | bytearray):
            raw_path = bytes(raw_path).split(b"?", 1)[0]
        self.request = RawRequest(scope.get("method", ""), raw_path, scope.get("query_string", b""),
                                  tuple(scope.get("headers", ())), scope.get("root_path") or "")

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, at most ``limit`` bytes (the decision's
        :data:`~samtykke_gateway.policy.decide.BodyReader`; it checks ``Content-Length`` and the
        time taken). Kept in :attr:`body` for the app.

        :raises RequestBodyTooLargeError: (413) more than ``limit`` bytes (nothing more is read).
        :raises ClientDisconnectedError: the client disconnected before the body ended.
        :raises BadRequestError: (400, ``bad_request_body``) a message that is not
            ``http.request``.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "http.disconnect":
                raise ClientDisconnectedError("the client disconnected while sending the body")
            if kind != "http.request":
                raise BadRequestError("unexpected request message", reason="bad_request_body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestBodyTooLargeError("the request body is larger than this route accepts")
                chunks.append(bytes(chunk))
            if not message.get("more_body", False):
                break
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.body

    def body_unread(self, app_has_read: bool) -> bool:
        """Whether the request declared a body (``Content-Length`` above 0, or
        ``Transfer-Encoding``) that neither the gateway nor the app (``app_has_read``) is known
        to have read to its end."""
        if self.body is not None or app_has_read:
            return False
        return declares_body(self.request.headers)

    def app_receive(self) -> Receive:
        """``receive`` for the app: the checked body (if the decision read one) as one message,
        then the client's own messages (``http.disconnect``)."""
        body = self.body
        if body is None:
            return self.receive
        original = self.receive
        pending = True

        async def receive() -> Message:
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await original()

        return receive

    def _peer_trusted(self) -> bool:
        """Whether the connection's peer is in ``gateway.trusted_proxies``: only then do
        ``X-Forwarded-*``, ``X-Real-IP``, ``Via`` and the other client-address headers
        (:data:`~samtykke_gateway.asgi.headers.CLIENT_ADDRESS_HEADERS`) reach the app; the sidecar's
        proxy then sets its own."""
        return peer_trusted(self.scope.get("client"), self.config.trusted_proxies)

    def passed_scope(self, decision: Decision) -> Scope:
        """``unmatched = "pass"`` (middleware form only): the scope for a path no route names,
        with the canonical path, and without the tokens or any ``X-Samtykke-*`` header."""
        canonical = encode_path(decision.root_segments + decision.app_segments)
        drop = {b"authorization", self.config.consent_header.encode()}
        keep_addresses = self._peer_trusted()
        headers = [(k, v) for k, v in self.request.raw_headers
                   if not _dropped(k, drop) and (keep_addresses or not is_client_address_header(k))]
        return dict(self.scope, path=unquote(canonical), raw_path=canonical.encode("ascii"), headers=headers)

    def upstream_scope(self, decision: Decision, grant: Grant, correlation_id: str) -> Scope:
        """The scope the protected app sees: ``scope["samtykke.consent"]`` (the grant), the
        canonical matched path (under the mount prefix if any), the effective query, headers
        without the tokens, with the verified claims (``decision.claim_headers``); a read body
        is framed by its real ``Content-Length``."""
        scope = dict(self.scope)
        scope[CONSENT_SCOPE_KEY] = grant
        root = decision.root_segments
        full = encode_path(root + decision.app_segments) if root else grant.match.path
        scope["path"] = unquote(full) if "%" in full else full
        scope["raw_path"] = full.encode("ascii")
        scope["query_string"] = urlencode(grant.effective_query).encode("ascii")
        headers = self._upstream_headers(decision, grant, correlation_id)
        if self.body is not None:  # the body was read and checked: framed by its real length
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
            headers.append((b"content-length", str(len(self.body)).encode("ascii")))
        scope["headers"] = headers
        scope["samtykke.correlation_id"] = correlation_id
        if grant.rights_package is not None and "extensions" in scope:
            # the body must come as http.response.body messages, to be scoped
            scope["extensions"] = {k: v for k, v in scope["extensions"].items()
                                   if k not in ("http.response.pathsend", "http.response.zerocopysend")}
        return scope

    def _upstream_headers(self, decision: Decision, grant: Grant, correlation_id: str) -> list[tuple[bytes, bytes]]:
        """Client headers minus the tokens, the client's correlation id and any
        ``X-Samtykke-*`` (only the gateway sets those); on scoped routes also minus conditionals,
        ``Range`` and ``Accept-Encoding`` (replaced by the codings
        :func:`~samtykke_gateway.asgi.responder.decode_body` knows); plus the claims."""
        scoped = grant.rights_package is not None
        drop: set[bytes] | frozenset[bytes] = _dropped_upstream(self.config.consent_header, scoped)
        # ``Connection`` and what it nominates go first (RFC 9110 §7.6.1): a client's
        # ``Connection: x-samtykke-consumer`` must not nominate away the headers the gateway
        # adds below. (Transfer-Encoding stays for the proxy, which re-frames the body.)
        incoming = self.request.raw_headers
        if "connection" in self.request.headers:
            nominated = set(drop)
            for name, value in incoming:
                if name.lower() == b"connection":
                    nominated |= {b"connection"} | {t.strip().lower() for t in value.split(b",") if t.strip()}
            nominated.discard(b"transfer-encoding")
            nominated.discard(b"content-length")
            drop = nominated
        keep_addresses = self._peer_trusted()
        headers = [(k, v) for k, v in incoming
                   if (lk := k.lower()) not in drop and not lk.startswith(_GATEWAY_PREFIX)
                   and (b"_" not in lk or not _dropped(lk, drop))
                   and (keep_addresses or not is_client_address_header(lk))]
        if scoped:
            headers.append((b"accept-encoding", b"gzip, deflate, br"))
        headers.append((b"x-correlation-id", correlation_id.encode("ascii")))
        headers.extend(decision.claim_headers)
        return headers
