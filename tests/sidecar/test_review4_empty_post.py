"""Regression tests from review 4 (fixed): sidecar, unscoped route, POST with an empty body (Content-Length: 0,
what httpx/requests/curl -d '' send). The disconnect watcher starts at once (CL 0 counts as
'body done') and takes the request's only http.request message; the proxy's body iterator then
waits for a message that never comes, and aiohttp (which sends the request head together with
the first body bytes) never sends the request: no answer until the client gives up."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.proxy_support import STREAM_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio


async def test_empty_post_gets_an_answer(dev_issuer, issuer_url) -> None:
    async with served("sidecar", issuer_url) as gw:
        started = time.monotonic()
        try:
            r = await gw.client.post(STREAM_PATH + "?case=echo", content=b"", headers=a3_headers(dev_issuer),
                                     timeout=5)
            outcome = f"{r.status_code} after {time.monotonic() - started:.1f}s"
        except httpx.ReadTimeout:
            outcome = f"no answer after {time.monotonic() - started:.1f}s (client timed out)"
        await asyncio.sleep(0.5)
        print("outcome:", outcome, "| upstream saw:", len(gw.lab.requests),
              "| records:", [(x.decision, x.reason, x.detail, x.status) for x in gw.records])
        assert outcome.startswith("200")
