"""Regression tests from review 4 (fixed): middleware form, unscoped route: an app that reads its (empty) request body after
starting its streamed answer. The disconnect watcher, started right after the response start
(GET / Content-Length: 0 count as 'body done'), takes the app's http.request message; the app's
receive then blocks until the client gives up."""
from __future__ import annotations

import httpx
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from tests.proxy_support import STREAM_PATH, answer_lifespan, routes_with_unscoped
from tests.support import a3_headers, make_config

pytestmark = pytest.mark.anyio


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"head-part;", "more_body": True})
    message = await receive()  # e.g. a generator that reads request.body() lazily
    await send({"type": "http.response.body", "body": message["type"].encode(), "more_body": False})


@pytest.mark.parametrize("method,extra", [("GET", {}), ("POST", {"Content-Length": "0"})])
async def test_app_reading_body_after_start(method, extra, dev_issuer, issuer_url) -> None:
    config = make_config(issuer_url, "http://upstream.invalid", routes=routes_with_unscoped())
    with ThreadedServer(ConsentMiddleware(app, config=config), proxy_headers=False) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=3) as client:
            try:
                r = await client.request(method, STREAM_PATH, headers={**a3_headers(dev_issuer), **extra})
                print(method, r.status_code, r.content)
                assert r.content == b"head-part;http.request"
            except httpx.ReadTimeout:
                pytest.fail(f"{method}: the app never got its request message (hung until the client timed out)")
