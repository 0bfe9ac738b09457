"""The responder (``asgi/responder.py``): what leaves with a scoped body (only allow-listed upstream
headers; a body whose shape fits no path is refused), and Content-Encoding on scoped answers
(``decode_body``): every gzip member, nothing
after the compressed body, and a brotli bomb bounded while it expands (fresh-user review:
trailing garbage was ignored, a br bomb took ~65 MB before it was refused)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest

from samtykke_gateway.asgi.responder import decode_body, scoped_release
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.exceptions import UpstreamError
from tests.proxy_support import SCOPED_PATH, TAX_BASE_2022, served
from tests.support import a3_headers

JSON = b'{"a": [1, 2, 3], "b": "\xc3\xa6"}'
LIMIT = 1024 * 1024


@pytest.mark.parametrize(("body", "coding"), [
    (gzip.compress(JSON, mtime=0), "gzip"),
    (gzip.compress(JSON, mtime=0), "x-gzip"),
    (gzip.compress(JSON[:9], mtime=0) + gzip.compress(JSON[9:], mtime=0), "gzip"),  # two members (RFC 1952 §2.2)
    (zlib.compress(JSON), "deflate"),
    (zlib.compress(JSON)[2:-4], "deflate"),  # raw deflate, as some servers send
    (brotli.compress(JSON), "br"),
    (gzip.compress(brotli.compress(JSON), mtime=0), "br, gzip"),
    (brotli.compress(gzip.compress(JSON, mtime=0)), "gzip, br"),
    (JSON, "identity"),
])
def test_every_content_coding_and_stack_of_them_decodes_to_the_body(body: bytes, coding: str) -> None:
    assert decode_body(body, coding, max_bytes=LIMIT) == JSON


@pytest.mark.parametrize(("body", "coding"), [
    (gzip.compress(JSON, mtime=0) + b"garbage", "gzip"),
    (gzip.compress(JSON, mtime=0) + b"\x1f", "gzip"),
    (zlib.compress(JSON) + b"x", "deflate"),
    (brotli.compress(JSON) + b"zz", "br"),
    (gzip.compress(JSON, mtime=0)[:-3], "gzip"),
    (brotli.compress(JSON)[:-2], "br"),
    (b"", "br"),
])
def test_anything_after_or_missing_from_the_compressed_body_is_502(body: bytes, coding: str) -> None:
    with pytest.raises(UpstreamError) as info:
        decode_body(body, coding, max_bytes=LIMIT)
    assert info.value.reason == "upstream_bad_encoding"


@pytest.mark.parametrize("coding", ["br", "gzip"])
def test_bombs_are_refused_within_a_small_multiple_of_the_limit(coding: str) -> None:
    raw = b"\0" * (64 * LIMIT)
    bomb = brotli.compress(raw, quality=5) if coding == "br" else gzip.compress(raw)
    del raw
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError) as info:
            decode_body(bomb, coding, max_bytes=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "upstream_body_too_large"
    assert peak < 4 * LIMIT, peak


@pytest.mark.parametrize(
    ("encoding", "data", "reason"),
    [
        ("compress", TAX_BASE_2022, "upstream_unknown_encoding"),
        ("gzip", TAX_BASE_2022, "upstream_bad_encoding"),
        ("br", brotli.compress(TAX_BASE_2022)[:-3], "upstream_bad_encoding"),
        ("gzip", gzip.compress(TAX_BASE_2022, mtime=0), "upstream_body_too_large"),
        ("br", brotli.compress(TAX_BASE_2022), "upstream_body_too_large"),
    ],
)
def test_an_unknown_corrupt_or_oversized_coding_is_a_502_with_its_reason(encoding: str, data: bytes, reason: str) -> None:
    with pytest.raises(UpstreamError) as info:
        decode_body(data, encoding, max_bytes=1000 if reason == "upstream_body_too_large" else 100_000)
    assert info.value.status_code == 502 and info.value.reason == reason


def test_scoped_release_never_keeps_representation_headers() -> None:
    from samtykke_gateway.scoping.package import RightsPackage, ScopeContext

    package = RightsPackage.from_config("p", {"fields": ["inntektsaar"]}, base_dir=Path("."),
                                        key_path="p")
    headers = [
        (b"content-type", b"application/json"), (b"content-length", b"3500"), (b"etag", b'"x"'),
        (b"content-encoding", b"gzip"), (b"transfer-encoding", b"chunked"), (b"digest", b"sha-256=x"),
        (b"cache-control", b"public"), (b"x-correlation-id", b"upstream"), (b"vary", b"Accept"),
    ]
    release = scoped_release(200, headers, gzip.compress(TAX_BASE_2022), method="GET", package=package,
                             context=ScopeContext(), max_body_bytes=100_000, correlation_id="cid-12345678")
    assert release.body == b'{"inntektsaar":"2022"}'
    names = [n for n, _ in release.headers]
    assert sorted(names) == sorted([b"content-type", b"content-length", b"cache-control", b"x-correlation-id"])
    assert dict(release.headers)[b"content-length"] == b"22"
    assert dict(release.headers)[b"x-correlation-id"] == b"cid-12345678"
    assert release.data_released and release.released_paths == ("inntektsaar",)


@pytest.mark.parametrize(("status", "reason"), [(302, "no_data_released"), (307, "no_data_released"),
                                              (404, "upstream_status"), (503, "upstream_status")])
@pytest.mark.parametrize("style", ["problem", "skatteetaten"])
def test_the_generic_body_for_an_upstream_status_names_the_records_reason(status: int, reason: str,
                                                                           style: str) -> None:
    import json

    from samtykke_gateway.scoping.package import RightsPackage, ScopeContext

    package = RightsPackage.from_config("p", {"fields": ["a"]}, base_dir=Path("."), key_path="p")
    upstream = [(b"location", b"/elsewhere"), (b"set-cookie", b"s=1"), (b"content-type", b"text/html")]
    release = scoped_release(status, upstream, b"<a href=/elsewhere>12879397780</a>", method="GET", package=package,
                             context=ScopeContext(), max_body_bytes=1000, correlation_id="cid-12345678",
                             error_style=style)
    body = json.loads(release.body)
    assert release.reason == reason and reason in (body.get("reason"), body.get("arsak"))
    assert b"12879397780" not in release.body and b"location" not in dict(release.headers)


def _release(status: int, headers: list[tuple[bytes, bytes]], body: bytes = b'{"inntektsaar":"2022"}', *,
             method: str = "GET", release_headers: frozenset[bytes] = frozenset()) -> Any:
    from samtykke_gateway.scoping.package import RightsPackage, ScopeContext

    package = RightsPackage.from_config("p", {"fields": ["inntektsaar"]}, base_dir=Path("."), key_path="p")
    return scoped_release(status, headers, body, method=method, package=package, context=ScopeContext(),
                          max_body_bytes=100_000, correlation_id="cid-12345678", release_headers=release_headers)


@pytest.mark.parametrize(("status", "method"), [(200, "GET"), (200, "HEAD"), (204, "GET"), (304, "GET")])
def test_released_header_values_are_checked_not_passed_as_free_text(status: int, method: str) -> None:
    """An upstream cannot put data into the few headers a scoped answer keeps: Content-Type
    leaves as the checked media type alone, Content-Language only as language tags, Vary not
    at all (the answer is no-store); the same on HEAD and bodyless answers."""
    sneaky = [(b"Content-Type", b"application/json; leak=01010112345-income-50000"),
              (b"Content-Language", b"01010112345"), (b"Vary", b"X-Salary-99999")]
    release = _release(status, sneaky, b"" if status != 200 else b'{"inntektsaar":"2022"}', method=method)
    headers = dict(release.headers)
    assert headers.get(b"content-type", b"application/json") == b"application/json"
    assert b"content-language" not in headers and b"vary" not in headers
    assert b"01010112345" not in b"".join(v for _, v in release.headers)
    fine = _release(200, [(b"content-type", b"application/vnd.x+json;charset=UTF-8"),
                          (b"content-language", b"nb-NO, en")])
    assert (b"content-type", b"application/vnd.x+json") in fine.headers
    assert (b"content-language", b"nb-NO, en") in fine.headers
    chosen = _release(200, [(b"content-type", b"application/json"), (b"vary", b"Accept")],
                      release_headers=frozenset({b"vary"}))
    assert (b"vary", b"Accept") in chosen.headers  # a deployment's own release_headers leave as sent


def test_two_content_types_are_not_json() -> None:
    with pytest.raises(UpstreamError) as caught:
        _release(200, [(b"content-type", b"text/plain; secret=1"), (b"content-type", b"application/json")])
    assert caught.value.reason == "upstream_body_not_json"


def test_the_not_json_detail_tells_nothing_about_the_withheld_body() -> None:
    details = set()
    for secret in (b"AB", b"ABCDEFGHIJKLMNOP"):
        with pytest.raises(UpstreamError) as caught:
            _release(200, [(b"content-type", b"application/json")], b'{"inntektsaar":"2022","s":"' + secret + b'" "x":1}')
        details.add(caught.value.detail)
    assert details == {"upstream body is not JSON"}


MODES = ["middleware", "sidecar"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_scoped_response_headers_are_allow_listed(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=leaky-headers", headers=a3_headers(dev_issuer))
        assert response.status_code == 200, response.text
        for name in ("set-cookie", "x-internal-secret", "x-person-id", "content-disposition", "link", "etag"):
            assert name not in response.headers, name
        assert "01029413157" not in str(response.headers)
        assert response.headers["content-language"] == "nb"
        assert response.headers.get_list("date") == [response.headers["date"]]  # exactly one Date
        assert "2024" not in response.headers["date"]  # the server's own, not the upstream's


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_release_headers_extends_the_allow_list(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url, upstream={"release_headers": ["X-Internal-Secret"]}) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=leaky-headers", headers=a3_headers(dev_issuer))
        assert response.headers["x-internal-secret"] == "token-abc"
        assert "set-cookie" not in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_body_of_unexpected_shape_is_502(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=top-level-array", headers=a3_headers(dev_issuer))
        assert response.status_code == 502
        assert response.json()["reason"] == "upstream_body_unexpected_shape"
        assert "12879397780" not in response.text
        assert gw.records[-1].released_bytes == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_connection_cannot_nominate_gateway_headers(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    headers = {**a3_headers(dev_issuer),
               "Connection": "x-samtykke-consumer, x-samtykke-consent-id, x-correlation-id, x-samtykke-resource"}
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH, headers=headers)
        assert response.status_code == 200, response.text
        seen = dict(gw.lab.requests[-1]["headers"])
        assert seen["x-samtykke-consumer"] == "999999999"
        assert seen["x-samtykke-resource"] == "ske-spesifisert-summert-skattegrunnlag"
        assert "x-samtykke-consent-id" in seen and "x-correlation-id" in seen
