"""Probes, metrics, correlation ids, JSON logs and tracing of the sidecar (in-process ASGI
against a real upstream server on loopback)."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from samtykke_gateway.sidecar.app import SidecarApp, new_correlation_id
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.observe.logs import configure_logging
from samtykke_gateway.observe.metrics import parse_text
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import DEAD_REDIS_URL, state_config
from tests.support import INCOME_PATH, INCOME_PERSON, TAX_BASE_PERSON, a2_headers, tax_base_path
from tests.state.test_service_enforcement import a3
from samtykke_gateway.exceptions import ConfigError
from tests.support import make_config

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def sidecar(config: GatewayConfig, *, tracer: object = None) -> AsyncIterator[tuple[httpx.AsyncClient, SidecarApp, ExampleUpstream]]:
    upstream = ExampleUpstream()
    with ThreadedServer(upstream.app) as server:
        cfg = config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "upstream_url": server.url})
        app = SidecarApp(cfg, tracer=tracer)
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as client:
                yield client, app, upstream
        finally:
            await app.shutdown()


async def test_health_ready_and_metrics(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with sidecar(state_config(issuer_url, "http://x.invalid")) as (client, _, upstream):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"keys.altinn": "ok", "keys.maskinporten": "ok",
                                          "disclosure_store": "ok", "consent_state": "ok"}
        cid = str(uuid.uuid4())
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))).status_code == 200
        assert (await client.get(tax_base_path("2021"), headers=a3(dev_issuer, cid))).status_code == 403
        assert (await client.get(INCOME_PATH)).status_code == 401
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        parsed = parse_text(text)
        decisions = {(s["route"], s["decision"], s["reason"], s["status_class"]): v
                     for s, v in parsed["samtykke_decisions_total"]}
        assert decisions[("spesifisertsummertskattegrunnlag", "allow", "ok", "2xx")] == 1
        assert decisions[("spesifisertsummertskattegrunnlag", "deny", "metadata_out_of_range", "4xx")] == 1
        assert decisions[("inntekt", "deny", "missing_token", "4xx")] == 1
        assert any(n == "samtykke_gate_seconds_count" for n in parsed)
        assert parsed["samtykke_upstream_seconds_count"][0][1] == 1
        assert any(n.startswith("samtykke_disclosure_write_seconds") for n in parsed)
        assert {s["issuer"]: v for s, v in parsed["samtykke_jwks_ready"]} == {"altinn": 1, "maskinporten": 1}
        assert "# TYPE samtykke_state_errors_total counter" in text
        # nothing personal or secret in any label or value
        for secret in (INCOME_PERSON, TAX_BASE_PERSON, cid, "eyJ"):
            assert secret not in text
        # probes are never proxied
        assert all(r.get("path", "") not in ("/healthz", "/readyz", "/metrics") for r in upstream.requests)


async def test_readyz_reports_state_backend_down(issuer_url: str) -> None:
    async with sidecar(state_config(issuer_url, "http://x.invalid", state={"url": DEAD_REDIS_URL})) as (client, _, _u):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["consent_state"] == "state_unavailable"
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_readyz_reports_keys_not_loaded(issuer_url: str) -> None:
    config = state_config("http://127.0.0.1:9", "http://x.invalid")  # nothing listens: keys never load
    async with sidecar(config) as (client, _, _u):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["keys.maskinporten"] == "not loaded"
        parsed = parse_text((await client.get("/metrics")).text)
        assert {s["issuer"]: v for s, v in parsed["samtykke_jwks_failing"]} == {"altinn": 1, "maskinporten": 1}
        assert all(v >= 1 for _, v in parsed["samtykke_jwks_fetches_total"])


async def test_probe_paths_are_configurable(issuer_url: str) -> None:
    config = state_config(issuer_url, "http://x.invalid")
    import dataclasses

    config = dataclasses.replace(config, health_path="/_/live", ready_path="/_/ready", metrics_path="/_/metrics")
    async with sidecar(config) as (client, _, upstream):
        assert (await client.get("/_/live")).status_code == 200
        assert (await client.get("/_/ready")).status_code == 200
        assert "samtykke_decisions_total" in (await client.get("/_/metrics")).text
        assert (await client.get("/healthz")).status_code == 404  # now an ordinary (unmatched) path
        assert upstream.requests == []


async def test_correlation_id_is_kept_passed_upstream_and_logged(dev_issuer: DevIssuer, issuer_url: str) -> None:
    stream = io.StringIO()
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "aiohttp.access", "aiohttp.client",
             "samtykke_gateway.decision"]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers), logging.getLogger(n).propagate)
             for n in names}
    configure_logging("INFO", stream=stream)
    logging.getLogger("samtykke_gateway.decision").setLevel(logging.DEBUG)  # allow lines are DEBUG (issue 13)
    try:
        async with sidecar(state_config(issuer_url, "http://x.invalid")) as (client, app, upstream):
            from samtykke_gateway.observe.logs import DecisionLog

            app.gateway.observer = DecisionLog(app.gateway.observer)  # what `serve` installs
            headers = a2_headers(dev_issuer)
            r = await client.get(INCOME_PATH + "?fraOgMed=2018-07",
                                 headers={**headers, "X-Correlation-ID": "bank-req-abc.1"})
            assert r.status_code == 200
            assert r.headers["x-correlation-id"] == "bank-req-abc.1"
            seen = dict((k.lower(), v) for k, v in upstream.requests[-1]["headers"])
            assert seen["x-correlation-id"] == "bank-req-abc.1"
            # an id that could carry a person id is replaced, and the new one is used throughout
            r2 = await client.get(INCOME_PATH + "?fraOgMed=2018-07",
                                  headers={**a2_headers(dev_issuer), "X-Correlation-ID": f"x-{INCOME_PERSON}"})
            new = r2.headers["x-correlation-id"]
            assert INCOME_PERSON not in new and re.fullmatch(r"[a-p]{16}-[0-9a-f]+", new)
            assert dict((k.lower(), v) for k, v in upstream.requests[-1]["headers"])["x-correlation-id"] == new
            await client.get(INCOME_PATH + "?fraOgMed=2018-09", headers=a2_headers(dev_issuer))  # a denial
    finally:  # leave logging as we found it (other tests capture records)
        for n, (level, handlers, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    decisions = [ln for ln in lines if ln.get("event") == "decision"]
    assert [d["decision"] for d in decisions] == ["allow", "allow", "deny"]
    assert decisions[0]["correlation_id"] == "bank-req-abc.1"
    assert decisions[1]["correlation_id"] == new
    assert decisions[2]["reason"] == "metadata_out_of_range" and decisions[2]["route"] == "inntekt"
    dump = stream.getvalue()
    leaks = [ln for ln in dump.splitlines() if INCOME_PERSON in ln or "eyJ" in ln or "/api/" in ln]
    assert leaks == []
    assert headers["AltinnSamtykke"][:40] not in dump


def test_new_correlation_ids_never_hold_a_digit_run() -> None:
    import re

    assert all(re.search(r"[0-9]{9,}", new_correlation_id()) is None for _ in range(5000))


async def test_tracing_span_per_request(dev_issuer: DevIssuer, issuer_url: str) -> None:
    from samtykke_gateway.observe.tracing import get_tracer

    tracer = get_tracer()  # opentelemetry-api only: a no-op tracer, the code path still runs
    async with sidecar(state_config(issuer_url, "http://x.invalid"), tracer=tracer) as (client, _, _u):
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
        assert r.status_code == 200


async def test_readyz_loads_keys_once_the_issuer_is_up(dev_issuer: DevIssuer) -> None:
    """A replica started while its JWKS endpoint was unreachable must become ready by itself:
    a not-ready replica gets no requests, so only the probe can trigger the fetch."""
    import asyncio

    from tests.state_support import free_port
    from tests.support import make_config

    port = free_port()
    fast = {"refetch_cooldown_seconds": 0.2}
    config = make_config(f"http://127.0.0.1:{port}", "http://x.invalid",
                         issuers={"altinn": fast, "maskinporten": fast})
    async with sidecar(config) as (client, _, _u):
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["keys.maskinporten"] == "not loaded"
        with ThreadedServer(dev_issuer.asgi_app(), port=port):
            await asyncio.sleep(0.3)  # past the cooldown after the failed start-up fetch
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.json()
            assert ready.json()["checks"]["keys.maskinporten"] == "ok"
            response = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, "ready-1"))
            assert response.status_code == 200


async def test_readyz_checks_only_the_issuers_some_route_uses(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """An [issuers.altinn] that no route uses (no altinn2_service) never holds readiness: its
    keys may be unreachable (here: a closed port) while Altinn 3 routes serve."""
    import dataclasses

    from tests.state_support import free_port
    from tests.support import make_config

    dead = f"http://127.0.0.1:{free_port()}/altinn/jwk"
    config = make_config(issuer_url, "http://x.invalid", issuers={"altinn": {"jwks_url": dead}})
    routes = tuple(dataclasses.replace(r, altinn2_services=()) for r in config.routes)
    async with sidecar(dataclasses.replace(config, routes=routes)) as (client, _, _u):
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["keys.altinn"] == "not used by any route"
        assert ready.json()["checks"]["keys.maskinporten"] == "ok"
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, "unused-a2"))).status_code == 200
    # the same dead Altinn 2 keys with a route that accepts Altinn 2 consents: not ready
    async with sidecar(config) as (client, _, _u):
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["keys.altinn"] == "not loaded"


@pytest.mark.parametrize("unmatched", ["pass", "pass_outside_protected"])
def test_sidecar_refuses_unmatched_pass(unmatched: str, issuer_url: str) -> None:
    config = make_config(issuer_url, "http://127.0.0.1:9", gateway={"unmatched": unmatched})
    with pytest.raises(ConfigError) as info:
        SidecarApp(config)
    assert info.value.key_path == "gateway.unmatched"


async def test_sidecar_denies_paths_outside_the_protected_prefixes_when_unmatched_is_unset(issuer_url: str) -> None:
    """The middleware form's default passes ``/api/v1/status``; the sidecar, an open proxy
    otherwise, keeps refusing every path no route names (404 ``no_route``, one record)."""
    config = state_config(issuer_url, "http://x.invalid")
    assert config.unmatched is None
    async with sidecar(config) as (client, app, upstream):
        response = await client.get("/api/v1/status")
        assert response.status_code == 404 and response.json()["reason"] == "no_route"
        assert upstream.requests == []
        assert [r.reason for r in app.gateway.store.records] == ["no_route"]  # type: ignore[attr-defined]
