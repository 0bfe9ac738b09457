"""The middleware form in-process: a Starlette app with and without ``ConsentMiddleware``.

Run: ``python bench/bench_inprocess.py [--requests 2000] [--rounds 7] [--profile]``.

No server, no sockets: each request is one ASGI call (``scope``/``receive``/``send``) straight
into the app, so the figure is the CPU the gateway adds per request, without uvicorn's and the
client's share (``bench_proxy.py`` measures the served form with wrk). Targets, interleaved in
rounds (best and median of per-round µs per request, CPU time of this process):

- ``bare``: the Starlette app serving the published 2022 specified-tax-base body (3,740 B);
- ``mw memory same``: the same app behind ``ConsentMiddleware``: Altinn 2 pair (Maskinporten
  bearer + ``AltinnSamtykke``), one pair for the run (the verifier's cache hits), route binding,
  ``sbl`` scoping, consent-state hook, disclosure record in ``memory://``;
- ``mw memory pool``: a fresh pair on every request (two RSA-2048 verifications each);
- ``mw sqlite same``: the default durable store (WAL, ``synchronous=FULL``, group commit;
  requests are issued ``--concurrency`` at a time so group commit can group, as under load).

``--profile`` prints a cProfile of ``mw memory same`` grouped by module of the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from samtykke_gateway.cli.demo import demo_config  # noqa: E402
from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402
from samtykke_gateway.dev.examples import example_body  # noqa: E402
from samtykke_gateway.asgi.middleware import ConsentMiddleware  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402

BODY = example_body("spesifisertsummertskattegrunnlag-2022.json")
ROUTE = "/api/formueinntekt/spesifisertsummertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}"
PERSON = "12879397780"
BANK = "999999999"
SCOPE = "skatteetaten:spesifisertsummertskattegrunnlag"
SERVICES = ["4628_210607_inntektsaar=2022"]
PATH = f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{PERSON}"


async def _body(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


def bare_app() -> Any:
    return Starlette(routes=[Route(ROUTE, _body)])


def middleware_app(issuer_url: str, audit_url: str) -> Any:
    config = demo_config(issuer_url=issuer_url, upstream_url="http://unused", audit_url=audit_url)
    return Starlette(
        routes=[Route(ROUTE, _body)], middleware=[Middleware(ConsentMiddleware, config=config)]
    )


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0
    size = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(_scope(headers), receive, send)
    if status != 200 or size == 0:
        raise SystemExit(f"unexpected answer {status} ({size} B)")
    return status


class Target:
    def __init__(self, name: str, app: Any, headers: Any, concurrency: int = 1) -> None:
        self.name = name
        self.app = app
        self.headers = headers  # callable(i) -> header list
        self.concurrency = concurrency
        self.per_request: list[float] = []

    async def round(self, n: int) -> None:
        headers = [self.headers(i) for i in range(n)]
        t0 = time.process_time()
        if self.concurrency == 1:
            for h in headers:
                await _call(self.app, h)
        else:
            for start in range(0, n, self.concurrency):
                await asyncio.gather(
                    *(_call(self.app, h) for h in headers[start : start + self.concurrency])
                )
        self.per_request.append((time.process_time() - t0) / n * 1e6)


async def _lifespan_start(app: Any, stack: contextlib.AsyncExitStack) -> None:
    """Run the app's lifespan startup (the middleware opens its stores there)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, queue.get, sent.put)
    )
    message = await sent.get()
    if message["type"] != "lifespan.startup.complete":
        raise SystemExit(f"lifespan startup failed: {message}")

    async def stop() -> None:
        await queue.put({"type": "lifespan.shutdown"})
        await sent.get()
        await task

    stack.push_async_callback(stop)


async def main_async(args: argparse.Namespace) -> None:
    dev = DevIssuer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-inprocess-"))
    with ThreadedServer(dev.asgi_app()) as issuer:
        same = [
            (b"authorization", f"Bearer {dev.mint_maskinporten(consumer=BANK, scope=SCOPE, lifetime_seconds=3600)}".encode()),
            (b"altinnsamtykke", dev.mint_altinn2(subject=PERSON, consumer=BANK, services=SERVICES, lifetime_seconds=3600).encode()),
        ]
        need = args.requests * (args.rounds + 1)
        pool = [
            [
                (b"authorization", f"Bearer {dev.mint_maskinporten(consumer=BANK, scope=SCOPE, lifetime_seconds=3600)}".encode()),
                (b"altinnsamtykke", dev.mint_altinn2(subject=PERSON, consumer=BANK, services=SERVICES, lifetime_seconds=3600).encode()),
            ]
            for _ in range(need if args.pool else 0)
        ]
        pool_iter = iter(pool)
        async with contextlib.AsyncExitStack() as stack:
            mw_mem = middleware_app(issuer.url, "memory://")
            mw_sql = middleware_app(issuer.url, f"sqlite:///{tmp}/log.db")
            bare = bare_app()
            for app in (bare, mw_mem, mw_sql):
                await _lifespan_start(app, stack)
            targets = [
                Target("bare app", bare, lambda i: same),
                Target("mw memory same", mw_mem, lambda i: same),
                Target("mw sqlite same", mw_sql, lambda i: same, concurrency=args.concurrency),
            ]
            if args.pool:
                targets.append(Target("mw memory pool", mw_mem, lambda i: next(pool_iter)))
            for t in targets:  # warm-up: key fetch, caches, first SQLite write
                await t.round(min(200, args.requests))
                t.per_request.clear()
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                await targets[1].round(args.requests)
                prof.disable()
                _print_profile(prof, targets[1].per_request.pop())
            for _ in range(args.rounds):
                for t in targets:
                    await t.round(args.requests)
    base_best = min(targets[0].per_request)
    ratios = {
        t.name: statistics.median(
            b / x for b, x in zip(targets[0].per_request, t.per_request, strict=True)
        )
        for t in targets
    }
    print(f"{args.rounds} rounds x {args.requests} requests, CPU µs per request (best / median)")
    print(f"{'target':<18} {'best':>8} {'median':>8} {'req/s (best)':>13} {'× bare (best)':>14} {'× bare (median)':>16}")
    for t in targets:
        best = min(t.per_request)
        print(
            f"{t.name:<18} {best:8.1f} {statistics.median(t.per_request):8.1f} {1e6 / best:13,.0f}"
            f" {base_best / best:14.3f} {ratios[t.name]:16.3f}"
        )


def _print_profile(prof: cProfile.Profile, per_request: float) -> None:
    stats = pstats.Stats(prof)
    by_module: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, _name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        if "samtykke_gateway" in filename:
            key = filename.split("samtykke_gateway/")[-1]
        elif "site-packages" in filename:
            key = "lib:" + filename.split("site-packages/")[-1].split("/")[0]
        else:
            key = "other:" + Path(filename).name
        by_module[key] += tt
    print(f"profile of 'mw memory same' ({per_request:.0f} µs/request under cProfile), own time by module:")
    for key, tt in sorted(by_module.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {tt / total * 100:5.1f} %  {key}")
    stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--concurrency", type=int, default=32, help="in-flight requests for sqlite")
    ap.add_argument("--pool", action="store_true", help="also a fresh token pair per request")
    ap.add_argument("--profile", action="store_true")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
