"""The ASGI apps ``bench_proxy.py`` runs, each in its own uvicorn process (factories).

Configuration comes from environment variables set by the orchestrator:
``BENCH_UPSTREAM`` (``http://127.0.0.1:port``), ``BENCH_ISSUER`` (dev issuer JWKS base URL),
``BENCH_AUDIT`` (disclosure store URL).

* :func:`upstream` — the data API: the published 2022 specified-tax-base body (3.5 KB,
  ``spesifisertsummertskattegrunnlag-2022.json``) exactly as published, on every path.
* :func:`httpx_proxy`, :func:`httpx_aiohttp_proxy`, :func:`aiohttp_proxy` — minimal Starlette
  proxies with **no checks** (forward method, path, query, headers; stream the answer back).
* :func:`sidecar` — this project's sidecar (:class:`SidecarApp`): full verification of an
  Altinn 2 pair, scoping by the ``sbl`` package, a disclosure record per request.
* :func:`bare_app` / :func:`middleware_app` — the middleware form: an in-process Starlette app
  serving the same body, without / with :class:`ConsentMiddleware`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from samtykke_gateway.dev.examples import example_body

BODY = example_body("spesifisertsummertskattegrunnlag-2022.json")


def _small_body() -> bytes:
    """A 0.7 KB answer of the same API: the 2022 body's top-level members and its first
    ``grunnlag`` entries, compact JSON (the small-answer rows of issue 13)."""
    import json

    doc = json.loads(BODY)
    grunnlag = doc["grunnlag"]
    doc["grunnlag"] = []
    for entry in grunnlag:
        doc["grunnlag"].append(entry)
        if len(json.dumps(doc, separators=(",", ":")).encode()) >= 640:
            break
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


SMALL_BODY = _small_body()
TAX_BASE_ROUTE = "/api/formueinntekt/spesifisertsummertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}"
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}


def _served_body() -> bytes:
    """``BENCH_BODY=small`` selects the 0.7 KB answer, anything else the 3.5 KB one."""
    return SMALL_BODY if os.environ.get("BENCH_BODY") == "small" else BODY


def upstream() -> Any:
    """Raw ASGI: the same JSON for every request (the cheapest honest data API)."""
    body = _served_body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"etag", b'"ssg-2022"'),
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _closing(close: Callable[[], Awaitable[None]]) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await close()

    return lifespan


def _target(request: Request) -> str:
    query = request.url.query
    return os.environ["BENCH_UPSTREAM"] + request.url.path + ("?" + query if query else "")


def httpx_proxy() -> Any:
    """Starlette + httpx (default transport, httpcore), no checks."""
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
    )

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in _HOP]
        req = client.build_request(request.method, _target(request), headers=headers)
        resp = await client.send(req, stream=True)
        out = {k: v for k, v in resp.headers.items() if k not in _HOP}
        return StreamingResponse(
            resp.aiter_raw(),
            status_code=resp.status_code,
            headers=out,
            background=BackgroundTask(resp.aclose),
        )

    return Starlette(routes=[Route("/{path:path}", forward)], lifespan=_closing(client.aclose))


def httpx_aiohttp_proxy() -> Any:
    """Starlette + httpx's API over the ``httpx-aiohttp`` transport, no checks."""
    import httpx
    from httpx_aiohttp import AiohttpTransport

    client = httpx.AsyncClient(transport=AiohttpTransport())

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in _HOP]
        req = client.build_request(request.method, _target(request), headers=headers)
        resp = await client.send(req, stream=True)
        out = {k: v for k, v in resp.headers.items() if k not in _HOP}
        return StreamingResponse(
            resp.aiter_raw(),
            status_code=resp.status_code,
            headers=out,
            background=BackgroundTask(resp.aclose),
        )

    return Starlette(routes=[Route("/{path:path}", forward)], lifespan=_closing(client.aclose))


def aiohttp_proxy() -> Any:
    """Starlette + aiohttp's client directly, no checks."""
    import aiohttp

    state: dict[str, aiohttp.ClientSession] = {}

    def session() -> aiohttp.ClientSession:
        if "s" not in state:
            state["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
            )
        return state["s"]

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k not in _HOP]
        resp = await session().request(request.method, _target(request), headers=headers)
        out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}

        async def release() -> None:  # async: a sync callable would go through a thread pool
            resp.release()

        return StreamingResponse(
            resp.content.iter_any(),
            status_code=resp.status,
            headers=out,
            background=BackgroundTask(release),
        )

    async def close() -> None:
        if "s" in state:
            await state["s"].close()

    return Starlette(routes=[Route("/{path:path}", forward)], lifespan=_closing(close))


def _config() -> Any:
    from samtykke_gateway.cli.demo import demo_config

    return demo_config(
        issuer_url=os.environ["BENCH_ISSUER"],
        upstream_url=os.environ.get("BENCH_UPSTREAM", "http://x"),
        audit_url=os.environ["BENCH_AUDIT"],
    )


def sidecar() -> Any:
    from samtykke_gateway.sidecar.app import SidecarApp

    return SidecarApp(_config())


def served_sidecar() -> Any:
    """What ``samtykke-gateway serve`` runs (:class:`ReloadingApp` with the decision log, JSON
    logs at INFO appended to ``BENCH_LOG``), for another ASGI server: the config file is
    ``BENCH_CONFIG``."""
    from samtykke_gateway.observe.logs import configure_logging
    from samtykke_gateway.sidecar.serve import ReloadingApp

    configure_logging("INFO", stream=open(os.environ["BENCH_LOG"], "a", encoding="utf-8"))  # noqa: SIM115
    return ReloadingApp(os.environ["BENCH_CONFIG"])


def _body_endpoint() -> Callable[[Request], Awaitable[Response]]:
    body = _served_body()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return endpoint


def bare_app() -> Any:
    return Starlette(routes=[Route(TAX_BASE_ROUTE, _body_endpoint())])


def middleware_app() -> Any:
    from starlette.middleware import Middleware

    from samtykke_gateway.asgi.middleware import ConsentMiddleware

    return Starlette(
        routes=[Route(TAX_BASE_ROUTE, _body_endpoint())],
        middleware=[Middleware(ConsentMiddleware, config=_config())],
    )
