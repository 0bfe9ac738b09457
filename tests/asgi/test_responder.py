"""Content-Encoding on scoped answers (``responder.decode_body``): every gzip member, nothing
after the compressed body, and a brotli bomb bounded while it expands (fresh-user review:
trailing garbage was ignored, a br bomb took ~65 MB before it was refused)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest

from samtykke_gateway.exceptions import UpstreamError
from samtykke_gateway.asgi.responder import decode_body

JSON = b'{"a": [1, 2, 3], "b": "\xc3\xa6"}'
LIMIT = 1024 * 1024


@pytest.mark.parametrize(("body", "coding"), [
    (gzip.compress(JSON), "gzip"),
    (gzip.compress(JSON[:9]) + gzip.compress(JSON[9:]), "gzip"),  # two members (RFC 1952 §2.2)
    (zlib.compress(JSON), "deflate"),
    (zlib.compress(JSON)[2:-4], "deflate"),  # raw deflate, as some servers send
    (brotli.compress(JSON), "br"),
    (gzip.compress(brotli.compress(JSON)), "br, gzip"),
])
def test_decodes(body: bytes, coding: str) -> None:
    assert decode_body(body, coding, max_bytes=LIMIT) == JSON


@pytest.mark.parametrize(("body", "coding"), [
    (gzip.compress(JSON) + b"garbage", "gzip"),
    (gzip.compress(JSON) + b"\x1f", "gzip"),
    (zlib.compress(JSON) + b"x", "deflate"),
    (brotli.compress(JSON) + b"zz", "br"),
    (gzip.compress(JSON)[:-3], "gzip"),
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
