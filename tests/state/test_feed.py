"""The Altinn 2 consent-list poller against a local feed server on 127.0.0.1 that speaks the
documented HAL format: paging with continuation tokens, statuses in any case, restarts (token
persisted in Redis; memory re-reads), an outage (stale → 503, recovery), API key and
Maskinporten credentials, one poller per fleet (lease), and the gateway refusing a consent the
feed revoked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from samtykke_gateway.config import FeedAuthConfig
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.observe.metrics import GatewayMetrics
from samtykke_gateway.state import MemoryBackend, StateBackend
from samtykke_gateway.state.feed import (
    Altinn2ConsentFeed,
    ConsentFeedPoller,
    FeedError,
    MaskinportenCredentials,
    parse_altinn2_page,
)
from samtykke_gateway.state.redis_backend import RedisBackend
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import free_port, redis_backend, redis_prefix, state_config
from tests.support import INCOME_PATH, TAX_BASE_PERSON, TAX_BASE_SCOPE, a2_headers, a3_headers, make_config, tax_base_path
from tests.state.test_service_enforcement import a3, gateway
import logging

pytestmark = pytest.mark.anyio
SERVICE = "4628_210607"
API_KEY = "test-api-key"


@dataclass
class FeedServer:
    """``GET /api/serviceowner/consents`` as the Altinn 2 guide documents it (PascalCase HAL,
    sorted by LastChanged, ``{timestamp}_{id}`` continuation tokens, ``next`` link)."""

    page_size: int = 2
    consents: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, list[str]]] = field(default_factory=list)
    down: bool = False
    bearer: str | None = None
    _seq: int = 0

    def add(self, code: str, status: str) -> None:
        self._seq += 1
        stamp = f"2026-01-01T08:{self._seq // 60:02d}:{self._seq % 60:02d}.000"
        self.consents = [c for c in self.consents if c["AuthorizationCode"] != code]
        self.consents.append({"AuthorizationCode": code, "Status": status, "LastChanged": stamp,
                              "token": f"{stamp}_{self._seq}",
                              "OfferedBy": {"Name": "OLA NORDMANN", "Type": "Person", "SocialSecurityNumber": "01012012345"},
                              "CoveredBy": {"Name": "BANK AS", "Type": "Enterprise", "OrganizationNumber": "999999999"}})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = parse_qs(scope["query_string"].decode())
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(query)
        status, body = 200, b""
        if self.down:
            status, body = 503, b"Service Unavailable"
        elif headers.get("apikey") != API_KEY or headers.get("accept") != "application/hal+json":
            status = 403
        elif self.bearer is not None and headers.get("authorization") != f"Bearer {self.bearer}":
            status = 401
        elif query.get("serviceCode") != [SERVICE.split("_")[0]] or query.get("serviceEdition") != [SERVICE.split("_")[1]]:
            status = 400
        else:
            after = query.get("continuation", [None])[0]
            items = self.consents
            if after is not None:  # everything changed after the token's (timestamp, id)
                after_seq = int(after.rsplit("_", 1)[1])
                items = [c for c in items if int(c["token"].rsplit("_", 1)[1]) > after_seq]
            page = items[: self.page_size]
            doc: dict[str, Any] = {
                "_links": {"self": {"href": "http://feed/api/serviceowner/consents"}},
                "_embedded": {"consents": [{k: v for k, v in c.items() if k != "token"} for c in page]},
            }
            if page:
                doc["_links"]["next"] = {"href": f"http://feed/api/serviceowner/consents?serviceCode=4628&continuation={page[-1]['token']}"}
                doc["continuationtoken"] = page[-1]["token"]
            body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/hal+json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def feed() -> Iterator[tuple[FeedServer, str]]:
    server = FeedServer()
    with ThreadedServer(server) as running:
        yield server, running.url + "/api/serviceowner/consents"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMTYKKE_TEST_FEED_KEY", API_KEY)


@contextlib.asynccontextmanager
async def poller(url: str, backend: StateBackend, **kw: Any) -> AsyncIterator[ConsentFeedPoller]:
    async with httpx.AsyncClient(timeout=5) as http:
        creds = kw.pop("credentials", None)
        source = Altinn2ConsentFeed(url=url, service=SERVICE, http=http, api_key_env="SAMTYKKE_TEST_FEED_KEY",
                                    credentials=creds(http) if creds else None)
        p = ConsentFeedPoller([source], backend, interval_seconds=kw.pop("interval_seconds", 3600), **kw)
        try:
            yield p
        finally:
            await p.close()


@contextlib.asynccontextmanager
async def backend_of(kind: str) -> AsyncIterator[tuple[StateBackend, Any]]:
    """(backend, factory for a *new* backend object on the same state — a restarted replica)."""
    if kind == "memory":
        yield MemoryBackend(), MemoryBackend
        return
    async with redis_prefix() as (url, prefix):
        made: list[RedisBackend] = []

        def new() -> RedisBackend:
            made.append(redis_backend(url, prefix))
            return made[-1]

        try:
            yield new(), new
        finally:
            for b in made:
                await b.close()


KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.mark.parametrize("kind", KINDS)
async def test_pages_through_and_records_revocations(kind: str, feed: tuple[FeedServer, str]) -> None:
    server, url = feed
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for cid, status in zip(ids, ["Active", "REVOKED", "revoked", "active", "Revoked"], strict=True):
        server.add(cid.upper(), status)
    async with backend_of(kind) as (backend, _), poller(url, backend) as p:
        assert await p.poll_once() == 3
        assert [await backend.revoked(c) for c in ids] == [False, True, True, False, True]
        # 5 consents, pages of 2: three pages and one empty page; each asks after the last token
        conts = [q.get("continuation", [None])[0] for q in server.requests]
        assert conts == [None, server.consents[1]["token"], server.consents[3]["token"], server.consents[4]["token"]]
        assert await backend.get_meta(f"feed:altinn2:{SERVICE}:continuation") == server.consents[4]["token"]
        assert not p.stale
        # later: an active consent is revoked (moves to the end); only the new part is read
        server.requests.clear()
        server.add(ids[0].upper(), "Revoked")
        assert await p.poll_once() == 1
        assert await backend.revoked(ids[0])
        assert server.requests[0]["continuation"] == [server.consents[3]["token"]]


@pytest.mark.redis
async def test_restart_resumes_from_the_persisted_token_redis(feed: tuple[FeedServer, str]) -> None:
    server, url = feed
    for _ in range(3):
        server.add(str(uuid.uuid4()), "Revoked")
    async with backend_of("redis") as (backend, new_backend):
        async with poller(url, backend) as p:
            await p.poll_once()
        last = server.consents[-1]["token"]
        server.requests.clear()
        restarted = new_backend()  # a new process: new client, same Redis
        async with poller(url, restarted) as p2:
            await p2.poll_once()
        assert server.requests[0]["continuation"] == [last]


async def test_restart_rereads_everything_with_memory_state(feed: tuple[FeedServer, str]) -> None:
    server, url = feed
    revoked = str(uuid.uuid4())
    server.add(revoked, "Revoked")
    async with poller(url, MemoryBackend()) as p:
        await p.poll_once()
    server.requests.clear()
    fresh = MemoryBackend()  # memory state dies with the process, so must the token
    async with poller(url, fresh) as p2:
        await p2.poll_once()
    assert "continuation" not in server.requests[0]
    assert await fresh.revoked(revoked)


async def test_outage_keeps_revocations_then_goes_stale_and_recovers(feed: tuple[FeedServer, str]) -> None:
    server, url = feed
    revoked = str(uuid.uuid4())
    server.add(revoked, "Revoked")
    now = [1_000_000.0]
    metrics = GatewayMetrics()
    backend = MemoryBackend()
    async with poller(url, backend, max_staleness_seconds=60, clock=lambda: now[0], metrics=metrics) as p:
        assert p.stale  # never polled: stale (fail closed)
        await p.poll_once()
        assert not p.stale
        server.down = True
        now[0] += 30
        assert await p.poll_once() == 0
        assert p.last_error == "feed answered 503" and not p.stale
        assert await backend.revoked(revoked)  # known revocations stay in force
        now[0] += 31
        assert p.stale
        server.down = False
        server.add(str(uuid.uuid4()), "Revoked")
        assert await p.poll_once() == 1
        assert not p.stale and p.last_error is None
    assert metrics.sample("samtykke_feed_polls_total", {"result": "error"}) == 1
    assert metrics.sample("samtykke_feed_polls_total", {"result": "ok"}) == 2
    assert metrics.sample("samtykke_feed_revocations_total") == 2


async def test_missing_api_key_is_a_poll_failure(feed: tuple[FeedServer, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = feed
    monkeypatch.delenv("SAMTYKKE_TEST_FEED_KEY")
    async with poller(url, MemoryBackend()) as p:
        assert await p.poll_once() == 0
        assert p.last_error is not None and "SAMTYKKE_TEST_FEED_KEY" in p.last_error and p.stale


def _token_endpoint(public_key: rsa.RSAPublicKey, issued: str, seen: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        head, claims, sig = form["assertion"].split(".")

        def pad(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        public_key.verify(pad(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
        seen.append({"grant": form["grant_type"], "header": json.loads(pad(head)), "claims": json.loads(pad(claims))})
        out = json.dumps({"access_token": issued, "token_type": "Bearer", "expires_in": 120}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


async def test_maskinporten_credentials(feed: tuple[FeedServer, str], tmp_path: Path) -> None:
    server, url = feed
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server.bearer = "mp-access-token"
    server.add(str(uuid.uuid4()), "Revoked")
    seen: list[dict[str, Any]] = []
    with ThreadedServer(_token_endpoint(key.public_key(), "mp-access-token", seen)) as token_server:
        cfg = FeedAuthConfig(token_url=token_server.url + "/token", audience="https://test.maskinporten.no/",
                             client_id="my-client", scope="altinn:serviceowner/consents", key_file=str(key_file),
                             kid="my-kid")
        async with poller(url, MemoryBackend(), credentials=lambda http: MaskinportenCredentials(cfg, http)) as p:
            assert await p.poll_once() == 1
            await p.poll_once()
    assert len(seen) == 1  # the token is cached
    assert seen[0]["grant"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert seen[0]["header"] == {"alg": "RS256", "typ": "JWT", "kid": "my-kid"}
    claims = seen[0]["claims"]
    assert (claims["aud"], claims["iss"], claims["scope"]) == ("https://test.maskinporten.no/", "my-client",
                                                               "altinn:serviceowner/consents")
    assert claims["exp"] - claims["iat"] == 100


@pytest.mark.redis
async def test_one_poller_per_fleet(feed: tuple[FeedServer, str]) -> None:
    server, url = feed
    server.add(str(uuid.uuid4()), "Revoked")
    async with backend_of("redis") as (backend, new_backend):
        async with poller(url, backend) as a, poller(url, new_backend()) as b:
            await a.poll_once()
            polled = len(server.requests)
            assert await b.poll_once() == 0
            assert len(server.requests) == polled  # b did not poll: a holds the lease
            assert b.last_success == a.last_success and not b.stale  # but b knows the feed is fresh


def test_hal_parsing_variants() -> None:
    camel = {"_embedded": {"consents": [{"authorizationCode": "ABC", "status": "Revoked"}]},
             "_links": {"next": {"href": "https://x/consents?serviceCode=1&Continuation=2020-02-03T10:09:59.548_1"}}}
    page = parse_altinn2_page(json.dumps(camel).encode())
    assert page.entries[0].consent_id == "abc" and page.entries[0].status == "revoked"
    assert page.continuation == "2020-02-03T10:09:59.548_1"
    other_name = {"_embedded": {"samtykker": [{"AuthorizationCode": "x", "Status": "Active"}]}, "continuationtoken": "t"}
    assert parse_altinn2_page(json.dumps(other_name).encode()).continuation == "t"
    empty = {"_links": {"self": {"href": "x"}}}
    assert parse_altinn2_page(json.dumps(empty).encode()).entries == ()
    for bad in (b"not json", b"[]", json.dumps({"_embedded": {"consents": [{"Status": "Active"}]}}).encode(),
                json.dumps({"_embedded": {"consents": "x"}}).encode()):
        with pytest.raises(FeedError):
            parse_altinn2_page(bad)


async def test_gateway_refuses_what_the_feed_revoked(feed: tuple[FeedServer, str], dev_issuer: DevIssuer,
                                                     issuer_url: str) -> None:
    server, url = feed
    revoked, active = str(uuid.uuid4()), str(uuid.uuid4())
    server.add(revoked.upper(), "REVOKED")
    server.add(active, "Active")
    state = {"feed": {"url": url, "services": [SERVICE], "api_key_env": "SAMTYKKE_TEST_FEED_KEY",
                      "interval_seconds": 0.1, "max_staleness_seconds": 60}}
    config = state_config(issuer_url, "http://up.invalid", state=state)
    async with gateway(config) as (client, gw):
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, revoked))
        assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, active))).status_code == 200
        # revoked later: the background poller picks it up
        server.add(active, "Revoked")
        for _ in range(50):
            await asyncio.sleep(0.05)
            if await gw.state.backend.revoked(active):  # type: ignore[attr-defined]
                break
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, active))
        assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
        # the feed going stale refuses the Altinn 2 consents it covers (fail closed) ...
        gw.state.feed.max_staleness = 0.2  # type: ignore[attr-defined]
        server.down = True
        await asyncio.sleep(0.5)
        r = await client.get(tax_base_path("2022"), headers=_a2_tax_base(dev_issuer))
        assert r.status_code == 503 and r.json()["reason"] == "revocation_feed_stale"
        # ... and nothing else: an Altinn 3 consent never appears in the Altinn 2 list
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))).status_code == 200
        await gw.state.ping()  # readiness does not fail on it (every replica shares the outage)
        assert gw.state.feed_status().startswith("stale")  # type: ignore[attr-defined]
        server.down = False
        await asyncio.sleep(0.3)
        assert (await client.get(tax_base_path("2022"), headers=_a2_tax_base(dev_issuer))).status_code == 200


def _a2_tax_base(issuer: DevIssuer) -> dict[str, str]:
    return a2_headers(issuer, subject=TAX_BASE_PERSON, services=[f"{SERVICE}_inntektsaar=2022"],
                      scope=TAX_BASE_SCOPE)


def test_altinn3_feed_kind_is_refused_naming_the_key() -> None:
    """No data-source consent feed exists in Altinn 3 (docs/protocol.md §8): the old
    placeholder kind is a config error, not a poller of an invented format."""
    with pytest.raises(ConfigError) as info:
        make_config("http://127.0.0.1:9", "http://up.invalid",
                    state={"feed": {"kind": "altinn3", "url": "https://feed.example/consents"}})
    assert info.value.key_path == "state.feed.kind"
    assert "Altinn 3 has no consent list" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_config("http://127.0.0.1:9", "http://up.invalid",
                    state={"feed": {"kind": "altinn4", "url": "https://feed.example/consents"}})
    assert info.value.key_path == "state.feed.kind"


async def test_unreachable_feed_never_takes_down_what_it_does_not_protect(dev_issuer: DevIssuer,
                                                                          issuer_url: str) -> None:
    """The sidecar on 127.0.0.1 with a feed whose server is gone (its port closed) and, later,
    back: while stale, only Altinn 2 consents of the feed's service (4628_210607) get 503;
    Altinn 3 consents, migrated ones and the income route's Altinn 2 consents (4804, not polled)
    are served, and /readyz stays 200, reporting the feed."""
    from samtykke_gateway.sidecar.app import SidecarApp
    from samtykke_gateway.dev.examples import ExampleUpstream

    server = FeedServer()
    feed_port = free_port()
    url = f"http://127.0.0.1:{feed_port}/api/serviceowner/consents"
    state = {"feed": {"url": url, "services": [SERVICE], "api_key_env": "SAMTYKKE_TEST_FEED_KEY",
                      "interval_seconds": 0.1, "max_staleness_seconds": 60}}
    migrated = [("skd_4628_210607", {"inntektsaar": "2022"})]
    with ThreadedServer(ExampleUpstream().app) as upstream:
        sidecar = SidecarApp(state_config(issuer_url, upstream.url, state=state))
        with ThreadedServer(sidecar) as running:
            poller = sidecar.gateway.state.feed  # type: ignore[attr-defined]
            assert poller.stale and poller.last_error is not None  # the first poll found nobody
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["consent_feed"] == f"stale: Altinn 2 consents of {SERVICE} refused"
                r = await client.get(tax_base_path("2022"), headers=_a2_tax_base(dev_issuer))
                assert r.status_code == 503 and r.json()["reason"] == "revocation_feed_stale"
                assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, "a3-1"))).status_code == 200
                r = await client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, rights=migrated))
                assert r.status_code == 200, r.text
                r = await client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
                assert r.status_code == 200, r.text
                # the feed comes up: one poll and the Altinn 2 consents it covers are served again
                with ThreadedServer(server, port=feed_port):
                    for _ in range(100):  # the background poller (every 0.1 s) finds it
                        if not poller.stale:
                            break
                        await asyncio.sleep(0.05)
                    assert not poller.stale
                    r = await client.get(tax_base_path("2022"), headers=_a2_tax_base(dev_issuer))
                    assert r.status_code == 200, r.text
                    assert (await client.get("/readyz")).json()["checks"]["consent_feed"] == "ok"


@pytest.mark.anyio
async def test_unset_feed_api_key_variable_is_logged_readably(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtykke_gateway.observe.logs import JsonFormatter, redact
    from samtykke_gateway.state.feed import FeedError, _HttpFeed

    monkeypatch.delenv("F3_APIKEY", raising=False)
    feed = _HttpFeed(name="altinn2", url="http://127.0.0.1:9/consents", params={}, http=None,  # type: ignore[arg-type]
                     api_key_env="F3_APIKEY", credentials=None)
    with pytest.raises(FeedError) as info:
        await feed._get(None)
    record = logging.LogRecord("samtykke_gateway.state", logging.WARNING, __file__, 1,
                               "consent feed poll failed: %s", (info.value,), None)
    message = json.loads(JsonFormatter().format(record))["message"]
    assert message == "consent feed poll failed: environment variable F3_APIKEY (the Altinn ApiKey) is not set"
    # credentials are still masked, in every spelling
    for text in ("ApiKey: s3cret", "apikey=s3cret", "APIKEY s3cret", "Authorization: Bearer s3cret"):
        assert "s3cret" not in redact(text), text
