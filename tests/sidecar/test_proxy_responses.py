"""Response side of the enforcement path (issue 4): scoped bodies are decoded, scoped and
re-labelled; anything the gateway cannot scope is 502 with nothing released; upstream error
bodies never leave on scoped routes; unscoped routes stream. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest

from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import SCOPED_PATH, SECRET, STREAM_PATH, served
from tests.support import TAX_BASE_PERSON, a3_headers
import logging

pytestmark = pytest.mark.anyio
MODES = ["middleware", "sidecar"]


def _assert_scoped_2022(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["personidentifikator"] == TAX_BASE_PERSON and body["inntektsaar"] == "2022"
    assert SECRET not in response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers
    assert "content-encoding" not in response.headers
    assert "etag" not in response.headers and "last-modified" not in response.headers
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["json", "gzip", "deflate", "raw_deflate", "br", "gzip_br"])
async def test_scoped_body_decoded_and_relabelled(mode: str, case: str, dev_issuer: DevIssuer,
                                                  issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        # the client asks for identity: it must get an identity body, correctly labelled
        response = await gw.client.get(SCOPED_PATH + f"?case={case}",
                                       headers={**a3_headers(dev_issuer), "Accept-Encoding": "identity"})
        _assert_scoped_2022(response)
        record = gw.record_for(response)
        assert record.decision == "allow" and record.status == 200 and record.upstream_status == 200
        assert record.released_bytes == len(response.content)
        assert record.released_sha256 == hashlib.sha256(response.content).hexdigest()
        # the upstream was asked for encodings the gateway can decode, and no conditionals
        seen = dict(gw.lab.requests[-1]["headers"])
        assert seen["accept-encoding"] == "gzip, deflate, br"


@pytest.mark.parametrize("mode", MODES)
async def test_conditional_request_headers_not_forwarded_on_scoped(mode: str, dev_issuer: DevIssuer,
                                                                   issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH, headers={**a3_headers(dev_issuer), "If-None-Match": '"lab-etag"',
                                                             "If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT",
                                                             "Range": "bytes=0-10"})
        _assert_scoped_2022(response)
        names = {k for k, _ in gw.lab.requests[-1]["headers"]}
        assert not names & {"if-none-match", "if-modified-since", "range"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("zstd", "upstream_unknown_encoding"),
        ("corrupt_gzip", "upstream_bad_encoding"),
        ("gzip_bomb", "upstream_body_too_large"),
        ("html", "upstream_body_not_json"),
        ("bad_json", "upstream_body_not_json"),
    ],
)
async def test_unscopable_body_is_502_nothing_released(mode: str, case: str, reason: str, dev_issuer: DevIssuer,
                                                       issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + f"?case={case}", headers=a3_headers(dev_issuer))
        assert response.status_code == 502, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == reason
        assert SECRET not in response.text and TAX_BASE_PERSON not in response.text
        record = gw.record_for(response)
        assert record.decision == "error" and record.reason == reason and record.status == 502
        assert record.released_bytes == 0 and record.released_paths == []


@pytest.mark.parametrize("mode", MODES)
async def test_body_over_configured_size_is_502(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url, upstream={"max_body_bytes": 1000}) as gw:
        for case in ("json", "gzip"):  # 3.5 KB plain; ~1 KB compressed but 3.5 KB decoded
            response = await gw.client.get(SCOPED_PATH + f"?case={case}", headers=a3_headers(dev_issuer))
            assert response.status_code == 502, response.text
            assert response.json()["reason"] == "upstream_body_too_large"
            assert gw.record_for(response).released_bytes == 0


@pytest.mark.parametrize("mode", MODES)
async def test_oversized_scoped_body_stops_the_upstream(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """20 MiB declared on a scoped route with a 5 MB bound: 502 at once, and the app is told to
    stop (its send raises OSError, as when a client disconnects) instead of being read to the end."""
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=large", headers=a3_headers(dev_issuer))
        assert response.status_code == 502
        assert response.json()["reason"] == "upstream_body_too_large"
        assert gw.record_for(response).released_bytes == 0
        if mode == "middleware":
            assert gw.lab.aborted and gw.lab.chunks_sent == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [400, 404, 409, 500, 502, 503])
async def test_upstream_error_body_replaced_on_scoped(mode: str, status: int, dev_issuer: DevIssuer,
                                                      issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + f"?case=status&status={status}", headers=a3_headers(dev_issuer))
        assert response.status_code == status
        assert SECRET not in response.text and TAX_BASE_PERSON not in response.text
        assert SECRET not in str(response.headers) and "etag" not in response.headers
        problem = response.json()
        assert problem["status"] == status and problem["type"] == "urn:samtykke-gateway:error:upstream_status"
        # the same fields as the gateway's own refusals (here a 401's)
        own = (await gw.client.get(SCOPED_PATH)).json()
        assert set(problem) == set(own) == {"type", "title", "status", "detail", "reason", "correlation_id"}
        assert problem["reason"] == "upstream_status" and str(status) in problem["detail"]
        assert response.headers["content-length"] == str(len(response.content))
        record = gw.record_for(response)
        assert record.status == status and record.upstream_status == status
        # the generic body is the gateway's own: no data from the source was released
        assert record.reason == "upstream_status" and record.released_bytes == 0
        assert record.released_sha256 is None and record.released_paths == []


@pytest.mark.parametrize("mode", MODES)
async def test_upstream_error_passes_on_unscoped(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Unscoped routes are the data source's own business: status and body pass through."""
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(STREAM_PATH + "?case=status&status=503", headers=a3_headers(dev_issuer))
        assert response.status_code == 503
        assert SECRET in response.text
        assert gw.record_for(response).upstream_status == 503


