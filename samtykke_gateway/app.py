"""The sidecar: :class:`ConsentMiddleware` around :class:`UpstreamProxy`, plus probes.

``/healthz`` (process alive), ``/readyz`` (keys loaded for every issuer, disclosure store
reachable) and ``/metrics`` are answered here and never proxied; their paths are configurable
(``[gateway] health_path`` / ``ready_path`` / ``metrics_path``).
"""

from __future__ import annotations

import json
from typing import Any

from .config import GatewayConfig
from .exceptions import GatewayError
from .gateway import Gateway
from .middleware import ConsentMiddleware
from .proxy import UpstreamProxy

__all__ = ["SidecarApp", "create_sidecar"]


class SidecarApp:
    """ASGI app of the standalone reverse proxy.

    :param config: validated configuration; ``upstream_url`` is required.
    :param gateway: an existing gateway (owner closes it); created from ``config`` otherwise.
    """

    def __init__(self, config: GatewayConfig, *, gateway: Gateway | None = None) -> None:
        if not config.upstream_url:
            raise ValueError("upstream.url is required for the sidecar")
        self.config = config
        self._own_gateway = gateway is None
        self.gateway = gateway or Gateway(config)
        self.proxy = UpstreamProxy(
            config.upstream_url,
            timeout_seconds=config.upstream_timeout_seconds,
            connect_timeout_seconds=config.upstream_connect_timeout_seconds,
            trusted_proxies=config.trusted_proxies,
        )
        self.protected = ConsentMiddleware(self.proxy, gateway=self.gateway)

    async def startup(self) -> None:
        if self._own_gateway:
            await self.gateway.start()

    async def shutdown(self) -> None:
        await self.proxy.aclose()
        if self._own_gateway:
            await self.gateway.close()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON-able detail): every issuer's keys loaded and the store reachable."""
        checks: dict[str, Any] = {}
        ok = True
        for name, policy in self.gateway.issuers.items():
            ready = policy.keys.ready
            checks[f"keys.{name}"] = "ok" if ready else "not loaded"
            ok = ok and ready
        try:
            await self.gateway.store.ping()
            checks["disclosure_store"] = "ok"
        except GatewayError:
            checks["disclosure_store"] = "unreachable"
            ok = False
        return ok, checks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
