"""Regression tests from review 4 (fixed): an unscoped 304 (or HEAD-like) answer that carries the representation's Content-Length."""
from __future__ import annotations

import logging

import pytest

from tests.proxy_support import STREAM_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio




@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_304_with_content_length(mode, dev_issuer, issuer_url, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with served(mode, issuer_url) as gw:
        r = await gw.client.get(STREAM_PATH + "?case=304cl", headers={**a3_headers(dev_issuer), "If-None-Match": '"v1"'})
        end = await gw.stream_end_for(r.headers["x-correlation-id"])
        print(mode, r.status_code, end.reason, end.detail)
        for rec in caplog.records:
            if rec.levelno >= logging.WARNING:
                print("  LOG", rec.name, rec.levelname, rec.getMessage()[:120], "exc" if rec.exc_info else "")
        assert end.reason == "stream_end"
