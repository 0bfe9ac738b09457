"""The gateway's own endpoints, in both forms: liveness, readiness and Prometheus metrics.

Answered by the gateway and never handed to the app or the upstream, for any method (paths
configurable: ``[gateway] health_path`` / ``ready_path`` / ``metrics_path``):

- ``/healthz`` — 200 ``{"status": "ok"}`` while the process serves (Kubernetes liveness);
- ``/readyz`` — 200 when the keys of every issuer some route uses are loaded (Maskinporten
  always; Altinn 2 only when a route has ``altinn2_service``), the disclosure store answers a
  ping and the consent state is usable (backend ping, revocation file readable, feed not stale,
  Redis not reset: ``consent_state_reset``); 503 with the failing checks otherwise (the replica
  leaves the Service). A configured issuer no route uses and the legacy Altinn 2 consent feed
  are reported, never a failure; ``consent_state_durability`` says what Redis promises about
  keeping the state (a warning, never a failure) (docs/protocol.md §8);
- ``/metrics`` — Prometheus text format from the gateway's registry
  (:class:`~samtykke_gateway.observe.metrics.GatewayMetrics`; in the middleware form the one
  the app chose, e.g. ``prometheus_client.REGISTRY``); 404 when the gateway has no metrics.

Bodies are JSON with ``Cache-Control: no-store``; they name the failing part, never a token
or a person id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import MutableMapping
from typing import Any

from samtykke_gateway.exceptions import GatewayError
from samtykke_gateway.observe.metrics import GatewayMetrics
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.state import ConsentStateService

__all__ = ["Probes", "readiness", "send_json"]


async def readiness(gateway: Gateway) -> tuple[bool, dict[str, Any]]:
    """(ready, JSON-able detail) of ``gateway``: the keys of every issuer a route uses loaded,
    the disclosure store and the consent state reachable (see the module docstring).

    Keys not loaded are fetched here, all used issuers at once (at most once per refetch
    cooldown after a failure); a due refresh of loaded keys starts in the background. A
    gateway not started yet (the middleware form before its first request) is started first;
    when that fails the store is reported ``unreachable``.
    """
    checks: dict[str, Any] = {}
    with contextlib.suppress(GatewayError):  # the store check below says which part is down
        await gateway.ensure_started()
    used = gateway.config.issuers_in_use
    issuers = {n: p for n, p in gateway.issuers.items() if n in used}
    for name in gateway.issuers:
        if name not in used:
            checks[f"keys.{name}"] = "not used by any route"
    # all issuers at once: a hanging JWKS endpoint costs one fetch timeout, not one each
    loaded = await asyncio.gather(*(p.keys.ensure_loaded() for p in issuers.values()))
    for name, ready in zip(issuers, loaded, strict=True):
        checks[f"keys.{name}"] = "ok" if ready else "not loaded"
    ok = all(loaded)
    try:
        await gateway.store.ping()
        checks["disclosure_store"] = "ok"
    except GatewayError:
        checks["disclosure_store"] = "unreachable"
        ok = False
    try:
        await gateway.state.ping()
        checks["consent_state"] = "ok"
    except GatewayError as exc:
        checks["consent_state"] = exc.reason
        ok = False
    feed = gateway.state.feed_status() if isinstance(gateway.state, ConsentStateService) else None
    if feed is not None:
        checks["consent_feed"] = feed
    durability = getattr(gateway.state, "durability", None)
    if durability is not None and (promise := await durability()) is not None:
        # a warning only (a Redis without persistence still serves; a reset it causes is
        # caught by the generation marker): consent_state_durability
        checks["consent_state_durability"] = f"{promise['verdict']}: {promise['detail']}"
    return ok, checks


class Probes:
    """Answers ``health_path``, ``ready_path`` and ``metrics_path`` of ``gateway.config``.

    :param gateway: the gateway whose readiness is reported.
    :param metrics: the registry served on ``metrics_path`` (``None``: 404 there).
    """

    def __init__(self, gateway: Gateway, metrics: GatewayMetrics | None) -> None:
        self.gateway = gateway
        self.metrics = metrics
        config = gateway.config
        self.paths = frozenset({config.health_path, config.ready_path, config.metrics_path})

    async def answer(self, scope: MutableMapping[str, Any], send: Any) -> bool:
        """Answer the request when its path is a probe's. :returns: whether it was answered."""
        path = scope.get("path", "")
        if path not in self.paths:
            return False
        config = self.gateway.config
        if path == config.health_path:
            await send_json(send, 200, {"status": "ok"})
        elif path == config.ready_path:
            ok, checks = await readiness(self.gateway)
            await send_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
        elif self.metrics is None:
            await send_json(send, 404, {"status": "no metrics"})
        else:
            body, content_type = self.metrics.render()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", content_type.encode()),
                                    (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": body})
        return True


async def send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    """One JSON answer (``Cache-Control: no-store``) through the ASGI ``send``."""
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
