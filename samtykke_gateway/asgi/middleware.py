"""ASGI 3 adapter: the enforcement path shared by the middleware and the sidecar.

``app.add_middleware(ConsentMiddleware, config=load_config("config/x.toml"))`` on any Starlette
or FastAPI app. Per request (the per-request state lives in small objects, never on the
middleware):

1. :class:`~samtykke_gateway.asgi.intake.Intake` reads the raw request facts from the scope
   and :meth:`Gate.decide <samtykke_gateway.policy.decide.Gate.decide>` judges them — the same
   decision ``samtykke-gateway explain`` runs: framing (RFC 9112 §6), the query, the path
   normalised once, route match (unmatched → 404 under a route's literal prefix, passed to
   the app elsewhere unless ``gateway.unmatched`` says otherwise; passed requests get the
   canonical path, without the tokens); on a route whose subject is a JSON
   body field, the whole request body is read first (bounded by
   ``gateway.max_request_body_bytes``, also by a declared ``Content-Length``: 413; a client gone
   while sending: no forward, record written) and the app then receives exactly those bytes,
   replayed, with a ``Content-Length`` that matches them (other routes never touch the body: it
   streams to the app); tokens → policy → binding (docs/protocol.md §4);
2. then the steps with effects, which ``explain`` never takes: the audit guard's probe when
   the disclosure log is known down, and the consent-state hook (revocation, one-time
   consents, usage limits: ``state.before_forward``);
3. :func:`~samtykke_gateway.asgi.forward.forward` hands the app the upstream scope: the
   verified :class:`~samtykke_gateway.policy.decide.Grant` in ``scope["samtykke.consent"]``,
   the canonical matched path and effective query, the tokens and any client ``X-Samtykke-*``
   removed and the verified claims added as headers;
4. :class:`~samtykke_gateway.asgi.release.Responder` releases the answer: scoped routes are
   buffered and scoped, unscoped ones stream through; the disclosure record is appended
   durably **before** the first body byte leaves (503 if it cannot be: fail closed), a
   streamed answer's end gets a second record (``stream_end`` / ``stream_cut``);
   :class:`~samtykke_gateway.asgi.disconnect.DisconnectWatch` notices a client that left.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from prometheus_client import CollectorRegistry

from samtykke_gateway.asgi.disconnect import DisconnectWatch
from samtykke_gateway.asgi.forward import ASGIApp, forward
from samtykke_gateway.asgi.intake import CONSENT_SCOPE_KEY, Intake, Message, Receive, Scope, Send
from samtykke_gateway.asgi.probes import Probes
from samtykke_gateway.asgi.release import Responder
from samtykke_gateway.asgi.stream import utc_now
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.correlation import accept_correlation_id, new_id
from samtykke_gateway.exceptions import GatewayError, UnavailableError
from samtykke_gateway.observe.logs import DecisionLog
from samtykke_gateway.observe.metrics import GatewayMetrics, metrics_of
from samtykke_gateway.runtime import Gateway

__all__ = ["CONSENT_SCOPE_KEY", "ConsentMiddleware"]

log = logging.getLogger("samtykke_gateway")


class ConsentMiddleware:
    """Consent enforcement for any ASGI 3 app (Starlette, FastAPI, or the sidecar proxy).

    :param app: the protected ASGI app.
    :param config: validated config (``load_config(...)``); or pass a ready ``gateway``.
        Unless the config sets ``gateway.unmatched``, a path no route names is handed to the
        app when it lies outside every route's literal prefix (``/docs``, ``/api/v1/status``)
        and refused (404 ``no_route``) under one (``/api/v1/studielan/…``):
        ``"pass_outside_protected"``. A passed ``gateway`` keeps its config's setting (unset:
        deny).
    :param gateway: an existing :class:`Gateway` (its owner starts and closes it).
    :param cancel_on_disconnect: when the client disconnects while the app is still working on
        the answer (watched from one second after the app has had the whole request body, and
        from the start of a streamed answer), cancel the app's work: the record
        says ``client_disconnected`` (499), nothing counts as released (a one-time consent is
        not spent). The sidecar sets it for its upstream proxy, which then closes the upstream
        request; off by default, because an in-process app may not expect to be cancelled.
    :param probes: answer ``gateway.health_path`` / ``ready_path`` / ``metrics_path``
        (``/healthz``, ``/readyz``, ``/metrics``; :mod:`samtykke_gateway.asgi.probes`) before
        the app sees them; ``False`` leaves those paths to the app (the sidecar answers its own).
    :param metrics_registry: the Prometheus registry the gateway's metrics go on (with
        ``config=``): the app's own, or ``prometheus_client.REGISTRY``; a new private one when
        omitted. ``metrics_path`` renders that whole registry. One middleware per registry (a
        second raises prometheus-client's ``ValueError``: duplicated timeseries).
    :raises TypeError: not exactly one of ``config`` and ``gateway``; ``metrics_registry``
        with ``gateway``.

    A gateway built here logs one line per decision (logger ``samtykke_gateway.decision``:
    route, decision, reason, status, correlation id; never a person id or a token) — as JSON
    once the app calls :func:`samtykke_gateway.configure_logging`.
    The verified consent is available to the app as ``scope["samtykke.consent"]``
    (a :class:`~samtykke_gateway.policy.decide.Grant`).
    """

    def __init__(self, app: ASGIApp, *, config: GatewayConfig | None = None, gateway: Gateway | None = None,
                 cancel_on_disconnect: bool = False, probes: bool = True,
                 metrics_registry: CollectorRegistry | None = None) -> None:
        if (config is None) == (gateway is None):
            raise TypeError("pass exactly one of config= and gateway=")
        if gateway is not None and metrics_registry is not None:
            raise TypeError("metrics_registry= goes with config=; a passed gateway keeps its observer")
        self.app = app
        self.cancel_on_disconnect = cancel_on_disconnect
        self._own_gateway = gateway is None
        if gateway is None:
            assert config is not None
            if config.unmatched is None:  # the middleware form's default
                config = dataclasses.replace(config, unmatched="pass_outside_protected")
            metrics = GatewayMetrics(metrics_registry)
            gateway = Gateway(config, observer=DecisionLog(metrics))  # one JSON log line per decision
            metrics.bind_issuers(gateway.issuers)
        self.gateway = gateway
        self.probes = Probes(gateway, metrics_of(gateway.observer)) if probes else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            probes = self.probes
            if probes is not None and scope.get("path", "") in probes.paths and await probes.answer(scope, send):
                return
            await self._http(scope, receive, send)
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request/response through the gate."""
        gateway = self.gateway
        started = time.perf_counter()
        intake = Intake(scope, receive, gateway.config)
        request = intake.request
        supplied = request.headers.get("x-correlation-id", [""])[0]
        record = DisclosureRecord(
            time=utc_now(),
            correlation_id=accept_correlation_id(supplied) or new_id(),
            decision="deny",
            reason="",
            status=0,
            method=request.method,
            path=scope.get("path", "")[:512],
        )
        responder = Responder(gateway, send, record, intake, DisconnectWatch(receive, self.cancel_on_disconnect))
        try:
            await gateway.ensure_started()
            decision = await gateway.gate.decide(request, record, read_body=intake.read_body)
            grant = decision.grant
            if grant is None:  # unmatched and passed (gateway.unmatched): the app answers unchecked
                await self.app(intake.passed_scope(decision), receive, send)
                return
            responder.grant = grant
            responder.gate_seconds = time.perf_counter() - started
            upstream_scope = intake.upstream_scope(decision, grant, record.correlation_id)
            if gateway.audit_guard.down:  # known down: nothing is forwarded (no record possible)
                await gateway.audit_guard.check()
                responder.audit_trial = True  # the probe passed: this request is the guard's trial
            await gateway.state.before_forward(grant)
        except GatewayError as exc:
            responder.gate_seconds = time.perf_counter() - started
            responder.error_codes = gateway.gate.error_codes(record.route)
            await responder.deny(exc)
            return
        except Exception as exc:  # a bug in our own code: fail closed, no traceback to the client
            # class and location only: an exception's text may quote a header or token
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
            log.error("unexpected error while deciding: %s at %s (correlation_id=%s)",
                      type(exc).__name__, where, record.correlation_id)
            # the gateway cannot decide: 503 (docs/protocol.md §4), never a 500 that looks like the data API's
            responder.error_codes = gateway.gate.error_codes(record.route)
            await responder.deny(UnavailableError("the gateway could not decide", reason="internal_error"))
            return
        responder.error_codes = grant.match.route.error_codes
        await forward(responder, intake, self.app, upstream_scope, grant)
