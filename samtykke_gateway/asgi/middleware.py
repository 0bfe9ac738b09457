"""ASGI 3 adapter: the enforcement path shared by the middleware and the sidecar.

``app.add_middleware(ConsentMiddleware, config=load_config("config/x.toml"))`` on any Starlette
or FastAPI app. Per request (an :class:`_Exchange` holds all per-request state):

1. framing (:func:`~samtykke_gateway.asgi.headers.check_request_framing`, RFC 9112 §6) and path
   normalisation, once (:func:`~samtykke_gateway.policy.routing.normalize_path`), then route match
   (unmatched → 404 unless ``gateway.unmatched = "pass"``; passed requests also get the
   canonical path);
2. on a route whose subject is a JSON body field, the whole request body is read first
   (bounded by ``gateway.max_request_body_bytes``, also by a declared ``Content-Length``: 413;
   a client gone while sending: no forward, record written) and handed to the gate; the app
   then receives exactly those bytes, replayed, with a ``Content-Length`` that matches them.
   Other routes never touch the body: it streams to the app;
   :meth:`Gate.authorize` (tokens → policy → binding); the verified :class:`Grant` is put in
   ``scope["samtykke.consent"]``, the canonical matched path / effective query into the scope,
   the tokens and any client ``X-Samtykke-*`` removed and the verified claims added as headers
   (validated first: a claim unfit for a header is refused, 401);
3. the wrapped app answers; on scoped routes the body is buffered (bounded by
   ``max_body_bytes``, also by a declared ``Content-Length``) and handed to
   :func:`~samtykke_gateway.asgi.responder.scoped_release` (decode, scope, re-label; generic body for
   upstream errors; 502 for anything unscopable); unscoped routes stream through with only the
   hop-by-hop headers removed;
4. the disclosure record is appended durably **before** the first body byte leaves; if the
   store cannot take it the client gets 503 and nothing else (fail closed). A streamed
   (unscoped) answer cannot be counted before it leaves, so its end gets a second record with
   the same correlation id (reason ``stream_end``, or ``stream_cut`` when the upstream, the
   app or the client broke it off, with the cause in ``detail``) carrying the byte count and
   SHA-256 of what was handed to the server; a cut stream ends without its last chunk (the
   client sees it incomplete), and no traceback is logged. Once the gateway has
   answered by itself, the app's ``send`` raises :class:`OSError` (ASGI's "client gone"), so
   the app stops producing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from samtykke_gateway.audit.guard import UNAVAILABLE_DETAIL
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.exceptions import RequestBodyTimeoutError, RequestBodyTooLargeError
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.asgi.error_bodies import render_error
from samtykke_gateway.exceptions import (
    AuditUnavailableError,
    BadRequestError,
    ClientDisconnectedError,
    GatewayError,
    NotFoundError,
    UnavailableError,
    UpstreamError,
)
from samtykke_gateway.correlation import accept_correlation_id, new_id
from samtykke_gateway.policy.decide import Grant, RequestFacts, bearer_token, params_as_dict
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.asgi.headers import check_request_framing, claim_header_value, is_client_address_header, peer_trusted
from samtykke_gateway.policy.routing import encode_path, normalize_path
from samtykke_gateway.asgi.responder import Release, declared_length, scoped_release, streaming_headers

__all__ = ["CONSENT_SCOPE_KEY", "ConsentMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONSENT_SCOPE_KEY = "samtykke.consent"
log = logging.getLogger("samtykke_gateway")

# Request headers never forwarded on scoped routes: the gateway must receive the whole current
# representation to scope it (RFC 9110 §13.1 conditionals, §14.2 Range), in a coding it decodes.
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since", b"if-range", b"if-match",
                          b"if-unmodified-since", b"range", b"accept-encoding"})
_GATEWAY_PREFIX = b"x-samtykke-"  # our claim headers: a client's own copies never pass
#: Request headers some servers and frameworks honour to change the method or the path after
#: the gateway matched and checked them: never forwarded.
_OVERRIDES = frozenset({b"x-original-url", b"x-rewrite-url", b"x-http-method-override", b"x-http-method",
                        b"x-method-override", b"x-forwarded-prefix", b"x-forwarded-path"})
_MAX_QUERY_BYTES = 8192
#: Most query parameters (``&``-separated fields, empty ones included) in one request.
MAX_QUERY_PARAMETERS = 100
#: cancel_on_disconnect: seconds the app may work before the disconnect watch starts.
_WATCH_DELAY = 1.0


def _dropped(name: bytes, drop: set[bytes] | frozenset[bytes]) -> bool:
    """Whether a client header is kept from the app: named in ``drop`` or ``X-Samtykke-*``,
    also spelt with ``_`` for ``-`` (CGI/WSGI-style servers read ``X_Samtykke_Consumer`` as
    ``HTTP_X_SAMTYKKE_CONSUMER``, the same as the gateway's own header)."""
    lname = name.lower()
    if b"_" in lname:
        lname = lname.replace(b"_", b"-")
    return lname in drop or lname.startswith(_GATEWAY_PREFIX)


def _utc_now() -> str:
    """UTC now as ``2026-11-29T11:09:55.123456Z`` (isoformat: a third of strftime's cost)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class ConsentMiddleware:
    """Consent enforcement for any ASGI 3 app (Starlette, FastAPI, or the sidecar proxy).

    :param app: the protected ASGI app.
    :param config: validated config (``load_config(...)``); or pass a ready ``gateway``.
    :param gateway: an existing :class:`Gateway` (its owner starts and closes it).
    :param cancel_on_disconnect: when the client disconnects while the app is still working on
        the answer (watched from one second after the app has had the whole request body, and
        from the start of a streamed answer), cancel the app's work: the record
        says ``client_disconnected`` (499), nothing counts as released (a one-time consent is
        not spent). The sidecar sets it for its upstream proxy, which then closes the upstream
        request; off by default, because an in-process app may not expect to be cancelled.
    The verified consent is available to the app as ``scope["samtykke.consent"]``
    (a :class:`~samtykke_gateway.policy.decide.Grant`).
    """

    def __init__(self, app: ASGIApp, *, config: GatewayConfig | None = None, gateway: Gateway | None = None,
                 cancel_on_disconnect: bool = False) -> None:
        if (config is None) == (gateway is None):
            raise TypeError("pass exactly one of config= and gateway=")
        self.app = app
        self.cancel_on_disconnect = cancel_on_disconnect
        self._own_gateway = gateway is None
        self.gateway = gateway or Gateway(config)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await _Exchange(self.gateway, self.app, scope, receive, send, self.cancel_on_disconnect).run()
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:  # unknown scope types are refused, never passed through (fail closed)
            raise RuntimeError(f"unsupported ASGI scope type {kind!r}")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._own_gateway:
                await gateway.start()
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._own_gateway:
                await gateway.close()
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)


class _Exchange:
    """One request/response through the gate (per-request state lives here, never on the
    middleware)."""

    def __init__(self, gateway: Gateway, app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                 cancel_on_disconnect: bool = False) -> None:
        self.gateway = gateway
        self.cancel_on_disconnect = cancel_on_disconnect
        self.config: GatewayConfig = gateway.config
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started_at = time.perf_counter()
        self.grant: Grant | None = None
        #: the matched route's own error codes (``[routes.error_codes]``), once matched
        self.error_codes: Mapping[str, str] = {}
        # A snapshot: uvicorn's parser appends HTTP trailers to the live ``scope["headers"]``
        # while the body is read; only the header block the gate checked may reach the app.
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = tuple(scope.get("headers", ()))
        self.headers: dict[str, list[str]] = {}
        for raw_name, raw_value in self.raw_headers:
            name = raw_name.decode("latin-1").lower()
            self.headers.setdefault(name, []).append(raw_value.decode("latin-1"))
        supplied = self.headers.get("x-correlation-id", [""])[0]
        self.correlation_id = accept_correlation_id(supplied) or new_id()
        self.record = DisclosureRecord(
            time=_utc_now(),
            correlation_id=self.correlation_id,
            decision="deny",
            reason="",
            status=0,
            method=scope.get("method", ""),
            path=scope.get("path", "")[:512],
        )
        # response state
        self.response_started = False
        self.start_message: Message | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.failure: GatewayError | None = None
        self.gate_seconds = 0.0
        self.released = False
        self.forward_started = 0.0
        self.root_segments: tuple[str, ...] = ()
        self.app_segments: tuple[str, ...] = ()
        self.body: bytes | None = None  # read only on body-subject routes
        # streamed (unscoped) answers: what has been handed to the server so far
        self.stream_open = False
        self.stream_bytes = 0
        self.stream_hash: Any = None  # hashlib sha256 object while the stream is open
        self.request_body_done = False  # the app has had the whole request body (see _watch_disconnect)
        self.client_gone = False
        self.watcher: asyncio.Task[None] | None = None
        self.watch_timer: asyncio.TimerHandle | None = None
        self.stashed: list[Message] = []  # request messages the watcher received for the app
        self.audit_trial = False  # this request may write while the AuditGuard is still down
        # cancel_on_disconnect: the task to cancel, only while control is inside the app
        self.app_task: asyncio.Task[Any] | None = None
        self.in_app = False
        self.cancelled_for_disconnect = False

    # ------------------------------------------------------------------ request side
    async def run(self) -> None:
        try:
            await self.gateway.ensure_started()
            query = self._query()
            facts = RequestFacts(method=self.record.method, query=query, headers=self.headers)
            self.record.requested_params = params_as_dict(query)
            check_request_framing(self.raw_headers)
            if self.record.method in ("GET", "HEAD") and (
                "transfer-encoding" in self.headers
                or any(v.strip() not in ("", "0") for v in self.headers.get("content-length", []))
            ):  # nothing governs a body here, so none is forwarded
                raise BadRequestError("a GET or HEAD request must not carry a body", reason="unexpected_body")
            raw_path = self.scope.get("raw_path") or self.scope.get("path", "/").encode("utf-8")
            if isinstance(raw_path, bytes | bytearray):
                raw_path = bytes(raw_path).split(b"?", 1)[0]
            segments = normalize_path(raw_path)  # once; the app gets exactly what was matched
            # Routes are app-relative: a mount prefix / --root-path (ASGI ``root_path``, which
            # ``raw_path`` includes) is not part of them, as Starlette routes without it too.
            root = self.scope.get("root_path") or ""
            self.root_segments = normalize_path(root) if root else ()
            if segments[: len(self.root_segments)] != self.root_segments:
                raise NotFoundError("path is outside the application's root path", reason="no_route")
            segments = self.app_segments = segments[len(self.root_segments):]
            match = self.gateway.router.match(self.record.method, segments)
            if match is None:
                if self.config.unmatched == "pass":
                    await self._pass(segments)
                    return
                raise NotFoundError("no such route", reason="no_route")
            self.record.path = match.path
            self.record.route = match.route.name
            self.error_codes = match.route.error_codes
            if match.route.subject.source == "body":
                # the access token first: an unauthenticated caller must not make the gateway
                # read (or, with Expect: 100-continue, ask for) a body; the gate's own check
                # below is then a cache hit
                await self.gateway.gate.maskinporten(bearer_token(self.headers))
                self.body = await self._read_body()
                facts = RequestFacts(method=facts.method, query=query, headers=self.headers, body=self.body)
            self.grant = await self.gateway.gate.authorize(facts, match, self.record)
            self.gate_seconds = time.perf_counter() - self.started_at
            upstream_scope = self._upstream_scope(self.grant)
            if self.gateway.audit_guard.down:  # known down: nothing is forwarded (no record possible)
                await self.gateway.audit_guard.check()
                self.audit_trial = True  # the probe passed: this request is the guard's trial
            await self.gateway.state.before_forward(self.grant)
        except GatewayError as exc:
            self.gate_seconds = time.perf_counter() - self.started_at
            await self._deny(exc)
            return
        except Exception as exc:  # a bug in our own code: fail closed, no traceback to the client
            # class and location only: an exception's text may quote a header or token
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
            log.error("unexpected error while deciding: %s at %s (correlation_id=%s)",
                      type(exc).__name__, where, self.correlation_id)
            # the gateway cannot decide: 503 (docs/protocol.md §4), never a 500 that looks like the data API's
            await self._deny(UnavailableError("the gateway could not decide", reason="internal_error"))
            return
        await self._forward(upstream_scope)

    async def _pass(self, segments: tuple[str, ...]) -> None:
        """``unmatched = "pass"`` (middleware form only): the app answers a path no route names,
        with the canonical path, and without the tokens or any ``X-Samtykke-*`` header."""
        canonical = encode_path(self.root_segments + segments)
        drop = {b"authorization", self.config.consent_header.encode()}
        keep_addresses = self._peer_trusted()
        headers = [(k, v) for k, v in self.raw_headers
                   if not _dropped(k, drop) and (keep_addresses or not is_client_address_header(k))]
        passed = dict(self.scope, path=unquote(canonical), raw_path=canonical.encode("ascii"), headers=headers)
        await self.app(passed, self.receive, self.send)

    async def _read_body(self) -> bytes:
        """The whole request body, for a route whose subject is in it.

        :raises RequestBodyTooLargeError: (413) ``Content-Length`` or the bytes received exceed
            ``max_request_body_bytes`` (nothing more is read).
        :raises BadRequestError: (400, ``ambiguous_framing``) fewer or more bytes than
            ``Content-Length`` said.
        :raises ClientDisconnectedError: the client disconnected before the body ended.
        :raises RequestBodyTimeoutError: (408) the body took longer than
            ``request_body_timeout_seconds``.
        """
        try:
            async with asyncio.timeout(self.config.request_body_timeout_seconds):
                return await self._receive_body()
        except TimeoutError:
            raise RequestBodyTimeoutError("the request body did not arrive in time") from None

    async def _receive_body(self) -> bytes:
        limit = self.config.max_request_body_bytes
        lengths = self.headers.get("content-length")
        declared = int(lengths[0]) if lengths else None  # framing checked: one 1-15 digit value
        if declared is not None and declared > limit:
            raise RequestBodyTooLargeError("the request body is larger than this route accepts")
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
        if declared is not None and size != declared:
            raise BadRequestError("the request body does not match Content-Length", reason="ambiguous_framing")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _tracking_receive(self, inner: Receive) -> Receive:
        """``inner``, noting when the app has had the last request body message."""

        async def receive() -> Message:
            message = self.stashed.pop(0) if self.stashed else await inner()
            if not self.request_body_done and (
                message.get("type") != "http.request" or not message.get("more_body", False)
            ):
                self.request_body_done = True
                if self.cancel_on_disconnect and message.get("type") == "http.request":
                    self._watch_later()
            return message

        return receive

    def _start_watching(self) -> None:
        if self.watch_timer is not None:  # (harmless when called from the timer itself)
            self.watch_timer.cancel()
            self.watch_timer = None
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())

    def _watch_later(self) -> None:
        """Start the disconnect watch if the app is still working after ``_WATCH_DELAY``
        seconds: most answers come sooner, and a timer costs a fraction of a task (measured:
        a watcher task on every request cost the sidecar ~5 % of its requests/s, and still
        ~6 % after 50 ms, because at saturation many answers take longer than that)."""
        if self.watcher is None and self.watch_timer is None:
            self.watch_timer = asyncio.get_running_loop().call_later(_WATCH_DELAY, self._start_watching)

    async def _client_is_gone(self) -> bool:
        """After the app has finished (no body reads can follow): has the client disconnected?
        Asks the server once, waiting at most 50 ms (used only on failure paths)."""
        if self.client_gone:
            return True
        try:
            message = await asyncio.wait_for(self.receive(), 0.05)
        except (TimeoutError, Exception):  # noqa: BLE001 - a server without an answer: not known gone
            return False
        if message.get("type") == "http.disconnect":
            self.client_gone = True
        return self.client_gone

    async def _client_left(self) -> None:
        """After cancelling the app because the client left: record what happened."""
        if self.stream_open:
            await self._end_stream("client_disconnected")
        elif not self.response_started and self.failure is None:
            if self.start_message is None:
                self.gateway.observer.upstream(time.perf_counter() - self.forward_started, status=None)
            await self._deny(ClientDisconnectedError("the client disconnected before the answer"),
                             after_grant=True)

    async def _watch_disconnect(self) -> None:
        """While a streamed answer is open: wait for the client's ``http.disconnect``, so the
        next part is refused with :class:`OSError` (ASGI's "client gone") and the app — the
        sidecar's upstream client — stops producing, instead of an ASGI server such as uvicorn
        silently dropping parts nobody receives. Started once the app has had (or, without a
        body, could have had) the whole request body; a request message it receives all the
        same (an app that reads its empty body late) is kept for the app, in order."""
        try:
            for _ in range(4):  # a server's receive blocks until the client goes; never spin
                message = await self.receive()
                if message.get("type") != "http.disconnect":
                    self.stashed.append(message)  # the app's, not ours
                    continue
                self.client_gone = True
                task = self.app_task
                if self.in_app and task is not None and not task.done():
                    self.cancelled_for_disconnect = True
                    task.cancel()
                return
        except Exception as exc:  # noqa: BLE001 - a watcher only: the stream goes on unwatched
            log.debug("disconnect watch ended: %s", type(exc).__name__)

    def _stop_watching(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    def _replay_receive(self, body: bytes) -> Receive:
        """``receive`` for the app: the checked body as one message, then the client's own
        messages (``http.disconnect``)."""
        original = self.receive
        pending = True

        async def receive() -> Message:
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await original()

        return receive

    def _query(self) -> list[tuple[str, str]]:
        raw = self.scope.get("query_string", b"")
        if not raw:
            return []
        if len(raw) > _MAX_QUERY_BYTES:
            raise BadRequestError("query string too long", reason="bad_query")
        if raw.count(b"&") >= MAX_QUERY_PARAMETERS:  # parse_qsl's own count (it would say ValueError)
            raise BadRequestError(f"more than {MAX_QUERY_PARAMETERS} query parameters",
                                  reason="too_many_parameters")
        try:
            return parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                             encoding="utf-8", errors="strict", max_num_fields=MAX_QUERY_PARAMETERS)
        except (UnicodeDecodeError, ValueError):
            raise BadRequestError("query string is malformed", reason="bad_query") from None

    def _upstream_scope(self, grant: Grant) -> Scope:
        """The scope the protected app sees: canonical matched path, effective query, headers
        without the tokens, with the verified claims.

        :raises InvalidTokenError: (401) a claim value is not fit for a header.
        """
        scope = dict(self.scope)
        scope[CONSENT_SCOPE_KEY] = grant
        # the matched route's canonical path, under the mount prefix if any
        full = encode_path(self.root_segments + self.app_segments) if self.root_segments else grant.match.path
        scope["path"] = unquote(full) if "%" in full else full
        scope["raw_path"] = full.encode("ascii")
        scope["query_string"] = urlencode(grant.effective_query).encode("ascii")
        headers = self._upstream_headers(grant)
        if self.body is not None:  # the body was read and checked: framed by its real length
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
            headers.append((b"content-length", str(len(self.body)).encode("ascii")))
        scope["headers"] = headers
        scope["samtykke.correlation_id"] = self.correlation_id
        if grant.rights_package is not None and "extensions" in scope:
            # the body must come as http.response.body messages, to be scoped
            scope["extensions"] = {k: v for k, v in scope["extensions"].items()
                                   if k not in ("http.response.pathsend", "http.response.zerocopysend")}
        return scope

    async def _forward(self, scope: Scope) -> None:
        grant = self.grant
        if grant is None:  # set by run() just before; never assert (gone under -O)
            raise RuntimeError("forward without a grant")
        self.forward_started = time.perf_counter()
        try:
            await self._call_app(scope)
        finally:
            try:
                await self.gateway.state.after_response(grant, released=self.released)
            except GatewayError as exc:  # the answer has left; the state backend logs its own failure
                log.warning("consent state update failed after response: %s", exc.reason)

    async def _call_app(self, scope: Scope) -> None:
        receive = self.receive if self.body is None else self._replay_receive(self.body)
        if self.cancel_on_disconnect or (self.grant is not None and self.grant.rights_package is None):
            # may stream, or may be cancelled: know when the app has had the whole body
            framing = self.headers.get("content-length", ["0"]) != ["0"] or "transfer-encoding" in self.headers
            self.request_body_done = self.body is None and not framing
            receive = self._tracking_receive(receive)
            if self.cancel_on_disconnect:
                self.app_task = asyncio.current_task()
                if self.request_body_done:
                    self._watch_later()
        try:
            self.in_app = True
            try:
                await self.app(scope, receive, self._send_from_app)
            finally:
                self.in_app = False
        except _Abandoned:
            return
        except GatewayError as exc:
            if self.failure is not None:
                return  # already answered; this is the app stopping
            if self.start_message is None:
                self.gateway.observer.upstream(time.perf_counter() - self.forward_started, status=None)
            if not self.response_started:
                await self._deny(exc, after_grant=True)
                return
            if self.stream_open:
                await self._end_stream(exc.reason)
                return
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.cancelled_for_disconnect and task is not None and task.uncancel() == 0:
                await self._client_left()  # our own cancel (the client left), not the server's
                return
            if self.stream_open:  # server shutting down mid-stream: still say what left
                await asyncio.shield(self._end_stream("cancelled"))
            raise
        except Exception as exc:
            if self.failure is not None:
                log.debug("protected app stopped after the gateway answered: %s", type(exc).__name__)
                return
            if self.client_gone and isinstance(exc, OSError):
                await self._client_left()
                return
            if not self.response_started:
                if await self._client_is_gone():  # e.g. Starlette's ClientDisconnect reading the body
                    await self._client_left()
                    return
                # the class only: an app's exception text or traceback may quote personal data
                log.error("protected app failed: %s (correlation_id=%s)", type(exc).__name__, self.correlation_id)
                await self._deny(UpstreamError("the data API failed", reason="upstream_error"), after_grant=True)
                return
            if self.stream_open:
                if isinstance(exc, OSError) or self.client_gone:  # send failed: the client is gone
                    await self._end_stream("client_disconnected")
                    return
                log.error("protected app failed mid-stream: %s (correlation_id=%s)", type(exc).__name__,
                          self.correlation_id)
                await self._end_stream("upstream_error")
                return
            raise
        finally:
            self._stop_watching()
        if self.stream_open:  # the app returned without finishing its answer
            await self._end_stream("client_disconnected" if await self._client_is_gone() else "upstream_error")
        elif not self.response_started and self.failure is None:
            # the app returned without a response: often its own reaction to a client that left
            if await self._client_is_gone():
                await self._client_left()
            else:
                await self._deny(UpstreamError("the data API gave no response", reason="upstream_error"),
                                 after_grant=True)

    def _upstream_headers(self, grant: Grant) -> list[tuple[bytes, bytes]]:
        """Client headers minus the tokens, the client's correlation id and any
        ``X-Samtykke-*`` (only the gateway sets those); on scoped routes also minus conditionals,
        ``Range`` and ``Accept-Encoding`` (replaced by the codings :func:`decode_body` knows).

        :raises InvalidTokenError: (401, ``unforwardable_claim``) a claim is not printable ASCII.
        """
        drop = {b"authorization", self.config.consent_header.encode(), b"x-correlation-id", *_OVERRIDES}
        scoped = grant.rights_package is not None
        if scoped:
            drop |= _CONDITIONAL
        # ``Connection`` and what it nominates go first (RFC 9110 §7.6.1): a client's
        # ``Connection: x-samtykke-consumer`` must not nominate away the headers the gateway
        # adds below. (Transfer-Encoding stays for the proxy, which re-frames the body.)
        incoming = self.raw_headers
        for name, value in incoming:
            if name.lower() == b"connection":
                drop |= {b"connection"} | {t.strip().lower() for t in value.split(b",") if t.strip()}
        drop.discard(b"transfer-encoding")
        drop.discard(b"content-length")
        keep_addresses = self._peer_trusted()
        headers = [(k, v) for k, v in incoming
                   if (lk := k.lower()) not in drop and not lk.startswith(_GATEWAY_PREFIX)
                   and (b"_" not in lk or not _dropped(lk, drop))
                   and (keep_addresses or not is_client_address_header(lk))]
        if scoped:
            headers.append((b"accept-encoding", b"gzip, deflate, br"))
        headers.append((b"x-correlation-id", self.correlation_id.encode("ascii")))
        added = (
            (b"x-samtykke-consumer", grant.maskinporten.consumer),
            (b"x-samtykke-supplier", grant.maskinporten.supplier),
            (b"x-samtykke-consent-id", grant.consent.consent_id),
            (b"x-samtykke-token-kind", grant.binding.token_kind),
            (b"x-samtykke-resource", grant.binding.resource),
        )
        for claim_name, claim in added:
            if claim is not None:
                headers.append((claim_name, claim_header_value(claim)))
        return headers

    # ------------------------------------------------------------------ response side
    async def _send_from_app(self, message: Message) -> None:
        if not self.in_app:  # a send from the app's own background work: never cancelled
            await self._handle_app_message(message)
            return
        self.in_app = False  # our steps (records, sends) are never cancelled for a disconnect
        try:
            await self._handle_app_message(message)
        finally:
            self.in_app = True
        if self.client_gone and self.cancel_on_disconnect and (self.stream_open or not self.response_started):
            # the client left while the gateway was busy (no cancel then): stop the app now
            raise OSError("the client disconnected")

    async def _handle_app_message(self, message: Message) -> None:
        if self.failure is not None:
            # We already answered (fail closed). Tell the app the client is gone, as an ASGI
            # server does (send raises OSError), so the proxy stops reading the upstream.
            raise _Abandoned("the gateway already answered this request")
        kind = message["type"]
        grant = self.grant
        if grant is None:
            raise RuntimeError("response without a grant")
        if kind == "http.response.start":
            self.start_message = message
            status = int(message["status"])
            self.gateway.observer.upstream(time.perf_counter() - self.forward_started, status=status)
            if grant.rights_package is None:
                await self._start_streaming()
                return
            declared = declared_length(message.get("headers", []))
            if declared is not None and declared > self.config.max_body_bytes and self.record.method != "HEAD":
                await self._fail_after_grant(UpstreamError("upstream body too large", reason="upstream_body_too_large"))
            return
        if kind != "http.response.body":
            if grant.rights_package is not None:  # e.g. pathsend: would bypass scoping
                await self._fail_after_grant(UpstreamError("unsupported response message", reason="upstream_error"))
            elif self.response_started:
                await self.send(message)
            return
        if grant.rights_package is None:
            if not self.response_started:
                return  # start was refused (store down); drop the body
            if self.client_gone and self.stream_open:
                raise OSError("the client disconnected")
            await self.send(message)
            if self.stream_open:
                final = not message.get("more_body", False)
                if self.watcher is not None and not final:
                    # A server may take parts for a gone client without suspending (uvicorn
                    # drops them): let the watcher see the disconnect before the next part.
                    # Not after the last part: the server then reports its own end of the
                    # response as http.disconnect too.
                    await asyncio.sleep(0)
                if self.client_gone:
                    # seen while this part waited (e.g. for the server's buffer to drain): the
                    # server may have dropped it, so it is not counted
                    await self._end_stream("client_disconnected")
                    raise OSError("the client disconnected")
                body = message.get("body", b"")
                if body and self.record.method != "HEAD":  # counted once the server has taken it
                    self.stream_bytes += len(body)
                    self.stream_hash.update(body)
                    if 200 <= self.record.status < 300:
                        self.released = True  # data has left: a one-time consent is spent
                if not message.get("more_body", False):
                    await self._end_stream(None)
            return
        body = message.get("body", b"")
        if body:
            self.buffered += len(body)
            if self.buffered > self.config.max_body_bytes:
                await self._fail_after_grant(UpstreamError("upstream body too large", reason="upstream_body_too_large"))
                return
            self.chunks.append(body)
        if not message.get("more_body", False):
            await self._finish_scoped()

    async def _start_streaming(self) -> None:
        start = self.start_message
        if start is None:
            raise RuntimeError("body before response start")
        status = int(start["status"])
        if self.request_body_done and self.record.method != "HEAD":
            # a client already gone (it gave up, or half-closed) gets no start record and spends
            # nothing: let the watcher look once before anything is written
            self._start_watching()
            await asyncio.sleep(0)
            if self.client_gone:
                await self._deny(ClientDisconnectedError("the client disconnected before the answer"),
                                 after_grant=True)
                return
        self.record.decision = "allow"
        self.record.reason = "ok" if status < 400 else "upstream_status"
        self.record.status = status
        self.record.upstream_status = status
        # open before the start record is written: if the app cancels this send mid-write (an
        # app's own disconnect handling), the exchange still closes the stream with an end record
        self.released = False  # set when the first body byte has been handed to the server
        self.stream_open = True
        self.stream_hash = hashlib.sha256()
        try:
            await self._append()
        except AuditUnavailableError as exc:
            self.stream_open = False
            self.failure = exc
            await self._send_error(exc)
            return
        headers = streaming_headers(start.get("headers", []), self.correlation_id.encode("ascii"), status=status)
        self.response_started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def _end_stream(self, cause: str | None) -> None:
        """Append the streamed answer's end record: ``stream_end`` (complete) or ``stream_cut``
        (``cause``: the reason code of what broke it off), with the bytes handed to the server
        and their SHA-256. The start record already stands; a store failure here is logged
        (the bytes have left) and the client's stream is not touched."""
        if not self.stream_open:
            return
        self.stream_open = False
        self._stop_watching()
        end = dataclasses.replace(
            self.record,
            time=_utc_now(),
            reason="stream_end" if cause is None else "stream_cut",
            detail=cause,
            released_bytes=self.stream_bytes,
            released_sha256=self.stream_hash.hexdigest(),
            metadata=dict(self.record.metadata),
            requested_params=dict(self.record.requested_params),
            effective_params=dict(self.record.effective_params),
            released_paths=list(self.record.released_paths),
        )
        if cause is not None:
            log.warning("streamed answer cut off: %s after %d bytes (correlation_id=%s)", cause,
                        self.stream_bytes, self.correlation_id)
        started = time.perf_counter()
        try:
            await self.gateway.store.append(end)
        except AuditUnavailableError:
            self.gateway.audit_guard.failed()
            self.gateway.observer.audit_write(time.perf_counter() - started, ok=False)
            log.error("disclosure log unavailable for the end of a streamed answer; its start record stands "
                      "(correlation_id=%s)", self.correlation_id)
            return
        self.gateway.observer.audit_write(time.perf_counter() - started, ok=True)

    async def _finish_scoped(self) -> None:
        grant, start = self.grant, self.start_message
        if grant is None or grant.rights_package is None or start is None:
            raise RuntimeError("scoped finish without grant, package or start")
        status = int(start["status"])
        self.record.upstream_status = status
        raw = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        try:
            release = scoped_release(
                status,
                start.get("headers", []),
                raw,
                method=self.record.method,
                package=grant.rights_package,
                context=grant.scope_context,
                max_body_bytes=self.config.max_body_bytes,
                correlation_id=self.correlation_id,
                error_style=self.config.error_style,
                release_headers=self.config.release_headers,
            )
        except UpstreamError as exc:
            await self._fail_after_grant(exc)
            return
        self.record.decision = "allow"
        self.record.reason = release.reason
        await self._release(release)

    async def _release(self, release: Release) -> None:
        """Append the disclosure record, then (only then) send ``release``. Released bytes and
        hash count data from the source only (a generic error body is the gateway's own)."""
        self.record.status = release.status
        self.record.released_paths = list(release.released_paths)
        if release.data_released:
            self.record.released_bytes = len(release.body)
            self.record.released_sha256 = hashlib.sha256(release.body).hexdigest()
        else:
            self.record.released_bytes = 0
            self.record.released_sha256 = None
        try:
            await self._append()
        except AuditUnavailableError as exc:
            self.failure = exc
            await self._send_error(exc)
            return
        self.response_started = True
        self.released = release.data_released and 200 <= release.status < 300
        await self.send({"type": "http.response.start", "status": release.status, "headers": release.headers})
        await self.send({"type": "http.response.body", "body": release.body})

    async def _fail_after_grant(self, exc: GatewayError) -> None:
        self.failure = exc
        self.chunks = []
        await self._deny(exc, after_grant=True)

    async def _deny(self, exc: GatewayError, *, after_grant: bool = False) -> None:
        self.failure = self.failure or exc
        self.record.decision = "error" if after_grant else "deny"
        self.record.reason = exc.reason
        self.record.detail = exc.detail
        self.record.status = exc.status_code
        self.record.released_paths = []
        self.record.released_bytes = 0
        self.record.released_sha256 = None
        try:
            await self._append()
        except AuditUnavailableError as store_exc:
            await self._send_error(store_exc)
            return
        await self._send_error(exc)

    async def _send_error(self, exc: GatewayError) -> None:
        status, headers, body = render_error(exc, correlation_id=self.correlation_id, style=self.config.error_style,
                                             codes=self.error_codes)
        if self._body_unread():
            # answered before the request body was read to its end: ask the server to close the
            # connection after this answer (RFC 9112 §9.6), so a client that goes silent (or
            # trickles the rest) cannot hold it; the server discards what is left unread
            headers.append((b"connection", b"close"))
        self.response_started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    def _peer_trusted(self) -> bool:
        """Whether the connection's peer is in ``gateway.trusted_proxies``: only then do
        ``X-Forwarded-*``, ``X-Real-IP``, ``Via`` and the other client-address headers
        (:data:`~samtykke_gateway.asgi.headers.CLIENT_ADDRESS_HEADERS`) reach the app; the sidecar's
        proxy then sets its own."""
        return peer_trusted(self.scope.get("client"), self.config.trusted_proxies)

    def _body_unread(self) -> bool:
        """Whether the request declared a body (``Content-Length`` above 0, or
        ``Transfer-Encoding``) that neither the gateway nor the app is known to have read to its
        end."""
        if self.body is not None or self.request_body_done:
            return False
        return "transfer-encoding" in self.headers or any(
            v.strip() not in ("", "0") for v in self.headers.get("content-length", ()))

    async def _append(self) -> None:
        """Append the record durably.

        :raises AuditUnavailableError: (503) the store failed, or is known down
            (:class:`~samtykke_gateway.audit.guard.AuditGuard`); the client is told only that
            the log is unavailable, the cause is logged.
        """
        guard = self.gateway.audit_guard
        started = time.perf_counter()
        try:
            if guard.down and not self.audit_trial:
                try:
                    await guard.check()  # known down: refused without a write
                except AuditUnavailableError:
                    if self.forward_started:  # forwarded before the guard went down: say only that
                        raise AuditUnavailableError(UNAVAILABLE_DETAIL) from None
                    raise
                self.audit_trial = True
            try:
                await self.gateway.store.append(self.record)
            except AuditUnavailableError as exc:
                guard.failed()
                log.error("disclosure log write failed: %s (correlation_id=%s)", exc.detail, self.correlation_id)
                raise AuditUnavailableError(UNAVAILABLE_DETAIL) from None
        except AuditUnavailableError:
            self.gateway.observer.audit_write(time.perf_counter() - started, ok=False)
            self.record.decision = "error"  # nothing was released (logs and metrics say so)
            self.record.reason = "audit_unavailable"
            self.record.status = 503
            self.gateway.observer.decision(self.record, self.gate_seconds)
            raise
        guard.succeeded()
        self.gateway.observer.audit_write(time.perf_counter() - started, ok=True)
        self.gateway.observer.decision(self.record, self.gate_seconds)


class _Abandoned(OSError):
    """Raised from ``send`` to the protected app once the gateway has answered by itself."""
