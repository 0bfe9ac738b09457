"""Regression tests from review 4 (fixed): pipelined requests on one connection through the sidecar (watcher per exchange)."""
from __future__ import annotations

import asyncio

import pytest

from tests.proxy_support import SCOPED_PATH, STREAM_PATH, raw_exchange, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["sidecar", "middleware"])
async def test_pipelined(mode, dev_issuer, issuer_url) -> None:
    async with served(mode, issuer_url) as gw:
        gw.lab.release.set()
        auth = a3_headers(dev_issuer)["Authorization"]
        reqs = b"".join(
            f"GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{c}\r\n".encode()
            for p, c in [(STREAM_PATH + "?case=stream", ""), (SCOPED_PATH + "?case=json", ""),
                         (STREAM_PATH + "?case=echo", "Connection: close\r\n")])
        _status, _headers, body = await asyncio.to_thread(raw_exchange, gw.url, reqs)
        await asyncio.sleep(0.5)
        print(mode, body.count(b"HTTP/1.1 200"), [(r.reason, r.detail, r.released_bytes) for r in gw.records])
        assert body.count(b"HTTP/1.1 200") == 2  # 3 responses; the first status line is parsed off
        assert sorted(r.reason for r in gw.records) == ["ok", "ok", "ok", "stream_end", "stream_end"]
