"""Streamed (unscoped) answers in the disclosure log: the decision record is written before the
first byte leaves, and a second record with the same correlation id says how the stream ended
(``stream_end`` / ``stream_cut``) with the bytes and SHA-256 of what was handed to the server.
``audit export`` shows the two as one disclosure. Real servers on 127.0.0.1 (``served``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from types import TracebackType
from typing import Any, cast

import httpx
import pytest

from samtykke_gateway.cli.audit import export_document
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import STREAM_PATH, served
from tests.support import TAX_BASE_PERSON, a3_headers
import socket
import time
from tests.proxy_support import routes_with_unscoped

pytestmark = pytest.mark.anyio

MODES = ["middleware", "sidecar"]


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """No server logged an exception traceback (``Exception in ASGI application``) and no
    log line holds the person id."""
    for rec in caplog.records:
        assert rec.exc_info is None or rec.name.startswith("lab"), (rec.name, rec.getMessage())
        assert rec.name == "httpx" or TAX_BASE_PERSON not in rec.getMessage()  # httpx: the test's own client


@pytest.mark.parametrize("mode", MODES)
async def test_complete_stream_gets_an_end_record(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        gw.lab.release.set()
        response = await gw.client.get(STREAM_PATH + "?case=stream", headers=a3_headers(dev_issuer))
        assert response.status_code == 200 and response.content == b"first-part;last-part"
        start = gw.record_for(response)
        assert (start.decision, start.reason, start.released_bytes, start.released_sha256) == ("allow", "ok", 0, None)
        end = await gw.stream_end_for(start.correlation_id)
        assert end.decision == "allow" and end.reason == "stream_end" and end.detail is None
        assert end.released_bytes == len(response.content)
        assert end.released_sha256 == hashlib.sha256(response.content).hexdigest()
        # the end record stands on its own: same consent, parties and request
        for name in ("consent_id", "subject", "consumer", "route", "path", "method", "status", "jti"):
            assert getattr(end, name) == getattr(start, name), name
        assert end.time >= start.time


@pytest.mark.parametrize("mode", MODES)
async def test_stream_cut_by_the_data_api_is_recorded(mode: str, dev_issuer: DevIssuer, issuer_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The data API fails after one part: the client's stream ends without its last chunk, the
    end record says ``stream_cut`` and counts the one part; no traceback from the gateway."""
    caplog.set_level(logging.INFO)
    async with served(mode, issuer_url) as gw:
        got = b""
        async with gw.client.stream("GET", STREAM_PATH + "?case=cut", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            cid = response.headers["x-correlation-id"]
            parts = response.aiter_raw()
            got += await asyncio.wait_for(anext(parts), timeout=3)
            gw.lab.release.set()
            with pytest.raises(httpx.RemoteProtocolError):  # incomplete, never a clean end
                async for chunk in parts:
                    got += chunk
        assert got == b"first-part;"
        end = await gw.stream_end_for(cid)
        assert end.reason == "stream_cut"
        assert end.detail == ("upstream_error" if mode == "middleware" else "upstream_broken")
        assert end.released_bytes == len(got) and end.released_sha256 == hashlib.sha256(got).hexdigest()
        gateway_logs = [r for r in caplog.records if r.name.startswith("samtykke_gateway")]
        assert any("cut off" in r.getMessage() and cid in r.getMessage() for r in gateway_logs)
        if mode == "sidecar":  # the lab (upstream) runs on its own server, which logs its own crash
            assert not any("Exception in ASGI application" in r.getMessage() and r.exc_info
                           and "samtykke_gateway" in str(cast(TracebackType, r.exc_info[2]).tb_frame.f_code.co_filename)
                           for r in caplog.records)
        else:  # the lab runs inside the gateway's server: the app's exception is not logged as a traceback
            assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert not any(TAX_BASE_PERSON in r.getMessage() for r in caplog.records if r.name != "httpx")  # test client


async def test_deadline_cut_is_recorded_without_a_traceback(dev_issuer: DevIssuer, issuer_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """``[upstream] deadline_seconds`` cuts a trickling answer: ``stream_cut`` with
    ``upstream_timeout`` and the bytes that left; the server logs no traceback (it used to log
    uvicorn's ``Exception in ASGI application``)."""
    caplog.set_level(logging.INFO)
    async with served("sidecar", issuer_url, upstream={"timeout_seconds": 0.3, "deadline_seconds": 1.0}) as gw:
        got = b""
        async with gw.client.stream("GET", STREAM_PATH + "?case=trickle", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            cid = response.headers["x-correlation-id"]
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in response.aiter_raw():
                    got += chunk
        assert 0 < len(got) < 100
        end = await gw.stream_end_for(cid)
        assert (end.reason, end.detail) == ("stream_cut", "upstream_timeout")
        assert end.released_bytes == len(got) and end.released_sha256 == hashlib.sha256(got).hexdigest()
        assert not [r.getMessage() for r in caplog.records if r.exc_info], "a traceback was logged"
        _no_tracebacks(caplog)


@pytest.mark.parametrize("mode", MODES)
async def test_store_down_at_stream_end_is_logged_not_raised(mode: str, dev_issuer: DevIssuer, issuer_url: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The store goes down while the answer streams: the bytes have left, the client's stream is
    complete, the start record stands and the missing end is logged as an error."""
    caplog.set_level(logging.INFO)
    async with served(mode, issuer_url) as gw:
        async with gw.client.stream("GET", STREAM_PATH + "?case=stream", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            cid = response.headers["x-correlation-id"]
            parts = response.aiter_raw()
            first = await asyncio.wait_for(anext(parts), timeout=3)
            gw.store.set_unavailable(True)
            gw.lab.release.set()
            rest = b"".join([c async for c in parts])
        assert first + rest == b"first-part;last-part"
        for _ in range(100):
            if any("end of a streamed answer" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("samtykke_gateway")]
        assert any(cid in r.getMessage() and "end of a streamed answer" in r.getMessage() for r in errors)
        assert [r.reason for r in gw.records if r.correlation_id == cid] == ["ok"]
        _no_tracebacks(caplog)


@pytest.mark.parametrize("mode", MODES)
async def test_client_gone_mid_stream_stops_the_answer(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The client leaves after the first part of a 20 MiB answer: the gateway stops passing it
    on (the app's ``send`` raises ``OSError``; the sidecar closes the upstream response) and the
    end record says ``stream_cut`` / ``client_disconnected`` with what had left by then."""
    async with served(mode, issuer_url) as gw:
        async with gw.client.stream("GET", STREAM_PATH + "?case=large", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            cid = response.headers["x-correlation-id"]
            await asyncio.wait_for(anext(response.aiter_raw()), timeout=5)
        # leaving the block closes the connection mid-body
        end = await gw.stream_end_for(cid, timeout_seconds=10)
        assert (end.reason, end.detail) == ("stream_cut", "client_disconnected")
        assert 0 < end.released_bytes < 20 * 1024 * 1024
        if mode == "middleware":  # the app itself was told (send raised OSError)
            assert gw.lab.aborted and gw.lab.chunks_sent < 320


@pytest.mark.parametrize("mode", MODES)
async def test_streamed_post_body_reaches_the_app_whole(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A request body on an unscoped route is still the app's alone (the disconnect watch only
    starts once the app has had all of it)."""
    async with served(mode, issuer_url) as gw:
        body = b"z" * 300_000
        response = await gw.client.post(STREAM_PATH + "?case=echo", content=body,
                                        headers={**a3_headers(dev_issuer), "Content-Type": "application/octet-stream"})
        assert response.status_code == 200
        assert gw.lab.requests[-1]["body"] == body
        end = await gw.stream_end_for(response.headers["x-correlation-id"])
        assert end.reason == "stream_end" and end.released_bytes == len(response.content)


@pytest.mark.parametrize("mode", MODES)
async def test_head_on_unscoped_route_ends_with_zero_bytes(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.head(STREAM_PATH + "?case=echo", headers=a3_headers(dev_issuer))
        assert response.status_code == 200 and response.content == b""
        end = await gw.stream_end_for(response.headers["x-correlation-id"])
        assert end.reason == "stream_end" and end.released_bytes == 0


# ----------------------------------------------------------------------------- export


def _record(**fields: Any) -> DisclosureRecord:
    base: dict[str, Any] = dict(time="2026-11-29T10:00:00.000000Z", correlation_id="c1", decision="allow",
                                reason="ok", status=200, method="GET", path="/api/lab/stream/x", route="lab-stream",
                                subject="12345678901", consumer="999999999", consent_id="k1")
    return DisclosureRecord(**(base | fields))


def test_export_folds_the_end_into_its_disclosure() -> None:
    records = [
        _record(),
        _record(correlation_id="c2"),
        _record(time="2026-11-29T10:00:01.000000Z", reason="stream_end", released_bytes=20,
                released_sha256="ab" * 32),
        _record(time="2026-11-29T10:00:02.000000Z", correlation_id="c2", reason="stream_cut",
                detail="upstream_timeout", released_bytes=7, released_sha256="cd" * 32),
        _record(correlation_id="c3"),  # no end record (gateway stopped mid-stream)
        _record(correlation_id="c4", reason="stream_end", released_bytes=3, released_sha256="ef" * 32),  # no start
        _record(correlation_id="c5", rights_package="sbl", released_bytes=99, released_sha256="01" * 32),  # scoped
    ]
    doc = export_document("12345678901", records)
    got = {d["correlation_id"]: d for d in doc["disclosures"]}
    assert len(doc["disclosures"]) == 5 and doc["denied_attempts"] == []
    assert (got["c1"]["stream_end"], got["c1"]["released_bytes"], got["c1"]["released_sha256"]) == \
        ("complete", 20, "ab" * 32)
    assert got["c1"]["time"] == "2026-11-29T10:00:00.000000Z"  # the decision's time
    assert (got["c2"]["stream_end"], got["c2"]["stream_cut_reason"], got["c2"]["released_bytes"]) == \
        ("cut", "upstream_timeout", 7)
    # no end record: the bytes are unknown, never a definite 0 (fresh-user review)
    assert got["c3"]["stream_end"] is None and got["c3"]["released_bytes"] is None
    assert got["c3"]["released_sha256"] is None
    assert got["c4"]["stream_end"] == "complete" and got["c4"]["released_bytes"] == 3
    assert "stream_end" not in got["c5"] and got["c5"]["released_bytes"] == 99


def test_export_pairs_a_reused_correlation_id_in_order() -> None:
    """Clients may supply correlation ids: two streams with one id pair start→end in order."""
    records = [
        _record(),
        _record(time="2026-11-29T10:00:01.000000Z", reason="stream_end", released_bytes=1, released_sha256="aa" * 32),
        _record(time="2026-11-29T10:00:02.000000Z"),
        _record(time="2026-11-29T10:00:03.000000Z", reason="stream_cut", detail="client_disconnected",
                released_bytes=2, released_sha256="bb" * 32),
    ]
    first, second = export_document("12345678901", records)["disclosures"]
    assert (first["stream_end"], first["released_bytes"]) == ("complete", 1)
    assert (second["stream_end"], second["released_bytes"], second["stream_cut_reason"]) == \
        ("cut", 2, "client_disconnected")


def _read_a_little_and_leave(port: int, target: str, auth: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        got = 0
        while got < 200_000:
            got += len(sock.recv(65536))
        time.sleep(1.0)  # the server's buffer is full; it waits to drain
        return got      # closing with unread data: the client left


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_client_gone_during_drain_is_recorded_cut(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        got = await asyncio.to_thread(_read_a_little_and_leave, port, STREAM_PATH + "?case=bigfinal",
                                      a3_headers(dev_issuer)["Authorization"])
        await gw.wait_records(2, timeout_seconds=6)
        [end] = [r for r in gw.records if r.reason in ("stream_end", "stream_cut")]
        assert end.reason == "stream_cut", f"the record says the client got the whole stream ({got} bytes read)"


def _ask_and_leave(port: int, target: str, auth: str, after_seconds: float) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        time.sleep(after_seconds)
    return time.monotonic()


async def test_client_leaving_while_the_start_record_is_written(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The client leaves while the gateway writes the stream's start record (a slow store): the
    upstream request is still closed soon after (under 2 s), not held until the upstream's next
    part or the read timeout (10 s), and the stream's end is recorded."""
    async with served("sidecar", issuer_url) as gw:
        store = gw.store
        real_append = store.append

        async def slow_append(record: DisclosureRecord) -> None:
            if record.reason == "ok":
                await asyncio.sleep(0.6)  # e.g. a PostgreSQL commit under load
            await real_append(record)

        store.append = slow_append
        port = int(gw.url.rsplit(":", 1)[1])
        auth = a3_headers(dev_issuer)["Authorization"]
        left = await asyncio.to_thread(_ask_and_leave, port, STREAM_PATH + "?case=hold", auth, 0.3)
        await gw.wait_records(2, timeout_seconds=12)
        closed = time.monotonic()
        ends = [r for r in gw.records if r.reason in ("stream_end", "stream_cut")]
        assert len(ends) == 1, gw.records
        assert closed - left < 2, "the upstream request was held after the client left"


@pytest.mark.parametrize("slow_start_record", [True, False])
async def test_one_time_consent_not_spent_by_a_stream_nobody_received(slow_start_record: bool, dev_issuer: DevIssuer,
                                                                      issuer_url: str) -> None:
    """one_time route, unscoped: the client leaves before any body byte (with a slow start
    record: before even the response head was sent). Nothing was delivered, so the one-time
    consent is not spent: the same consent is served again."""
    routes = [dict(r, one_time=True) for r in routes_with_unscoped()]
    async with served("sidecar", issuer_url, routes=routes) as gw:
        if slow_start_record:
            real_append = gw.store.append

            async def slow_append(record: DisclosureRecord) -> None:
                if record.reason == "ok":
                    await asyncio.sleep(0.6)
                await real_append(record)
            gw.store.append = slow_append
        port = int(gw.url.rsplit(":", 1)[1])
        headers = a3_headers(dev_issuer)
        await asyncio.to_thread(_ask_and_leave, port, STREAM_PATH + "?case=hold", headers["Authorization"], 0.3)
        await gw.wait_records(2, timeout_seconds=12)
        assert all(r.released_bytes in (None, 0) for r in gw.records), gw.records
        gw.store.append = type(gw.store).append.__get__(gw.store)
        again = await gw.client.get(STREAM_PATH + "?case=echo", headers=headers)
        assert again.status_code == 200, "one-time consent spent though 0 bytes were delivered"