@pytest.mark.parametrize("mode", MODES)
async def test_skatteetaten_error_style_generic_body(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url, gateway={"error_style": "skatteetaten"}) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=status&status=404", headers=a3_headers(dev_issuer))
        assert response.status_code == 404
        body = response.json()
        own = (await gw.client.get(SCOPED_PATH)).json()  # the gateway's own refusal (401)
        assert set(body) == set(own) == {"kode", "melding", "korrelasjonsid", "arsak"}
        assert body["arsak"] == "upstream_status" and body["kode"] == "SG-404"
        assert SECRET not in response.text


@pytest.mark.parametrize("mode", MODES)
async def test_head_on_scoped_route(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.head(SCOPED_PATH, headers=a3_headers(dev_issuer))
        assert response.status_code == 200
        assert response.content == b""
        # the upstream's Content-Length describes the unscoped body: it must not leak
        assert response.headers.get("content-length") in (None, "0")
        assert "etag" not in response.headers and response.headers["cache-control"] == "no-store"
        record = gw.record_for(response)
        assert record.decision == "allow" and record.released_bytes == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [304, 204])
async def test_bodyless_status_on_scoped_route(mode: str, status: int, dev_issuer: DevIssuer,
                                               issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + f"?case=status&status={status}", headers=a3_headers(dev_issuer))
        assert response.status_code == status
        assert response.content == b""
        assert "etag" not in response.headers and response.headers["cache-control"] == "no-store"
        assert "content-length" not in response.headers or status == 304
        record = gw.record_for(response)
        assert record.status == status and record.released_bytes == 0


@pytest.mark.parametrize("mode", MODES)
async def test_audit_down_releases_nothing(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        gw.store.set_unavailable(True)
        for path in (SCOPED_PATH, STREAM_PATH + "?case=stream"):
            gw.lab.release.set()
            response = await gw.client.get(path, headers=a3_headers(dev_issuer))
            assert response.status_code == 503, response.text
            assert response.json()["reason"] == "audit_unavailable"
            assert SECRET not in response.text and b"first-part" not in response.content


# ---------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("case", "first", "last"), [
    ("stream", b"first-part;", b"last-part"),
    ("sse", b"event: tick\ndata: 1\n\n", b"event: tick\ndata: 2\n\n"),
])
async def test_unscoped_route_streams(mode: str, case: str, first: bytes, last: bytes, dev_issuer: DevIssuer,
                                      issuer_url: str) -> None:
    """The first chunk reaches the client while the upstream still holds the last one back."""
    async with served(mode, issuer_url) as gw:
        async with gw.client.stream("GET", STREAM_PATH + f"?case={case}", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            parts = response.aiter_raw()
            got = await asyncio.wait_for(anext(parts), timeout=3)
            assert got == first
            assert not gw.lab.last_part_sent.is_set()  # proof: the upstream has not finished
            gw.lab.release.set()
            rest = b"".join([chunk async for chunk in parts])
            assert rest == last
        record = gw.record_for(response)
        assert record.decision == "allow" and record.rights_package is None


@pytest.mark.parametrize("mode", MODES)
async def test_unscoped_large_body_streams_past_max_body(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        total = 0
        started = time.perf_counter()
        async with gw.client.stream("GET", STREAM_PATH + "?case=large", headers=a3_headers(dev_issuer)) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(20 * 1024 * 1024)
            assert "transfer-encoding" not in response.headers
            async for chunk in response.aiter_raw():
                total += len(chunk)
        assert total == 20 * 1024 * 1024
        assert time.perf_counter() - started < 20


@pytest.mark.parametrize("mode", MODES)
async def test_unscoped_keeps_client_encoding_choice(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The gateway adds no Accept-Encoding of its own on unscoped routes (the client must be
    able to decode what it gets) and forwards the client's."""
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(STREAM_PATH + "?case=echo",
                                       headers={**a3_headers(dev_issuer), "Accept-Encoding": "identity"})
        assert response.status_code == 200
        encodings = [v for k, v in gw.lab.requests[-1]["headers"] if k == "accept-encoding"]
        assert encodings == ["identity"]
        response = await gw.client.get(STREAM_PATH + "?case=gzip",
                                       headers={**a3_headers(dev_issuer), "Accept-Encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"
        assert json.loads(response.content)["inntektsaar"] == "2022"  # httpx decoded it
        assert SECRET in response.text  # unscoped: the body is the upstream's


@pytest.mark.parametrize("mode", MODES)
async def test_request_body_forwarded_on_unscoped(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        payload = b"a" * 200_000
        response = await gw.client.post(STREAM_PATH + "?case=echo", headers=a3_headers(dev_issuer), content=payload)
        assert response.status_code == 200
        assert gw.lab.requests[-1]["body"] == payload


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_a_304_with_a_content_length_is_passed_on_without_a_body_and_recorded_complete(
        mode: str, dev_issuer: DevIssuer, issuer_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with served(mode, issuer_url) as gw:
        r = await gw.client.get(STREAM_PATH + "?case=304cl", headers={**a3_headers(dev_issuer), "If-None-Match": '"v1"'})
        assert r.status_code == 304 and r.content == b""
        end = await gw.stream_end_for(r.headers["x-correlation-id"])
        assert end.reason == "stream_end"
        assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == []
