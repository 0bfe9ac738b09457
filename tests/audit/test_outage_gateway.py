"""Disclosure store down, seen through the sidecar (issue 5): real servers on loopback (dev
issuer JWKS, example upstream, :class:`SidecarApp` under uvicorn), the store broken underneath
the running gateway and repaired again.

While the store cannot take a record every request is answered 503 with a problem body whose
``reason`` is ``audit_unavailable``: allowed requests (the upstream *was* called, its body is
withheld) and refusals alike - a 401 or 403 is a decision that must be logged too, so it
becomes 503 when its record cannot be written (``middleware._deny``). After the repair the same
running sidecar answers 200 again, without a restart, and the chain verifies with exactly the
records of the answers that were not 503.

Failure modes (tests run as root, so ``chmod`` does not bite): SQLite with another connection
holding the write lock, SQLite with its directory replaced by a plain file, PostgreSQL behind a
loopback TCP relay that is stopped (the server itself is never touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.audit import VerifyResult, open_store
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import INCOME_PATH, INCOME_PERSON, TAX_BASE_PERSON, a2_headers, a3_headers, make_config, tax_base_path
from tests.audit.test_postgres import TcpProxy
from tests.audit_support import pg_schema, with_query

__all__ = ["pg_schema"]  # the fixture, re-exported for pytest

ALLOWED = INCOME_PATH + "?fraOgMed=2018-07&tilOgMed=2018-07"
OUTSIDE_PERIOD = INCOME_PATH + "?fraOgMed=2018-09"  # 403 when the store works
PROBLEM_KEYS = {"type", "title", "status", "detail", "reason", "correlation_id"}
# Strings of the upstream's bodies (income and tax base examples) that must never reach a client
# in a 503: field names, the person ids, amounts' keys.
UPSTREAM_MARKERS = ("oppgaveInntektsmottaker", "loennsinntekt", "beloep", "grunnlag", "tekniskNavn",
                    "inntektsaar", INCOME_PERSON, TAX_BASE_PERSON)


class Sidecar:
    """Upstream + sidecar on loopback; ``client`` talks to the sidecar."""

    def __init__(self, issuer_url: str, audit_url: str) -> None:
        self.issuer_url, self.audit_url = issuer_url, audit_url
        self.upstream = ExampleUpstream()
        self._stack = contextlib.ExitStack()
        self.hold = threading.Event()  # while set, the upstream holds each request until `release`
        self.release = threading.Event()
        self.held = 0

    async def _upstream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.hold.is_set():
            self.held += 1
            for _ in range(1000):  # at most 10 s
                if self.release.is_set():
                    break
                await asyncio.sleep(0.01)
        await self.upstream.app(scope, receive, send)

    def __enter__(self) -> Sidecar:
        up = self._stack.enter_context(ThreadedServer(self._upstream, interface="asgi3"))
        self.config = make_config(self.issuer_url, up.url, self.audit_url)
        self.app = SidecarApp(self.config)
        gw = self._stack.enter_context(ThreadedServer(self.app))
        self.client = self._stack.enter_context(httpx.Client(base_url=gw.url, timeout=30))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _requests(issuer: DevIssuer) -> dict[str, tuple[str, dict[str, str], int]]:
    """name → (path, headers, status when the store works)."""
    return {
        "a2_allowed": (ALLOWED, a2_headers(issuer), 200),
        "a3_allowed": (tax_base_path("2022"), a3_headers(issuer), 200),
        "no_token": (ALLOWED, {}, 401),
        "outside_consent": (OUTSIDE_PERIOD, a2_headers(issuer), 403),
    }


def _all(gw: Sidecar, issuer: DevIssuer, *, allowed_first: bool = False) -> dict[str, httpx.Response]:
    """Every kind of request, concurrently (the outage waits run in parallel, not in series).

    ``allowed_first``: the denied requests are sent only once the allowed ones are at the
    upstream (held there until then), so all four are past the audit guard before the first
    failed write puts it down. Without this a denial, whose record is written at once, could
    put the guard down before an allowed request reached it (refused before forwarding), and
    the test depended on how the four requests were scheduled.
    """
    reqs = _requests(issuer)
    allowed = [name for name, (_, _, status) in reqs.items() if status == 200]

    async def go() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(base_url=str(gw.client.base_url), timeout=30) as client:
            if not allowed_first:
                done = await asyncio.gather(*(client.get(p, headers=h) for p, h, _ in reqs.values()))
                return dict(zip(reqs, done, strict=True))
            gw.held, gw.release = 0, threading.Event()
            gw.hold.set()
            try:
                held = [asyncio.create_task(client.get(reqs[n][0], headers=reqs[n][1])) for n in allowed]
                for _ in range(1000):
                    if gw.held == len(allowed):
                        break
                    await asyncio.sleep(0.01)
                assert gw.held == len(allowed), "the allowed requests did not reach the upstream"
                rest = [n for n in reqs if n not in allowed]
                answers = dict(zip(rest, await asyncio.gather(*(client.get(reqs[n][0], headers=reqs[n][1])
                                                                 for n in rest)), strict=True))
                gw.release.set()
                answers.update(zip(allowed, await asyncio.gather(*held), strict=True))
            finally:
                gw.hold.clear()
                gw.release.set()
            return {name: answers[name] for name in reqs}

    return asyncio.run(go())


def _assert_normal(gw: Sidecar, issuer: DevIssuer) -> int:
    for name, response in _all(gw, issuer).items():
        assert response.status_code == _requests(issuer)[name][2], (name, response.text)
    return 4


def _assert_fails_closed(gw: Sidecar, issuer: DevIssuer) -> None:
    called_before = len(gw.upstream.requests)
    for name, response in _all(gw, issuer, allowed_first=True).items():
        assert response.status_code == 503, (name, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["cache-control"] == "no-store"
        assert "www-authenticate" not in response.headers
        problem = response.json()
        assert set(problem) == PROBLEM_KEYS, problem
        assert problem["reason"] == "audit_unavailable" and problem["status"] == 503
        assert problem["correlation_id"] == response.headers["x-correlation-id"]
        assert response.headers["content-length"] == str(len(response.content))
        for marker in UPSTREAM_MARKERS:
            assert marker not in response.text, (name, marker)
    # the allowed requests did reach the upstream: its data was withheld, not never fetched
    assert len(gw.upstream.requests) - called_before == 2


def _wait_for_200(gw: Sidecar, issuer: DevIssuer, timeout: float = 20.0) -> int:
    """Retry an allowed request until it is 200; returns how many 503s came before."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        r = gw.client.get(ALLOWED, headers=a2_headers(issuer))
        if r.status_code == 200:
            return refused
        assert r.status_code == 503 and r.json()["reason"] == "audit_unavailable", r.text
        refused += 1
        assert time.monotonic() < deadline, "the sidecar did not recover"
        time.sleep(0.2)


