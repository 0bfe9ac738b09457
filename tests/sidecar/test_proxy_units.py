"""Unit tests of the header and response rules (issue 4): pure functions, no servers."""

from __future__ import annotations

import gzip
from pathlib import Path
import zlib

import re
from urllib.parse import quote

import brotli
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samtykke_gateway.exceptions import BadRequestError, InvalidTokenError, UpstreamError
from samtykke_gateway.asgi.headers import check_request_framing, claim_header_value, strip_hop_by_hop
from samtykke_gateway.policy.routing import encode_path, normalize_path
from samtykke_gateway.asgi.responder import decode_body, scoped_release

from tests.proxy_support import TAX_BASE_2022

_BAD = re.compile(r"[\x00-\x1f\x7f/\\]|[\ud800-\udfff]")


def test_strip_hop_by_hop_drops_nominated_and_fixed_set() -> None:
    headers = [
        (b"Connection", b"X-A, x-b"),
        (b"connection", b"close"),
        (b"X-A", b"1"),
        (b"x-B", b"2"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"trailers"),
        (b"X-C", b"kept"),
    ]
    assert strip_hop_by_hop(headers) == [(b"X-C", b"kept")]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"Content-Length", b"5"), (b"Content-Length", b"5")],
        [(b"content-length", b"0x5")],
        [(b"content-length", b"-1")],
        [(b"content-length", b" 5")],
        [(b"content-length", "５".encode())],
        [(b"transfer-encoding", b"chunked, chunked")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
    ],
)
def test_ambiguous_framing(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequestError) as info:
        check_request_framing(headers)
    assert info.value.status_code == 400 and info.value.reason == "ambiguous_framing"


@pytest.mark.parametrize("headers", [[], [(b"content-length", b"12")], [(b"transfer-encoding", b"Chunked")]])
def test_plain_framing_accepted(headers: list[tuple[bytes, bytes]]) -> None:
    check_request_framing(headers)


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "æøå", "", "a\x00b", "x" * 257, "tab\there"])
def test_claim_values_validated_before_header(value: str) -> None:
    with pytest.raises(InvalidTokenError) as info:
        claim_header_value(value)
    assert info.value.status_code == 401 and info.value.reason == "unforwardable_claim"


def test_claim_value_ok() -> None:
    assert claim_header_value("0192:999999999") == b"0192:999999999"


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", gzip.compress(TAX_BASE_2022)),
        ("x-gzip", gzip.compress(TAX_BASE_2022)),
        ("deflate", zlib.compress(TAX_BASE_2022)),
        ("br", brotli.compress(TAX_BASE_2022)),
        ("gzip, br", brotli.compress(gzip.compress(TAX_BASE_2022))),
        ("identity", TAX_BASE_2022),
    ],
)
def test_decode_body(encoding: str, data: bytes) -> None:
    assert decode_body(data, encoding, max_bytes=10_000) == TAX_BASE_2022


@pytest.mark.parametrize(
    ("encoding", "data", "reason"),
    [
        ("compress", TAX_BASE_2022, "upstream_unknown_encoding"),
        ("gzip", TAX_BASE_2022, "upstream_bad_encoding"),
        ("br", brotli.compress(TAX_BASE_2022)[:-3], "upstream_bad_encoding"),
        ("gzip", gzip.compress(TAX_BASE_2022), "upstream_body_too_large"),
        ("br", brotli.compress(TAX_BASE_2022), "upstream_body_too_large"),
    ],
)
def test_decode_body_refuses(encoding: str, data: bytes, reason: str) -> None:
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
    assert sorted(names) == sorted([b"content-type", b"vary", b"content-length", b"cache-control",
                                    b"x-correlation-id"])
    assert dict(release.headers)[b"content-length"] == b"22"
    assert dict(release.headers)[b"x-correlation-id"] == b"cid-12345678"
    assert release.data_released and release.released_paths == ("inntektsaar",)


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"/a//b/./c/../d%41", ("a", "b", "dA")),
        (b"/", ()),
        (b"/a/b/..", ("a",)),
        (b"/%2e%2E/x".replace(b"/%2e%2E", b"/a/%2e%2E"), ("x",)),
        (b"/x/%7e/%20/%C3%A6", ("x", "~", " ", "æ")),
    ],
)
def test_normalize_path(raw: bytes, segments: tuple[str, ...]) -> None:
    assert normalize_path(raw) == segments


@pytest.mark.parametrize(
    "raw",
    [b"/a%2fb", b"/a%2F", b"/a%5cb", b"/a\\b", b"/a%00", b"/a%1f", b"/a%7f", b"/%ff", b"/..", b"/a/../..",
     "/æ".encode(), b"a/b", b"/" + b"a" * 5000],
)
def test_normalize_path_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequestError) as info:
        normalize_path(raw)
    assert info.value.reason == "bad_path"


@given(st.lists(st.text(max_size=12), max_size=5))
def test_encode_path_is_quote_and_round_trips(segments: list[str]) -> None:
    encoded = encode_path(segments)
    assert encoded == "/" + "/".join(quote(s, safe="!$&'()*+,;=:@-._~") for s in segments)
    kept = [s for s in segments if s not in ("", ".", "..")]
    if kept == segments and all(not _BAD.search(s) for s in segments):
        assert normalize_path(encoded.encode("ascii")) == tuple(segments)
