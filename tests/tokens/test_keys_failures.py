"""Failed JWKS fetches: counted (samtykke_jwks_fetch_failures_total), logged with where (the
URL without credentials) and why, answered to the client as a generic 503; a hanging endpoint
costs one fetch timeout for all issuers together."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.config import load_config
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.exceptions import KeysUnavailableError
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.tokens.keys import KeySet
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import free_port, write_config
from tests.support import tax_base_path
from tests.state.test_service_enforcement import a3
from tests.support import running_gateway


@pytest.mark.anyio
async def test_failed_fetches_are_counted() -> None:
    async with httpx.AsyncClient() as http:
        keys = KeySet(name="altinn", http=http, jwks_url="http://127.0.0.1:9/jwk", fetch_timeout_seconds=1,
                      refetch_cooldown_seconds=0)
        with pytest.raises(KeysUnavailableError):
            await keys.get(kid="k", x5t=None)
        assert keys.fetch_count >= 1
        assert keys.failure_count == keys.fetch_count


@pytest.mark.anyio
async def test_failed_fetch_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fresh user: /readyz said "not loaded" and nothing said why."""

    async with httpx.AsyncClient() as http:
        keys = KeySet(name="maskinporten", http=http, jwks_url="http://127.0.0.1:9/jwk", fetch_timeout_seconds=1)
        with caplog.at_level(logging.WARNING, logger="samtykke_gateway.keys"):
            assert not await keys.ensure_loaded()
    messages = [r.getMessage() for r in caplog.records if r.name == "samtykke_gateway.keys"]
    assert messages == ["JWKS fetch for maskinporten from http://127.0.0.1:9/jwk failed: HTTP failure (ConnectError)"]


# -- where and why a fetch failed goes to the log, never to the client (issue 14 item 7) -------
# -- and a hanging JWKS endpoint costs one fetch timeout for all issuers (issue 16 item 5) -----


def _keys_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "samtykke_gateway.keys"]


@pytest.mark.anyio
async def test_failed_fetch_logs_the_url_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://jwks-user:hunter2@127.0.0.1:{port}/keys/jwk?api_key=s3cret#frag"
    async with httpx.AsyncClient() as http:
        keys = KeySet(name="maskinporten", http=http, jwks_url=url, fetch_timeout_seconds=1)
        with caplog.at_level(logging.WARNING, logger="samtykke_gateway.keys"):
            with pytest.raises(KeysUnavailableError) as info:
                await keys.get(kid="k", x5t=None)
    (record,) = _keys_records(caplog)
    message = record.getMessage()
    assert f"from http://127.0.0.1:{port}/keys/jwk failed: HTTP failure (ConnectError)" in message
    assert getattr(record, "event", None) == "jwks_fetch" and getattr(record, "reason", None) == "connect"
    for secret in ("jwks-user", "hunter2", "s3cret", "frag"):
        assert secret not in message
    assert keys.source == f"http://127.0.0.1:{port}/keys/jwk"
    # the client's 503 says which issuer, never where or why
    assert info.value.status_code == 503 and info.value.reason == "keys_unavailable"
    assert info.value.detail == "No signing keys are available for maskinporten."


@pytest.mark.anyio
async def test_failed_fetch_after_discovery_logs_the_jwks_url_and_cause(caplog: pytest.LogCaptureFixture) -> None:
    async def metadata(request: Request) -> Response:
        return JSONResponse({"jwks_uri": str(request.base_url).rstrip("/") + "/jwk?sig=abc"})

    async def jwk(request: Request) -> Response:
        return Response(b"maintenance", 503)

    app = Starlette(routes=[Route("/meta", metadata), Route("/jwk", jwk)])
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient() as http:
            keys = KeySet(name="altinn", http=http, metadata_url=server.url + "/meta?tenant=x")
            with caplog.at_level(logging.WARNING, logger="samtykke_gateway.keys"):
                assert not await keys.ensure_loaded()
    (record,) = _keys_records(caplog)
    assert record.getMessage() == f"JWKS fetch for altinn from {server.url}/jwk failed: HTTP status 503"
    assert getattr(record, "reason", None) == "http_status"


