"""The response side of one exchange: what leaves, and the record written before it does.

:class:`Responder` is the ``send`` the protected app gets (starlette ``GZipResponder``
style: per-request state on the responder, never on the middleware). On a scoped route it
buffers the answer (bounded by ``max_body_bytes``, also by a declared ``Content-Length``) and
hands it to :func:`~samtykke_gateway.asgi.responder.scoped_release` (decode, scope, re-label;
a generic body for upstream errors; 502 for anything unscopable). On an unscoped route the
answer streams through (:func:`~samtykke_gateway.asgi.responder.streaming_headers`: hop-by-hop
and server-owned headers removed, the gateway's correlation id).

The disclosure record is appended durably **before** the first body byte leaves; if the store
cannot take it the client gets 503 and nothing else (fail closed; docs/protocol.md §7). A
streamed answer cannot be counted before it leaves, so its end gets a second record with the
same correlation id (reason ``stream_end``, or ``stream_cut`` when the upstream, the app or
the client broke it off, with the cause in ``detail``) carrying the byte count and SHA-256 of
what was handed to the server; a cut stream ends without its last chunk (the client sees it
incomplete). Once the gateway has answered by itself, the app's ``send`` raises
:class:`Abandoned` (an :class:`OSError`, ASGI's "client gone"), so the app stops producing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from samtykke_gateway.asgi.disconnect import DisconnectWatch
from samtykke_gateway.asgi.error_bodies import render_error
from samtykke_gateway.asgi.intake import Intake, Message, Send
from samtykke_gateway.asgi.responder import Release, declared_length, scoped_release
from samtykke_gateway.audit.guard import UNAVAILABLE_DETAIL
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.exceptions import AuditUnavailableError, ClientDisconnectedError, GatewayError, UpstreamError
from samtykke_gateway.policy.decide import Grant
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.asgi.stream import end_stream, start_streaming, stream_part

__all__ = ["Abandoned", "Responder"]

log = logging.getLogger("samtykke_gateway")


class Abandoned(OSError):
    """Raised from ``send`` to the protected app once the gateway has answered by itself."""


class Responder:
    """The answer to one request, and its disclosure record(s).

    :param gateway: the running gateway (store, audit guard, observer, config).
    :param send: the server's ``send``.
    :param record: the request's record, filled by the decision; written here.
    :param intake: the request side (whether a declared request body is still unread).
    :param watch: the request's disconnect watch.

    ``grant`` is set once the decision allowed the request; ``error_codes`` are the matched
    route's own error codes (``[routes.error_codes]``) for a rendered refusal.
    """

    __slots__ = ("audit_trial", "buffered", "chunks", "config", "correlation_id", "error_codes", "failure",
                 "forward_started", "gate_seconds", "gateway", "grant", "intake", "record", "released",
                 "response_started", "send", "start_message", "stream_bytes", "stream_hash", "stream_open",
                 "watch")

    def __init__(self, gateway: Gateway, send: Send, record: DisclosureRecord, intake: Intake,
                 watch: DisconnectWatch) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.send = send
        self.record = record
        self.correlation_id = record.correlation_id
        self.intake = intake
        self.watch = watch
        self.grant: Grant | None = None
        self.error_codes: Mapping[str, str] = {}
        self.response_started = False
        self.start_message: Message | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.failure: GatewayError | None = None
        self.gate_seconds = 0.0
        self.released = False  # data has left with a 2xx: a one-time consent is spent
        self.forward_started = 0.0
        # streamed (unscoped) answers: what has been handed to the server so far
        self.stream_open = False
        self.stream_bytes = 0
        self.stream_hash: Any = None  # hashlib sha256 object while the stream is open
        self.audit_trial = False  # this request may write while the AuditGuard is still down

    # ------------------------------------------------------------------ the app's send
    async def send_from_app(self, message: Message) -> None:
        """The ``send`` the protected app gets.

        :raises Abandoned: the gateway already answered (fail closed); the app should stop.
        :raises OSError: the client is gone (a streamed part is refused; under
            ``cancel_on_disconnect`` also a pending answer).
        """
        watch = self.watch
        if not watch.in_app:  # a send from the app's own background work: never cancelled
            await self._handle(message)
            return
        watch.in_app = False  # our steps (records, sends) are never cancelled for a disconnect
        try:
            await self._handle(message)
        finally:
            watch.in_app = True
        if watch.client_gone and watch.cancel_app and (self.stream_open or not self.response_started):
            # the client left while the gateway was busy (no cancel then): stop the app now
            raise OSError("the client disconnected")

    async def _handle(self, message: Message) -> None:
        if self.failure is not None:
            # We already answered (fail closed). Tell the app the client is gone, as an ASGI
            # server does (send raises OSError), so the proxy stops reading the upstream.
            raise Abandoned("the gateway already answered this request")
        kind = message["type"]
        grant = self.grant
        if grant is None:
            raise RuntimeError("response without a grant")
        if kind == "http.response.start":
            self.start_message = message
            status = int(message["status"])
            self.gateway.observer.upstream(time.perf_counter() - self.forward_started, status=status)
            if not 200 <= status <= 599:  # an interim 1xx is not a final answer; outside 100-599 is not HTTP
                await self.fail_after_grant(UpstreamError(f"the data API answered with status {status}",
                                                          reason="upstream_bad_response"))
                return
            if grant.rights_package is None:
                await start_streaming(self)
                return
            declared = declared_length(message.get("headers", []))
            if declared is not None and declared > self.config.max_body_bytes and self.record.method != "HEAD":
                await self.fail_after_grant(UpstreamError("upstream body too large", reason="upstream_body_too_large"))
            return
        if kind != "http.response.body":
            if grant.rights_package is not None:  # e.g. pathsend: would bypass scoping
                await self.fail_after_grant(UpstreamError("unsupported response message", reason="upstream_error"))
            elif self.response_started:
                await self.send(message)
            return
        if grant.rights_package is None:
            await stream_part(self, message)
            return
        body = message.get("body", b"")
        if body:
            self.buffered += len(body)
            if self.buffered > self.config.max_body_bytes:
                await self.fail_after_grant(UpstreamError("upstream body too large", reason="upstream_body_too_large"))
                return
            self.chunks.append(body)
        if not message.get("more_body", False):
            await self._finish_scoped()

    # ------------------------------------------------------------------ scoped answers
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
            await self.fail_after_grant(exc)
            return
        self.record.decision = "allow"
        self.record.reason = release.reason
        await self._release(release)

    async def _release(self, release: Release) -> None:
        """Append the disclosure record, then (only then) send ``release``. Released bytes and
        hash count data from the source only (a generic error body is the gateway's own)."""
        self.record.status = release.status
        self.record.released_paths = list(release.released_paths)
        self.record.rows_withheld = dict(release.rows_withheld) if release.rows_withheld else None
        if release.data_released:
            self.record.released_bytes = len(release.body)
            self.record.released_sha256 = hashlib.sha256(release.body).hexdigest()
        else:
            self.record.released_bytes = 0
            self.record.released_sha256 = None
        try:
            await self.append()
        except AuditUnavailableError as exc:
            self.failure = exc
            await self.send_error(exc)
            return
        self.response_started = True
        self.released = release.data_released and 200 <= release.status < 300
        await self.send({"type": "http.response.start", "status": release.status, "headers": release.headers})
        await self.send({"type": "http.response.body", "body": release.body})

    # ------------------------------------------------------------------ refusals
    async def fail_after_grant(self, exc: GatewayError) -> None:
        """Refuse after the grant (the answer could not be released): record ``error``, send
        the error body."""
        self.failure = exc
        self.chunks = []
        await self.deny(exc, after_grant=True)

    async def deny(self, exc: GatewayError, *, after_grant: bool = False) -> None:
        """Record the refusal (``deny``, or ``error`` after the grant), then send its error
        body; if the record cannot be written, the client gets the 503 instead."""
        self.failure = self.failure or exc
        self.record.decision = "error" if after_grant else "deny"
        self.record.reason = exc.reason
        self.record.detail = exc.detail
        self.record.status = exc.status_code
        self.record.released_paths = []
        self.record.rows_withheld = None
        self.record.released_bytes = 0
        self.record.released_sha256 = None
        try:
            await self.append()
        except AuditUnavailableError as store_exc:
            await self.send_error(store_exc)
            return
        await self.send_error(exc)

    async def end_stream(self, cause: str | None) -> None:
        """Close an open streamed answer with its end record (:func:`~samtykke_gateway.asgi.stream.end_stream`)."""
        await end_stream(self, cause)

    async def client_left(self) -> None:
        """After cancelling the app because the client left: record what happened."""
        if self.stream_open:
            await end_stream(self, "client_disconnected")
        elif not self.response_started and self.failure is None:
            if self.start_message is None:
                self.gateway.observer.upstream(time.perf_counter() - self.forward_started, status=None)
            await self.deny(ClientDisconnectedError("the client disconnected before the answer"), after_grant=True)

    async def send_error(self, exc: GatewayError) -> None:
        """Send ``exc``'s error body (:func:`~samtykke_gateway.asgi.error_bodies.render_error`,
        the route's own error codes); no record (the caller wrote it)."""
        status, headers, body = render_error(exc, correlation_id=self.correlation_id, style=self.config.error_style,
                                             codes=self.error_codes)
        if self.intake.body_unread(self.watch.body_done):
            # answered before the request body was read to its end: ask the server to close the
            # connection after this answer (RFC 9112 §9.6), so a client that goes silent (or
            # trickles the rest) cannot hold it; the server discards what is left unread
            headers.append((b"connection", b"close"))
        self.response_started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def append(self) -> None:
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
