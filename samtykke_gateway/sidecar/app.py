"""The sidecar: :class:`ConsentMiddleware` around :class:`UpstreamProxy`, plus probes.

Answered here and never proxied: ``/healthz``, ``/readyz`` and ``/metrics`` (paths
configurable; :mod:`samtykke_gateway.asgi.probes`, which the middleware form answers too).

Every other request gets a correlation id before the middleware sees it (the caller's
``X-Correlation-ID`` when well-formed, else a new one), bound for the JSON logs
(:mod:`samtykke_gateway.observe.logs`), passed upstream and returned to the caller by the middleware.
With ``tracer`` set (OpenTelemetry, :mod:`samtykke_gateway.observe.tracing`) each request gets a span.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.correlation import accept_correlation_id, new_id
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.observe.logs import correlation_id
from samtykke_gateway.observe.metrics import GatewayMetrics, metrics_of
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.asgi.probes import Probes, readiness
from samtykke_gateway.sidecar.proxy import UpstreamProxy

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
        self.metrics = metrics or metrics_of(observer)
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
                                           cancel_on_disconnect=True, probes=False)
        self.probes = Probes(self.gateway, self.metrics)

    async def startup(self) -> None:
        if self._own_gateway:
            await self.gateway.start()

    async def shutdown(self) -> None:
        await self.proxy.aclose()
        if self._own_gateway:
            await self.gateway.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON-able detail): :func:`samtykke_gateway.asgi.probes.readiness`."""
        return await readiness(self.gateway)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http":
            if await self.probes.answer(scope, send):
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


def create_sidecar(config: GatewayConfig) -> SidecarApp:
    """Factory used by ``samtykke-gateway serve``."""
    return SidecarApp(config)
