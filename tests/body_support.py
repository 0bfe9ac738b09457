"""The body-subject harness: a gateway (either form) on a real loopback server in front of an
echo app, with POST/PUT/PATCH body-subject routes; raw-socket helpers for requests a client
library would normalise (repeated headers, ``Expect``, chunk trailers, framing mismatches)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tomllib
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.dev.server import ThreadedServer
from tests.proxy_support import answer_lifespan
from tests.support import TAX_BASE_PERSON, make_config, running_gateway


class Echo:
    """Upstream that records what it received and answers with the body it read."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        self.seen.append({"method": scope["method"], "path": scope["path"], "headers": headers, "body": body})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


OTHER_PERSON = "01029413157"
DEMO_TOML = Path(__file__).resolve().parent.parent / "samtykke_gateway" / "dev" / "data" / "demo.toml"
DEMO_ROUTES: list[dict[str, Any]] = tomllib.loads(DEMO_TOML.read_text())["routes"]
MODES = ["middleware", "sidecar"]
JSON = {"Content-Type": "application/json"}
LIMIT = 1024


def post_body_route(base: int, name: str, field: str, path: str, **extra: Any) -> dict[str, Any]:
    route = {k: v for k, v in DEMO_ROUTES[base].items() if k not in ("rights_package", "response_subject")}
    route.update(name=name, method=["POST", "PUT", "PATCH"], path=path, subject={"body": field}, unscoped=True,
                 **extra)
    return route


BODY_ROUTES = [
    *DEMO_ROUTES,
    post_body_route(1, "ssg-body", "fnr", "/api/b/{rettighetspakke}/{inntektsaar}"),
    post_body_route(1, "ssg-nested", "person.ident", "/api/n/{rettighetspakke}/{inntektsaar}"),
    # Altinn 2 income: the period is in the query, the subject in the body
    post_body_route(0, "inntekt-body", "fnr", "/api/i/{rettighetspakke}"),
]
BODY_OVERRIDES: dict[str, Any] = {"routes": BODY_ROUTES, "gateway": {"max_request_body_bytes": LIMIT}}
BODY = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
NESTED = b'{"person": {"ident": "%s"}}' % TAX_BASE_PERSON.encode()
PERIOD = "fraOgMed=2018-06&tilOgMed=2018-08"


class Served:
    """A gateway (either form) on a real loopback server, with its echo upstream."""

    def __init__(self, mode: str, url: str, echo: Echo, store: Any, extra: Any = None) -> None:
        self.mode, self.url, self.echo, self._store, self.extra = mode, url, echo, store, extra

    @property
    def records(self) -> list[DisclosureRecord]:
        return list(self._store.records)

    async def wait_records(self, n: int) -> list[DisclosureRecord]:
        for _ in range(200):  # written on the server's thread
            if len(self.records) >= n:
                break
            await asyncio.sleep(0.02)  # noqa: ASYNC110 - polling another thread's store
        return self.records

    def raw(self, head: str, body: bytes = b"", *, read: bool = True, timeout: float = 5.0) -> bytes:
        """Send ``head`` (request line + headers, CRLF-joined, no final blank line) and
        ``body`` as they are; return everything the server sent until it closed or went quiet."""
        u = urlsplit(self.url)
        with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
            sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
            if not read:
                return b""
            out = b""
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                sock.settimeout(1.0)
                while chunk := sock.recv(65536):
                    out += chunk
            return out


@contextlib.asynccontextmanager
async def served(mode: str, issuer_url: str, **overrides: Any) -> AsyncIterator[Served]:
    merged = {**BODY_OVERRIDES, **overrides}
    echo = Echo()
    if mode == "middleware":
        middleware = ConsentMiddleware(echo, config=make_config(issuer_url, "http://upstream.invalid", **merged))
        with ThreadedServer(middleware) as server:
            yield Served(mode, server.url, echo, middleware.gateway.store)
        return
    async with running_gateway("sidecar", issuer_url, upstream_app=echo, **merged) as gw:
        yield Served(mode, str(gw.client.base_url).rstrip("/"), echo, gw.store, gw.extra)


def raw_head(method: str, target: str, headers: list[tuple[str, str]]) -> str:
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: gateway.test", *(f"{k}: {v}" for k, v in headers),
                        "Connection: close"])


def raw_status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def raw_reason(raw: bytes) -> str:
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    with contextlib.suppress(ValueError):
        return str(json.loads(body).get("reason"))
    return ""


async def post_json(gw: Served, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
        return await client.request(method, path, content=body, headers=headers)
