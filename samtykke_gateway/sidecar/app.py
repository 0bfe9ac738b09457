"""The sidecar: :class:`ConsentMiddleware` around :class:`UpstreamProxy`, plus probes.

Answered here and never proxied (paths configurable: ``[gateway] health_path`` /
``ready_path`` / ``metrics_path``; any method):

- ``/healthz`` — 200 ``{"status": "ok"}`` while the process serves (Kubernetes liveness);
- ``/readyz`` — 200 when the keys of every issuer some route uses are loaded (Maskinporten
  always; Altinn 2 only when a route has ``altinn2_service``), the disclosure store answers a
  ping and the consent state is usable (backend ping, revocation file readable); 503 with the
  failing checks otherwise (readiness: the replica leaves the Service). A configured issuer no
  route uses and the legacy Altinn 2 consent feed are reported, never a failure: a stale feed
  refuses only the Altinn 2 consents it covers (docs/protocol.md §8);
- ``/readyz`` — 200 when every issuer's keys are loaded, the disclosure store answers a ping and
  the consent state is usable (backend ping, revocation file readable, feed not stale, Redis
  not reset: ``consent_state_reset``); 503 with the failing checks otherwise (readiness: the
  replica leaves the Service); ``consent_state_durability`` says what Redis promises about
  keeping the state (a warning, never a failure);
- ``/metrics`` — Prometheus text format from the gateway's own registry.

Every other request gets a correlation id before the middleware sees it (the caller's
``X-Correlation-ID`` when well-formed, else a new one), bound for the JSON logs
(:mod:`samtykke_gateway.observe.logs`), passed upstream and returned to the caller by the middleware.
With ``tracer`` set (OpenTelemetry, :mod:`samtykke_gateway.observe.tracing`) each request gets a span.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.correlation import accept_correlation_id, new_id
from samtykke_gateway.exceptions import ConfigError, GatewayError
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.observe.logs import correlation_id
from samtykke_gateway.observe.metrics import GatewayMetrics
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.sidecar.proxy import UpstreamProxy
from samtykke_gateway.state import ConsentStateService

__all__ = ["SidecarApp", "create_sidecar", "new_correlation_id"]

def new_correlation_id() -> str:
    """A fresh correlation id (:func:`samtykke_gateway.correlation.new_id`): never a 9+ digit run."""
    return new_id()


def _correlation_of(headers: list[tuple[bytes, bytes]]) -> tuple[str, list[tuple[bytes, bytes]]]:
    supplied = [v for k, v in headers if k.lower() == b"x-correlation-id"]
    value = supplied[0].decode("latin-1") if len(supplied) == 1 else ""
    value = accept_correlation_id(value) or new_id()
    rest = [(k, v) for k, v in headers if k.lower() != b"x-correlation-id"]
    rest.append((b"x-correlation-id", value.encode("ascii")))
    return value, rest


def check_sidecar_config(config: GatewayConfig) -> str:
    """What the sidecar needs beyond a valid config; returns the upstream URL.

    :raises ConfigError: no ``upstream.url``; ``gateway.unmatched`` set to ``"pass"`` or
        ``"pass_outside_protected"`` (that would make the sidecar an open proxy for the paths no
        route names: they are for the middleware form; unset, the sidecar denies them).
    """
    if not config.upstream_url:
        raise ConfigError("upstream.url", "is required for the sidecar")
    if config.unmatched not in (None, "deny"):
        raise ConfigError("gateway.unmatched", f"{config.unmatched!r} is for the middleware form; the sidecar"
                                               " denies unmatched paths (leave it unset or 'deny')")
    return config.upstream_url


class SidecarApp:
    """ASGI app of the standalone reverse proxy.

    :param config: validated configuration; ``upstream_url`` is required.
    :param gateway: an existing gateway (its owner starts and closes it); created from
        ``config`` otherwise (then started on lifespan startup and closed on shutdown).
    :param metrics: registry served on ``/metrics``; the gateway's observer when it is a
        :class:`GatewayMetrics` (the default), else none (``/metrics`` → 404).
    :param tracer: an OpenTelemetry tracer, or ``None`` for no tracing.
    :raises ValueError: no ``upstream.url``.
    """

    def __init__(self, config: GatewayConfig, *, gateway: Gateway | None = None,
                 metrics: GatewayMetrics | None = None, tracer: Any = None) -> None:
        upstream_url = check_sidecar_config(config)
        self.config = config
        self._own_gateway = gateway is None
        self.gateway = gateway or Gateway(config)
        observer = self.gateway.observer
        self.metrics = metrics or (observer if isinstance(observer, GatewayMetrics) else None)
        self.tracer = tracer
        self.proxy = UpstreamProxy(
            upstream_url,
            timeout_seconds=config.upstream_timeout_seconds,
            connect_timeout_seconds=config.upstream_connect_timeout_seconds,
            deadline_seconds=config.upstream_deadline_seconds,
            trusted_proxies=config.trusted_proxies,
        )
        # the proxy's work for a client that left is cancelled (its upstream request closed)
        self.protected = ConsentMiddleware(self.proxy, gateway=self.gateway,  # type: ignore[arg-type]
                                           cancel_on_disconnect=True)

    async def startup(self) -> None:
        if self._own_gateway:
            await self.gateway.start()

    async def shutdown(self) -> None:
        await self.proxy.aclose()
        if self._own_gateway:
            await self.gateway.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON-able detail): the keys of every issuer a route uses loaded, the store
        and the consent state reachable. Details name the failing part, never a token or an id.
        Keys not loaded are fetched here, all used issuers at once (at most once per refetch
        cooldown after a failure); a due refresh of loaded keys starts in the background."""
        checks: dict[str, Any] = {}
        used = self.config.issuers_in_use
        issuers = {n: p for n, p in self.gateway.issuers.items() if n in used}
        for name in self.gateway.issuers:
            if name not in used:
                checks[f"keys.{name}"] = "not used by any route"
        # all issuers at once: a hanging JWKS endpoint costs one fetch timeout, not one each
        loaded = await asyncio.gather(*(p.keys.ensure_loaded() for p in issuers.values()))
        for name, ready in zip(issuers, loaded, strict=True):
            checks[f"keys.{name}"] = "ok" if ready else "not loaded"
        ok = all(loaded)
        try:
            await self.gateway.store.ping()
            checks["disclosure_store"] = "ok"
        except GatewayError:
            checks["disclosure_store"] = "unreachable"
            ok = False
        try:
            await self.gateway.state.ping()
            checks["consent_state"] = "ok"
        except GatewayError as exc:
            checks["consent_state"] = exc.reason
            ok = False
        feed = self.gateway.state.feed_status() if isinstance(self.gateway.state, ConsentStateService) else None
        if feed is not None:
            checks["consent_feed"] = feed
        durability = getattr(self.gateway.state, "durability", None)
        if durability is not None and (promise := await durability()) is not None:
            # a warning only (a Redis without persistence still serves; a reset it causes is
            # caught by the generation marker): consent_state_durability
            checks["consent_state_durability"] = f"{promise['verdict']}: {promise['detail']}"
        return ok, checks

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path == self.config.health_path:
                await _json(send, 200, {"status": "ok"})
                return
            if path == self.config.ready_path:
                ok, checks = await self.readiness()
                await _json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
                return
            if path == self.config.metrics_path:
                await self._metrics(send)
                return
            cid, headers = _correlation_of(list(scope.get("headers", ())))
            scope = dict(scope)
            scope["headers"] = headers
            with correlation_id(cid):
                if self.tracer is None:
                    await self.protected(scope, receive, send)
                else:
                    from samtykke_gateway.observe.tracing import traced

                    await traced(self.tracer, self.protected, scope, receive, send, cid)
            return
        await self.protected(scope, receive, send)

    async def _metrics(self, send: Any) -> None:
        if self.metrics is None:
            await _json(send, 404, {"status": "no metrics"})
            return
        body, content_type = self.metrics.render()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_sidecar(config: GatewayConfig) -> SidecarApp:
    """Factory used by ``samtykke-gateway serve``."""
    return SidecarApp(config)
