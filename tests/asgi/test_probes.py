"""The middleware form's own endpoints (``asgi/probes.py``): ``/healthz``, ``/readyz`` and
``/metrics`` answered before the app, metrics on the registry the app chose, and one JSON log
line per decision once the app calls :func:`samtykke_gateway.configure_logging`."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

import samtykke_gateway
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.observe.metrics import parse_text
from tests.proxy_support import free_port
from tests.support import (
    STUDIELAN_PERSON,
    studielan_config,
    studielan_fastapi,
    studielan_headers,
    studielan_path,
)

pytestmark = pytest.mark.anyio

_LOGGERS = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "aiohttp.access", "aiohttp.client"]


@contextmanager
def json_logs(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """``samtykke_gateway.configure_logging`` into a buffer (DEBUG: released answers are logged
    at DEBUG, refusals at INFO); logging restored afterwards."""
    stream = io.StringIO()
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers), logging.getLogger(n).propagate)
             for n in _LOGGERS}
    samtykke_gateway.configure_logging(level, stream=stream)
    try:
        yield stream
    finally:
        for n, (saved_level, handlers, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.setLevel(saved_level)
            lg.handlers[:] = handlers
            lg.propagate = propagate


async def test_fastapi_app_answers_probes_metrics_on_its_registry_and_logs_decisions(
        dev_issuer: DevIssuer, issuer_url: str) -> None:
    registry = CollectorRegistry()
    own = Counter("studielan_app_requests", "the app's own counter", registry=registry)
    own.inc()
    app = studielan_fastapi(config=studielan_config(issuer_url), metrics_registry=registry)
    with json_logs() as stream, ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            health = await client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ok", "checks": {"keys.maskinporten": "ok", "disclosure_store": "ok",
                                                               "consent_state": "ok"}}
            ok = await client.get(studielan_path(), headers=studielan_headers(dev_issuer))
            assert ok.status_code == 200, ok.text
            denied = await client.get(studielan_path("12879397780"), headers=studielan_headers(dev_issuer))
            assert denied.status_code == 403
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    parsed = parse_text(metrics.text)
    decided = {(s["route"], s["decision"], s["reason"]): v for s, v in parsed["samtykke_decisions_total"]}
    assert decided == {("studielan-saldo", "allow", "ok"): 1, ("studielan-saldo", "deny", "subject_mismatch"): 1}
    assert parsed["studielan_app_requests_total"] == [({}, 1.0)]  # the app's own metric, same registry
    assert parsed["samtykke_jwks_ready"] == [({"issuer": "maskinporten"}, 1.0)]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    decisions = [ln for ln in lines if ln.get("event") == "decision"]
    assert [(d["decision"], d["reason"], d["status"], d["route"]) for d in decisions] == [
        ("allow", "ok", 200, "studielan-saldo"), ("deny", "subject_mismatch", 403, "studielan-saldo")]
    assert decisions[0]["correlation_id"] == ok.headers["x-correlation-id"]
    assert decisions[1]["correlation_id"] == denied.headers["x-correlation-id"]
    assert STUDIELAN_PERSON not in stream.getvalue() and "eyJ" not in stream.getvalue()


async def test_metrics_can_go_on_the_default_prometheus_registry(dev_issuer: DevIssuer, issuer_url: str) -> None:
    before = set(REGISTRY._collector_to_names)  # noqa: SLF001 - the test unregisters what it added
    try:
        app = studielan_fastapi(config=studielan_config(issuer_url), metrics_registry=REGISTRY)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
            assert (await client.get(studielan_path(), headers=studielan_headers(dev_issuer))).status_code == 200
            text = (await client.get("/metrics")).text
        assert REGISTRY.get_sample_value("samtykke_decisions_total", {
            "route": "studielan-saldo", "decision": "allow", "reason": "ok", "status_class": "2xx"}) == 1
        assert "python_gc_objects_collected_total" in text  # the whole default registry is served
    finally:
        for collector in set(REGISTRY._collector_to_names) - before:  # noqa: SLF001
            REGISTRY.unregister(collector)


async def test_probe_paths_come_from_the_config_and_probes_can_be_left_to_the_app(issuer_url: str) -> None:
    config = dataclasses.replace(studielan_config(issuer_url), health_path="/_/live", ready_path="/_/ready",
                                 metrics_path="/_/metrics")
    app = studielan_fastapi(config=config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        assert (await client.get("/_/live")).json() == {"status": "ok"}
        assert (await client.get("/_/ready")).status_code == 200
        assert "samtykke_decisions_total" in (await client.get("/_/metrics")).text
        healthz = await client.get("/healthz")  # now the app's (FastAPI's own 404), not the gateway's
        assert healthz.status_code == 404 and healthz.json() == {"detail": "Not Found"}
    app = studielan_fastapi(config=studielan_config(issuer_url), probes=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        assert (await client.get("/readyz")).json() == {"detail": "Not Found"}


async def test_readyz_is_503_naming_the_keys_when_they_cannot_load(issuer_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    app = studielan_fastapi(config=studielan_config(dead))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["keys.maskinporten"] == "not loaded"
        assert (await client.get("/healthz")).status_code == 200


def test_metrics_registry_goes_with_config_only(issuer_url: str) -> None:
    from samtykke_gateway import ConsentMiddleware, Gateway

    gateway = Gateway(studielan_config(issuer_url))
    with pytest.raises(TypeError, match="metrics_registry"):
        ConsentMiddleware(lambda *a: None, gateway=gateway, metrics_registry=CollectorRegistry())  # type: ignore[arg-type]
