"""Reload in-process: in-flight requests finish on the old gateway, which is closed afterwards;
the consent state survives a reload that does not change ``[state]``; a refused reload keeps
the running generation."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.devserver import ThreadedServer
from samtykke_gateway.examples import ExampleUpstream
from samtykke_gateway.serve import ReloadingApp
from samtykke_gateway.testing import DevIssuer

from .state_support import write_config
from .support import tax_base_path
from .test_state_enforcement import a3

pytestmark = pytest.mark.anyio
ONE_TIME_TAX = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')


class SlowUpstream:
    def __init__(self) -> None:
        self.inner = ExampleUpstream().app
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.delay:
            await asyncio.sleep(self.delay)
        await self.inner(scope, receive, send)


async def test_reload_drains_in_flight_requests_and_keeps_state(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str) -> None:
    slow = SlowUpstream()
    with ThreadedServer(slow) as upstream:
        config = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url=upstream.url)
        config.write_text(config.read_text().replace(*ONE_TIME_TAX))
        app = ReloadingApp(config)
        await app.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test",
                                         timeout=10) as client:
                spent = str(uuid.uuid4())
                assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))).status_code == 200
                old = app.current
                assert old is not None
                slow.delay = 0.5
                in_flight = asyncio.create_task(client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4()))))
                await asyncio.sleep(0.2)
                assert old.inflight == 1
                config.write_text(config.read_text().replace('error_style = "problem"', 'error_style = "skatteetaten"'))
                assert await app.reload()
                assert app.current is not None and app.current is not old
                assert app.current.state is old.state  # [state] unchanged: kept
                assert not old.gateway.http.is_closed  # still serving the in-flight request
                response = await in_flight
                assert response.status_code == 200
                for _ in range(50):
                    if old.gateway.http.is_closed:
                        break
                    await asyncio.sleep(0.02)
                assert old.gateway.http.is_closed  # closed once drained
                slow.delay = 0
                # new config answers (skatteetaten error style) and the spent claim survived
                again = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))
                assert again.status_code == 403 and "kode" in again.json()
                # a refused reload keeps the running generation
                current = app.current
                config.write_text("[[routes]]\nname = 1\n")
                assert not await app.reload()
                assert app.current is current
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await app.close()