def _metric(gw: Sidecar, name: str, **labels: str) -> float:
    from samtykke_gateway.observe.metrics import parse_text

    samples = parse_text(gw.client.get("/metrics").text).get(name, [])
    return sum(v for s, v in samples if all(s.get(k) == x for k, x in labels.items()))


def _verify(url: str) -> VerifyResult:
    async def run() -> VerifyResult:
        store = open_store(url)
        await store.open()
        try:
            return await store.verify()
        finally:
            await store.close()

    return asyncio.run(run())


def _outage(gw: Sidecar, issuer: DevIssuer, *, break_store: Callable[[], None], repair: Callable[[], None],
            ready_fails: bool) -> int:
    """Normal → broken (everything 503) → repaired (same process, 200 again). Returns the
    number of records that must be in the chain."""
    recorded = _assert_normal(gw, issuer)
    break_store()
    try:
        _assert_fails_closed(gw, issuer)
        if ready_fails:
            ready = gw.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["disclosure_store"] == "unreachable"
        assert _metric(gw, "samtykke_decisions_total", reason="audit_unavailable") >= 4
        assert _metric(gw, "samtykke_disclosure_write_seconds_count", ok="false") >= 4
    finally:
        repair()
    _wait_for_200(gw, issuer)
    recorded += 1 + _assert_normal(gw, issuer)
    assert gw.client.get("/readyz").status_code == 200
    return recorded


