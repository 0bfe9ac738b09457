"""Regression tests from review 4 (fixed): sidecar / middleware disconnect-watch findings (real servers on 127.0.0.1)."""
from __future__ import annotations


import asyncio
import logging
import socket
import time

import pytest

from tests.proxy_support import STREAM_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("length_header", ["Content-Length: 0", None])
async def test_post_with_content_length_zero(length_header, dev_issuer, issuer_url, caplog) -> None:
    """A POST with ``Content-Length: 0`` on an unscoped route: the disconnect watcher starts at once
    (no framing counted) and takes the request's only (empty) body message from the proxy's body
    reader, which then waits until the response completes."""
    caplog.set_level(logging.DEBUG)
    async with served("sidecar", issuer_url) as gw:
        headers = a3_headers(dev_issuer)
        extra = {"Content-Length": "0"} if length_header else {}
        started = time.monotonic()
        r = await gw.client.post(STREAM_PATH + "?case=echo", content=b"", headers={**headers, **extra})
        elapsed = time.monotonic() - started
        print("status", r.status_code, f"elapsed {elapsed:.2f}", r.text[:200])
        await asyncio.sleep(0.5)
        print([(x.decision, x.reason, x.detail, x.status) for x in gw.records])
        print([ (x["method"], x["cut"], x["headers"]) for x in gw.lab.requests])
        for rec in caplog.records:
            if rec.levelno >= logging.WARNING or rec.exc_info:
                print("LOG", rec.name, rec.levelname, rec.getMessage()[:300])
        assert r.status_code == 200





def _ask_and_leave(port: int, target: str, auth: str, after_seconds: float) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        time.sleep(after_seconds)
    return time.monotonic()


async def test_client_leaving_while_the_start_record_is_written(dev_issuer, issuer_url) -> None:
    """The client leaves while the gateway writes the stream's start record (in_app is False):
    the watcher notes client_gone but does not cancel, and is never restarted, so the upstream
    request stays open until the upstream's next part or the read timeout (10 s), not at once."""
    async with served("sidecar", issuer_url) as gw:
        store = gw.store
        real_append = store.append

        async def slow_append(record):
            if record.reason == "ok":
                await asyncio.sleep(0.6)  # e.g. a PostgreSQL commit under load
            await real_append(record)

        store.append = slow_append
        port = int(gw.url.rsplit(":", 1)[1])
        auth = a3_headers(dev_issuer)["Authorization"]
        left = await asyncio.to_thread(_ask_and_leave, port, STREAM_PATH + "?case=hold", auth, 0.3)
        for _ in range(600):
            ends = [r for r in gw.records if r.reason in ("stream_end", "stream_cut")]
            if ends:
                break
            await asyncio.sleep(0.02)
        closed = time.monotonic()
        print("end record after %.2fs from client leaving:" % (closed - left),
              [(r.reason, r.detail, r.released_bytes) for r in gw.records])
        assert closed - left < 2, "the upstream request was held after the client left"


from tests.proxy_support import routes_with_unscoped  # noqa: E402


@pytest.mark.parametrize("slow_start_record", [True, False])
async def test_one_time_consent_not_spent_by_a_stream_nobody_received(slow_start_record, dev_issuer, issuer_url) -> None:
    """one_time route, unscoped: the client leaves before any body byte (with a slow start
    record: before even the response head was sent). The end record says 0 bytes, yet the
    one-time consent is spent (released was set True when the stream opened)."""
    routes = [dict(r, one_time=True) for r in routes_with_unscoped()]
    async with served("sidecar", issuer_url, routes=routes) as gw:
        if slow_start_record:
            real_append = gw.store.append

            async def slow_append(record):
                if record.reason == "ok":
                    await asyncio.sleep(0.6)
                await real_append(record)
            gw.store.append = slow_append
        port = int(gw.url.rsplit(":", 1)[1])
        headers = a3_headers(dev_issuer)
        await asyncio.to_thread(_ask_and_leave, port, STREAM_PATH + "?case=hold", headers["Authorization"], 0.3)
        for _ in range(600):
            if any(r.reason in ("stream_end", "stream_cut") for r in gw.records):
                break
            await asyncio.sleep(0.02)
        print([(r.reason, r.detail, r.status, r.released_bytes) for r in gw.records])
        gw.store.append = type(gw.store).append.__get__(gw.store)
        again = await gw.client.get(STREAM_PATH + "?case=echo", headers=headers)
        print("again:", again.status_code, again.text[:120])
        assert again.status_code == 200, "one-time consent spent though 0 bytes were delivered"