class _Hanging:
    """An ASGI app whose every request hangs (until the server shuts down); counts requests."""

    def __init__(self) -> None:
        self.hits = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.hits += 1
        await asyncio.sleep(30)


@pytest.fixture
def hanging_jwks() -> Iterator[tuple[_Hanging, str]]:
    app = _Hanging()
    with ThreadedServer(app, timeout_graceful_shutdown=0.2) as server:
        yield app, server.url


def _config_with_timeouts(tmp_path: Path, issuer_url: str, *, timeout: float, cooldown: float) -> Path:
    config = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    knobs = f"fetch_timeout_seconds = {timeout}\nrefetch_cooldown_seconds = {cooldown}\n"
    text = config.read_text()
    for table in ("[issuers.altinn]\n", "[issuers.maskinporten]\n"):
        text = text.replace(table, table + knobs)
    config.write_text(text)
    return config


@pytest.mark.anyio
async def test_hanging_jwks_costs_one_fetch_timeout_at_start_and_readiness(
    tmp_path: Path, hanging_jwks: tuple[_Hanging, str], dev_issuer: DevIssuer
) -> None:
    hanging, url = hanging_jwks
    config = load_config(_config_with_timeouts(tmp_path, url, timeout=0.8, cooldown=0))
    gateway = Gateway(config)
    app = SidecarApp(config, gateway=gateway)
    try:
        started = time.monotonic()
        await gateway.start()
        assert time.monotonic() - started < 1.5  # both issuers at once: not 2 x 0.8 s
        assert hanging.hits == 2
        started = time.monotonic()
        ready, checks = await app.readiness()
        assert time.monotonic() - started < 1.5
        assert not ready and checks["keys.altinn"] == checks["keys.maskinporten"] == "not loaded"
        assert hanging.hits == 4
        # a request gets a generic 503: no URL, no "timed out"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as client:
            response = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, "c-1"))
        assert response.status_code == 503 and response.json()["reason"] == "keys_unavailable"
        assert "timed out" not in response.text and "127.0.0.1" not in response.text
    finally:
        await app.shutdown()
        await gateway.close()


@pytest.mark.anyio
async def test_many_concurrent_probes_fetch_the_jwks_once(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """JWKS unreachable at start-up: 50 concurrent probes and 50 more right after share one
    fetch per issuer per cooldown; a hanging JWKS holds a probe at most fetch_timeout."""
    hits: list[float] = []
    done = threading.Event()  # set when the test is over: the hanging JWKS stops hanging

    async def slow_jwks(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(time.monotonic())
        for _ in range(3000):  # hangs for 30 s (or until the test is over)
            if done.is_set():
                return
            await asyncio.sleep(0.01)

    with ThreadedServer(slow_jwks) as jwks:
        issuers = {"altinn": {"jwks_url": f"{jwks.url}/altinn/jwk", "fetch_timeout_seconds": 0.5,
                              "refetch_cooldown_seconds": 30},
                   "maskinporten": {"jwks_url": f"{jwks.url}/mp/jwk", "fetch_timeout_seconds": 0.5,
                                    "refetch_cooldown_seconds": 30}}
        try:
            async with running_gateway("sidecar", issuer_url, issuers=issuers) as gw:
                started = time.monotonic()
                hits.clear()
                async with httpx.AsyncClient(base_url=str(gw.client.base_url), timeout=10) as client:
                    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
                    answers += await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
                assert {a.status_code for a in answers} == {503}
                assert time.monotonic() - started < 5
                assert len(hits) <= 2, len(hits)  # at most one per issuer (start-up fetch already counted)
        finally:
            done.set()  # also when an assertion failed: the hanging JWKS must not hold the server 30 s