def test_sqlite_write_lock_held_by_another_connection(tmp_path: Path, dev_issuer: DevIssuer,
                                                      issuer_url: str) -> None:
    db = tmp_path / "d.db"
    url = f"sqlite:///{db}?busy_timeout_ms=300"
    holder: list[sqlite3.Connection] = []

    def lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        holder.append(conn)

    def unlock() -> None:
        for conn in holder:
            conn.execute("ROLLBACK")
            conn.close()

    with Sidecar(issuer_url, url) as gw:
        recorded = _outage(gw, dev_issuer, break_store=lock, repair=unlock, ready_fails=False)
    assert _verify(url) == VerifyResult(True, recorded, None, None)


def test_sqlite_directory_replaced_by_a_file(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str) -> None:
    directory = tmp_path / "audit"
    directory.mkdir()
    url = f"sqlite:///{directory / 'd.db'}"

    def replace_directory() -> None:
        os.rename(directory, tmp_path / "audit.moved")
        directory.write_text("not a directory")

    def restore() -> None:
        directory.unlink()
        os.rename(tmp_path / "audit.moved", directory)

    with Sidecar(issuer_url, url) as gw:
        recorded = _outage(gw, dev_issuer, break_store=replace_directory, repair=restore, ready_fails=True)
    assert _verify(url) == VerifyResult(True, recorded, None, None)


@pytest.fixture
def relay(pg_schema: tuple[str, str]) -> Iterator[tuple[TcpProxy, str, str]]:
    """(stoppable relay, store URL through it, direct store URL)."""
    url, schema = pg_schema
    parts = urlsplit(url)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    tcp.start()
    user, at, _ = parts.netloc.rpartition("@")
    via = parts._replace(netloc=f"{user}{at}127.0.0.1:{tcp.port}").geturl()
    yield tcp, with_query(via, schema=schema, connect_timeout="2", write_timeout="2"), with_query(url, schema=schema)
    tcp.stop()


@pytest.mark.postgres
def test_postgres_behind_a_stopped_relay(relay: tuple[TcpProxy, str, str], dev_issuer: DevIssuer,
                                         issuer_url: str) -> None:
    tcp, via, direct = relay
    with Sidecar(issuer_url, via) as gw:
        started = time.monotonic()
        recorded = _outage(gw, dev_issuer, break_store=tcp.stop, repair=tcp.start, ready_fails=True)
        assert time.monotonic() - started < 30
    assert _verify(direct) == VerifyResult(True, recorded, None, None)


def test_503_problem_body_is_the_documented_one(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The Skatteetaten error style carries the same reason code (``arsak``) while the store is down."""
    directory = tmp_path / "audit"
    directory.mkdir()
    url = f"sqlite:///{directory / 'd.db'}"
    with ThreadedServer(ExampleUpstream().app) as up:
        config = make_config(issuer_url, up.url, url, gateway={"error_style": "skatteetaten"})
        with ThreadedServer(SidecarApp(config)) as gw:
            os.rename(directory, tmp_path / "audit.moved")
            directory.write_text("x")
            r = httpx.get(gw.url + ALLOWED, headers=a2_headers(dev_issuer), timeout=30)
            assert r.status_code == 503
            body = json.loads(r.content)
            assert body["arsak"] == "audit_unavailable" and body["korrelasjonsid"] == r.headers["x-correlation-id"]
            for marker in UPSTREAM_MARKERS:
                assert marker not in r.text
