"""Harness for the HTTP-correctness tests (issue 4): a scriptable upstream ("lab") on a real
uvicorn server, and the gateway in both forms *also* on a real server on 127.0.0.1 — the
in-process middleware wrapped around the lab app, or the sidecar in front of it. Real servers
on both sides, so streaming, framing and header handling are what a client really sees.

The lab's behaviour is chosen per request by the ``case`` query parameter (the gate forwards
parameters it does not govern); see :class:`LabUpstream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import tomllib
import zlib
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import brotli
import httpx

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.sidecar.serve import bounded_http_options
from samtykke_gateway.dev.examples import example_body
from samtykke_gateway.asgi.middleware import ConsentMiddleware

from tests.support import TAX_BASE_PERSON, TAX_BASE_RESOURCE, TAX_BASE_SCOPE, make_config, tax_base_path

SCOPED_PATH = tax_base_path("2022")
STREAM_PATH = f"/api/lab/stream/{TAX_BASE_PERSON}"
TAX_BASE_2022 = example_body("spesifisertsummertskattegrunnlag-2022.json")
SECRET = "Hakke peiling"  # a name inside the 2022 example's specifications: must never leave

UNSCOPED_ROUTE = {
    "name": "lab-stream",
    "method": ["GET", "POST"],
    "path": "/api/lab/stream/{personidentifikator}",
    "scope": TAX_BASE_SCOPE,
    "subject": {"path": "personidentifikator"},
    "altinn3_resources": [TAX_BASE_RESOURCE],
    "unscoped": True,
}


def routes_with_unscoped() -> list[dict[str, Any]]:
    """The demo routes plus one unscoped route (no rights package: streams through)."""
    text = resources.files("samtykke_gateway.dev.data").joinpath("demo.toml").read_text(encoding="utf-8")
    return [*tomllib.loads(text)["routes"], UNSCOPED_ROUTE]


Headers = list[tuple[bytes, bytes]]
STREAM_END_REASONS = ("stream_end", "stream_cut")


class LabUpstream:
    """Raw ASGI upstream whose answer is picked by ``?case=``.

    ``requests``: one dict per request (``path``, ``raw_path``, ``query``, ``headers`` as
    lower-cased ``str`` pairs, ``body`` bytes). ``release``: a :class:`threading.Event` the
    ``stream``/``sse`` cases wait on (up to 5 s) before sending their last part;
    ``last_part_sent`` is set when they did. ``stopping``: set when the test's server shuts down;
    the cases that stay silent for seconds (``slow``, ``hold``) end then, so no test waits them out.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.stopping = threading.Event()
        self.last_part_sent = threading.Event()
        self.chunks_sent = 0
        self.aborted = False

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        cut = message["type"] == "http.disconnect"  # the body never ended
        query = parse_qs(scope.get("query_string", b"").decode("ascii"))
        self.requests.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
                "query": scope.get("query_string", b"").decode("latin-1"),
                "headers": [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]],
                "body": body,
                "cut": cut,
            }
        )
        case = query.get("case", ["json"])[0]
        await getattr(self, "case_" + case.replace("-", "_"))(scope, send)

    @staticmethod
    async def _answer(send: Any, status: int, headers: Headers, body: bytes, *, head: bool = False) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _json(self, scope: dict[str, Any], send: Any, body: bytes, encoding: str | None = None,
                    extra: Headers = ()) -> None:  # type: ignore[assignment]
        headers: Headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"etag", b'"lab-etag"'),
            (b"cache-control", b"max-age=600"),
            (b"last-modified", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        ]
        if encoding:
            headers.append((b"content-encoding", encoding.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await self._answer(send, 200, headers + list(extra), body, head=scope["method"] == "HEAD")

    async def case_json(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, TAX_BASE_2022)

    async def case_hop(self, scope: dict[str, Any], send: Any) -> None:
        extra = [
            (b"connection", b"X-Up-Hop, X-Up-Other"),
            (b"x-up-hop", b"hop-secret"),
            (b"x-up-other", b"other-secret"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b"Basic realm=x"),
            (b"trailer", b"X-Checksum"),
            (b"x-up-end2end", b"kept"),
        ]
        await self._json(scope, send, TAX_BASE_2022, extra=extra)

    async def case_leaky_headers(self, scope: dict[str, Any], send: Any) -> None:
        extra = [
            (b"set-cookie", b"session=upstream-secret"),
            (b"x-internal-secret", b"token-abc"),
            (b"x-person-id", b"01029413157"),
            (b"content-disposition", b"attachment; filename=01029413157.json"),
            (b"link", b"</api/x/12345678901>; rel=next"),
            (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"content-language", b"nb"),
        ]
        await self._json(scope, send, TAX_BASE_2022, extra=extra)

    async def case_top_level_array(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, b'[{"personidentifikator": "12879397780"}]')

    async def case_gzip(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, gzip.compress(TAX_BASE_2022), "gzip")

    async def case_deflate(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, zlib.compress(TAX_BASE_2022), "deflate")

    async def case_raw_deflate(self, scope: dict[str, Any], send: Any) -> None:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        await self._json(scope, send, c.compress(TAX_BASE_2022) + c.flush(), "deflate")

    async def case_br(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, brotli.compress(TAX_BASE_2022), "br")

    async def case_gzip_br(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, brotli.compress(gzip.compress(TAX_BASE_2022)), "gzip, br")

    async def case_zstd(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, b"(\xb5/\xfd" + TAX_BASE_2022, "zstd")

    async def case_corrupt_gzip(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, gzip.compress(TAX_BASE_2022)[:-20], "gzip")

    async def case_gzip_bomb(self, scope: dict[str, Any], send: Any) -> None:
        await self._json(scope, send, gzip.compress(b'{"x":"' + b"0" * 8_000_000 + b'"}'), "gzip")

    async def case_html(self, scope: dict[str, Any], send: Any) -> None:
        body = f"<html>{SECRET}</html>".encode()
        await self._answer(send, 200, [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())], body)

    async def case_bad_json(self, scope: dict[str, Any], send: Any) -> None:
        body = b'{"personidentifikator": "12879397780", "navn": "' + SECRET.encode()
        await self._json(scope, send, body)

    async def case_status(self, scope: dict[str, Any], send: Any) -> None:
        query = parse_qs(scope["query_string"].decode())
        status = int(query["status"][0])
        body = json.dumps({"melding": f"{SECRET} (12879397780) finnes ikke"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"etag", b'"e"'), (b"x-up-debug", SECRET.encode())]
        if status in (204, 304):
            headers, body = [(b"etag", b'"lab-etag"'), (b"cache-control", b"max-age=600")], b""
        await self._answer(send, status, headers, body)

    async def _silent(self, seconds: float) -> None:
        """Stay silent for ``seconds``, or until the test's server shuts down."""
        for _ in range(int(seconds / 0.01)):
            if self.stopping.is_set():
                return
            await asyncio.sleep(0.01)

    async def case_slow(self, scope: dict[str, Any], send: Any) -> None:
        await self._silent(3)
        await self._json(scope, send, TAX_BASE_2022)

    async def case_hold(self, scope: dict[str, Any], send: Any) -> None:
        """Start, then one part only after 8 s (silent long past any client that left)."""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await self._silent(8)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"data: late\n\n", "more_body": False})

    async def case_304cl(self, scope: dict[str, Any], send: Any) -> None:
        # RFC 9110 §8.6: a 304 may carry the Content-Length the 200 would have had
        await send({"type": "http.response.start", "status": 304,
                    "headers": [(b"etag", b'"v1"'), (b"content-length", b"1234")]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def case_bigfinal(self, scope: dict[str, Any], send: Any) -> None:
        """16 MiB in one part, then a last part: the server must drain its write buffer."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": b"x" * (16 * 1024 * 1024), "more_body": True})
        await send({"type": "http.response.body", "body": b"the-end", "more_body": False})

    async def case_echo(self, scope: dict[str, Any], send: Any) -> None:
        body = json.dumps({"ok": True}).encode()
        await self._answer(send, 200, [(b"content-type", b"application/json"),
                                       (b"content-length", str(len(body)).encode())], body)

    async def _wait_release(self) -> None:
        for _ in range(500):
            if self.release.is_set():
                return
            await asyncio.sleep(0.01)

    async def case_stream(self, scope: dict[str, Any], send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": b"first-part;", "more_body": True})
        await self._wait_release()
        await send({"type": "http.response.body", "body": b"last-part", "more_body": False})
        self.last_part_sent.set()

    async def case_sse(self, scope: dict[str, Any], send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b"event: tick\ndata: 1\n\n", "more_body": True})
        await self._wait_release()
        await send({"type": "http.response.body", "body": b"event: tick\ndata: 2\n\n", "more_body": False})
        self.last_part_sent.set()

    async def case_cut(self, scope: dict[str, Any], send: Any) -> None:
        """One part, then the data API fails mid-answer (its server drops the connection)."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": b"first-part;", "more_body": True})
        await self._wait_release()
        raise RuntimeError("the data API broke down mid-answer")

    async def case_trickle(self, scope: dict[str, Any], send: Any) -> None:
        """One byte every 50 ms for 5 s (past a short ``[upstream] deadline_seconds``)."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(100):
            if self.stopping.is_set():
                return
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})

    async def case_large(self, scope: dict[str, Any], send: Any) -> None:
        chunk = b"x" * 65536
        total = 320 * len(chunk)  # 20 MiB: four times the demo's max_body_bytes
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(total).encode())]})
        try:
            for _ in range(319):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.chunks_sent += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            self.chunks_sent += 1
        except OSError:  # ASGI: send raises OSError once the receiver is gone
            self.aborted = True


@dataclass
class Served:
    """A gateway on a real server in front of the lab: ``client`` talks to ``url``."""

    mode: str
    url: str
    client: httpx.AsyncClient
    lab: LabUpstream
    store: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> list[DisclosureRecord]:
        return self.store.records  # type: ignore[no-any-return]

    async def wait_records(self, count: int, *, timeout_seconds: float = 5.0) -> list[DisclosureRecord]:
        """The records once ``count`` are written (servers write on their own thread: polled),
        or those there are at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while len(self.records) < count and loop.time() < deadline:  # noqa: ASYNC110 - another thread's store
            await asyncio.sleep(0.02)
        return self.records

    def record_for(self, response: httpx.Response) -> DisclosureRecord:
        """The request's decision record (a streamed answer's end record is not one)."""
        cid = response.headers["x-correlation-id"]
        mine = [r for r in self.records if r.correlation_id == cid and r.reason not in STREAM_END_REASONS]
        assert len(mine) == 1, f"expected exactly one disclosure record, got {len(mine)}"
        return mine[0]

    async def stream_end_for(self, correlation_id: str, *, timeout_seconds: float = 5.0) -> DisclosureRecord:
        """The end record of a streamed answer (written just after its last byte: polled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while True:
            ends = [r for r in self.records if r.correlation_id == correlation_id and r.reason in STREAM_END_REASONS]
            if ends or loop.time() > deadline:
                assert len(ends) == 1, f"expected exactly one stream end record, got {len(ends)}"
                return ends[0]
            await asyncio.sleep(0.02)


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def served(mode: str, issuer_url: str, *, upstream_url: str | None = None,
                 **overrides: Any) -> AsyncIterator[Served]:
    """Run the gateway in ``mode`` (``"middleware"``: :class:`ConsentMiddleware` around the lab
    app; ``"sidecar"``: :class:`SidecarApp` in front of the lab on its own server) on 127.0.0.1.

    ``upstream_url`` overrides the sidecar's upstream (e.g. a dead port).
    """
    lab = LabUpstream()
    overrides.setdefault("routes", routes_with_unscoped())
    if mode == "middleware":
        config = make_config(issuer_url, "http://upstream.invalid", **overrides)
        middleware = ConsentMiddleware(lab, config=config)
        with ThreadedServer(middleware, proxy_headers=False) as server:
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                    yield Served(mode, server.url, client, lab, middleware.gateway.store)
            finally:
                lab.stopping.set()
        return
    with ThreadedServer(lab) as upstream_server:
        config = make_config(issuer_url, upstream_url or upstream_server.url, **overrides)
        sidecar = SidecarApp(config)
        with ThreadedServer(sidecar, proxy_headers=False, **bounded_http_options()) as server:  # as `serve` runs it
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
                    yield Served(mode, server.url, client, lab, sidecar.gateway.store,
                                 extra={"upstream_url": upstream_server.url})
            finally:
                lab.stopping.set()


def raw_exchange(url: str, request: bytes, *, timeout_seconds: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` bytes verbatim to ``url``'s host:port; read until the server closes.

    :returns: (status, lower-cased headers (last value wins), body bytes as received).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_seconds) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                break
            if not part:
                break
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def answer_lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's side of the lifespan protocol, for test upstreams: start, then stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
