"""KeySet against a real HTTP server on 127.0.0.1 — docs/protocol.md §3.1, §3.2, §4 step 3 (RFC 7517, 8414)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.exceptions import ConfigError, InvalidTokenError, KeysUnavailableError
from samtykke_gateway.policy.decide import key_set
from samtykke_gateway.tokens.keys import KeySet, VerificationKey
from samtykke_gateway.dev.issuer import DevKey, b64url

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A JWKS server whose behaviour each test sets; counts requests per path."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.release.set()  # let a hanging handler of the previous test finish
        self.release = threading.Event()
        self.body: Any = {"keys": []}
        self.cache_control: str | None = "max-age=300"
        self.status = 200
        self.delay_seconds = 0.0
        self.hang = False
        self.stream_bytes = 0
        self.hits: Counter[str] = Counter()

    def app(self) -> Starlette:
        async def jwk(request: Request) -> Response:
            with self._lock:
                self.hits[request.url.path] += 1
            if self.hang:
                release, deadline = self.release, time.monotonic() + 5
                # release is a threading.Event set from the test thread: poll it
                while not release.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            if self.stream_bytes:

                async def chunks() -> AsyncIterator[bytes]:
                    yield b'{"keys":['
                    for _ in range(self.stream_bytes // 1000):
                        yield b" " * 1000
                    yield b"]}"

                return StreamingResponse(chunks(), media_type="application/json")
            body = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return Response(body, self.status, headers, media_type="application/json")

        async def metadata(request: Request) -> Response:
            with self._lock:
                self.hits[request.url.path] += 1
            base = str(request.base_url).rstrip("/")
            doc = {"issuer": "https://issuer.test/", "jwks_uri": f"{base}/jwk"}
            return Response(json.dumps(doc), media_type="application/json")

        async def redirect(request: Request) -> Response:
            with self._lock:
                self.hits[request.url.path] += 1
            return RedirectResponse("/jwk", status_code=302)

        return Starlette(
            routes=[
                Route("/jwk", jwk),
                Route("/.well-known/oauth-authorization-server", metadata),
                Route("/redirect", redirect),
            ]
        )


Up = tuple["Upstream", ThreadedServer]


@pytest.fixture(scope="module")
def devkeys() -> list[DevKey]:
    return [DevKey(kid=f"key-{i}") for i in range(3)]


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[Upstream, ThreadedServer]]:
    state = Upstream()
    server = ThreadedServer(state.app(), timeout_graceful_shutdown=1)
    server.start()
    try:
        yield state, server
    finally:
        state.release.set()
        server.stop()


@pytest.fixture
def upstream(
    _server: tuple[Upstream, ThreadedServer], devkeys: list[DevKey]
) -> Iterator[tuple[Upstream, ThreadedServer]]:
    state, server = _server
    state.reset()
    state.body = {"keys": [devkeys[0].public_jwk()]}
    yield state, server
    state.reset()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make(http: httpx.AsyncClient, url: str, clock: Clock | None = None, **kw: Any) -> KeySet:
    return KeySet(name="test", http=http, jwks_url=url, clock=clock or Clock(), **kw)


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwk"


# -- basic lookup ------------------------------------------------------------------------------


async def test_loads_and_finds_by_kid(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    keys = make(http, server.url + "/jwk")
    assert not keys.ready
    found = await keys.get(kid="key-0", x5t=None)
    assert isinstance(found, VerificationKey)
    assert found.kid == "key-0" and found.kty == "RSA" and found.x5t == devkeys[0].x5t
    assert found.key.public_numbers() == devkeys[0].public_key.public_numbers()
    assert found.allows("RS256") and not found.allows("ES256") and not found.allows("HS256")
    assert keys.ready and keys.last_error is None
    assert state.hits["/jwk"] == 1


async def test_discovery_via_metadata_url(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    keys = KeySet(
        name="test",
        http=http,
        metadata_url=server.url + "/.well-known/oauth-authorization-server",
        clock=Clock(),
    )
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    await keys.refresh(force=True)
    assert state.hits["/.well-known/oauth-authorization-server"] == 1  # jwks_uri remembered
    assert state.hits["/jwk"] == 2


async def test_discovery_failure_is_keys_unavailable(http: httpx.AsyncClient) -> None:
    app_state = Upstream()
    app = app_state.app()
    with ThreadedServer(app) as server:
        keys = KeySet(name="t", http=http, metadata_url=server.url + "/nothing", clock=Clock())
        with pytest.raises(KeysUnavailableError):
            await keys.get(kid="key-0", x5t=None)
        assert keys.last_error == "HTTP status 404"


async def test_x5t_only_header_lookup(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    _, server = upstream
    keys = make(http, server.url + "/jwk")
    assert (await keys.get(kid=None, x5t=devkeys[0].x5t)).kid == "key-0"


async def test_x5c_only_jwks_lookup_by_thumbprint(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    state.body = {"keys": [devkeys[0].x5c_only_jwk(), devkeys[1].x5c_only_jwk()]}
    keys = make(http, server.url + "/jwk")
    # Altinn 2 headers: kid == x5t == certificate thumbprint
    by_kid = await keys.get(kid=devkeys[1].x5t, x5t=None)
    by_x5t = await keys.get(kid=None, x5t=devkeys[0].x5t)
    assert by_kid.kid is None and by_kid.x5t == devkeys[1].x5t
    assert by_kid.key.public_numbers() == devkeys[1].public_key.public_numbers()
    assert by_x5t.key.public_numbers() == devkeys[0].public_key.public_numbers()
    assert (await keys.get(kid="unknown", x5t=devkeys[1].x5t)).x5t == devkeys[1].x5t


async def test_kid_wins_over_x5t(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    state.body = {"keys": [devkeys[0].public_jwk(), devkeys[1].public_jwk()]}
    keys = make(http, server.url + "/jwk")
    assert (await keys.get(kid="key-1", x5t=devkeys[0].x5t)).kid == "key-1"


async def test_duplicate_kid_is_ambiguous(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    twin = devkeys[1].public_jwk(include_x5c=False)
    twin["kid"] = "key-0"
    del twin["x5t"]
    state.body = {"keys": [devkeys[0].public_jwk(include_x5c=False), twin, devkeys[2].public_jwk()]}
    keys = make(http, server.url + "/jwk")
    with pytest.raises(InvalidTokenError) as info:
        await keys.get(kid="key-0", x5t=None)
    assert info.value.reason == "unknown_key"
    # ambiguity does not fall through to x5t
    with pytest.raises(InvalidTokenError):
        await keys.get(kid="key-0", x5t=devkeys[0].x5t)
    assert (await keys.get(kid="key-2", x5t=None)).kid == "key-2"


@pytest.mark.parametrize(
    "kid",
    [1, 1.5, True, ["a"], {"a": 1}, "", "k" * 257],
    ids=["int", "float", "bool", "list", "dict", "empty", "huge"],
)
async def test_kid_of_wrong_type_or_size_refused_without_fetch(
    upstream: Up, http: httpx.AsyncClient, kid: object
) -> None:
    state, server = upstream
    keys = make(http, server.url + "/jwk")
    for args in ({"kid": kid, "x5t": None}, {"kid": None, "x5t": kid}):
        with pytest.raises(InvalidTokenError) as info:
            await keys.get(**args)  # type: ignore[arg-type]
        assert info.value.reason == "malformed_token"
    assert state.hits["/jwk"] == 0


async def test_no_kid_and_no_x5t_is_unknown_key(upstream: Up, http: httpx.AsyncClient) -> None:
    _, server = upstream
    keys = make(http, server.url + "/jwk")
    with pytest.raises(InvalidTokenError) as info:
        await keys.get(kid=None, x5t=None)
    assert info.value.reason == "unknown_key"


# -- cache lifetime ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "expected_ttl"),
    [
        ("max-age=300", 300),
        ("public, max-age=120, must-revalidate", 120),
        ('max-age="200"', 200),
        ("MAX-AGE=150", 150),
        ("max-age=5", 60),  # clamped up to min
        ("max-age=9999999", 86400),  # clamped down to max
        ("no-store", 60),
        ("no-cache, max-age=500", 60),
        ("max-age=abc", 3600),  # unusable: default
        ("s-maxage=100", 3600),
        (None, 3600),
    ],
)
async def test_cache_control_ttl_and_clamping(
    upstream: Up, http: httpx.AsyncClient, cache_control: str | None, expected_ttl: float
) -> None:
    """The lifetime is the clamped max-age; the refresh starts ahead of its end, at
    REFRESH_AHEAD_FRACTION of it (before: exactly at its end, with requests waiting)."""
    state, server = upstream
    state.cache_control = cache_control
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.get(kid="key-0", x5t=None)
    assert keys.expires_at == clock.now + expected_ttl
    refresh_after = expected_ttl * KeySet.REFRESH_AHEAD_FRACTION
    clock.now += refresh_after - 0.5
    await keys.get(kid="key-0", x5t=None)
    await keys.wait_idle()
    assert state.hits["/jwk"] == 1
    clock.now += 0.5
    await keys.get(kid="key-0", x5t=None)
    await keys.wait_idle()
    assert state.hits["/jwk"] == 2
    assert keys.expires_at == clock.now + expected_ttl


async def test_refresh_without_force_respects_ttl(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.refresh()
    await keys.refresh()
    assert state.hits["/jwk"] == 1
    await keys.refresh(force=True)
    assert state.hits["/jwk"] == 2


# -- rotation, cooldown, concurrency ------------------------------------------------------------


async def test_rotation_picked_up_on_unknown_kid(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.get(kid="key-0", x5t=None)
    state.body = {"keys": [devkeys[1].public_jwk(), devkeys[0].public_jwk()]}
    clock.now += 31  # past the cooldown, well inside the TTL
    assert (await keys.get(kid="key-1", x5t=None)).kid == "key-1"
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    assert state.hits["/jwk"] == 2


async def test_one_refetch_per_cooldown(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    clock.now += 30
    for _ in range(5):
        with pytest.raises(InvalidTokenError) as info:
            await keys.get(kid="nope", x5t=None)
        assert info.value.reason == "unknown_key"
        clock.now += 5
    assert state.hits["/jwk"] == 2  # load + one refetch in 25 s
    # rotation published inside the cooldown is not seen until it passes
    state.body = {"keys": [devkeys[1].public_jwk()]}
    with pytest.raises(InvalidTokenError):
        await keys.get(kid="key-1", x5t=None)
    clock.now += 6
    assert (await keys.get(kid="key-1", x5t=None)).kid == "key-1"
    assert state.hits["/jwk"] == 3


async def test_twenty_concurrent_misses_share_one_fetch(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.get(kid="key-0", x5t=None)
    state.body = {"keys": [devkeys[1].public_jwk()]}
    state.delay_seconds = 0.2
    clock.now += 31
    results = await asyncio.gather(
        *(keys.get(kid="key-1", x5t=None) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, VerificationKey) and r.kid == "key-1" for r in results)
    assert state.hits["/jwk"] == 2
    assert keys.fetch_count == 2


async def test_twenty_concurrent_cold_starts_share_one_fetch(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    state.delay_seconds = 0.1
    keys = make(http, server.url + "/jwk")
    results = await asyncio.gather(*(keys.get(kid="key-0", x5t=None) for _ in range(20)))
    assert {r.kid for r in results} == {"key-0"}
    assert state.hits["/jwk"] == 1


async def test_cancelled_waiter_does_not_cancel_shared_fetch(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    state.delay_seconds = 0.2
    keys = make(http, server.url + "/jwk")
    first = asyncio.ensure_future(keys.get(kid="key-0", x5t=None))
    second = asyncio.ensure_future(keys.get(kid="key-0", x5t=None))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).kid == "key-0"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert state.hits["/jwk"] == 1


# -- failure modes --------------------------------------------------------------------------


async def test_server_down_after_load_keeps_stale_keys(
    http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state = Upstream()
    state.body = {"keys": [devkeys[0].public_jwk()]}
    clock = Clock()
    with ThreadedServer(state.app()) as server:
        keys = make(http, server.url + "/jwk", clock)
        await keys.get(kid="key-0", x5t=None)
    clock.now += 301  # TTL over, server gone
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    await keys.wait_idle()  # the refresh it started in the background
    assert keys.ready
    assert keys.last_error is not None and "HTTP failure" in keys.last_error
    with pytest.raises(KeysUnavailableError):
        await keys.refresh(force=True)
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    with pytest.raises(InvalidTokenError) as info:
        await keys.get(kid="key-9", x5t=None)
    assert info.value.reason == "unknown_key"


async def test_server_down_with_nothing_cached(http: httpx.AsyncClient) -> None:
    clock = Clock()
    keys = make(http, dead_url(), clock)
    with pytest.raises(KeysUnavailableError) as info:
        await keys.get(kid="key-0", x5t=None)
    assert info.value.status_code == 503
    assert not keys.ready and keys.last_error
    # inside the cooldown: fail fast without another connection attempt
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.fetch_count == 1
    clock.now += 30
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.fetch_count == 2


async def test_hanging_server_times_out(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    state.hang = True
    keys = make(http, server.url + "/jwk", fetch_timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert time.monotonic() - started < 2
    assert keys.last_error == "timed out"


async def test_slow_drip_bounded_by_total_deadline(http: httpx.AsyncClient) -> None:
    async def drip() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" "
            await asyncio.sleep(0.05)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await StreamingResponse(drip())(scope, receive, send)

    with ThreadedServer(app, timeout_graceful_shutdown=1) as server:
        keys = make(http, server.url + "/jwk", fetch_timeout_seconds=0.4)
        started = time.monotonic()
        with pytest.raises(KeysUnavailableError):
            await keys.get(kid="key-0", x5t=None)
        assert time.monotonic() - started < 2
        assert keys.last_error == "timed out"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"<html>maintenance</html>", 200, "JWKS is not a JSON object"),
        (b"", 200, "JWKS is not a JSON object"),
        (b"\xff\xfe{}", 200, "JWKS is not a JSON object"),
        (b"[]", 200, "JWKS is not a JSON object"),
        (b'{"keys":[],"keys":[]}', 200, "JWKS is not a JSON object"),
        (b'{"keys":' + b"[" * 2000 + b"]" * 2000 + b"}", 200, "JWKS is not a JSON object"),
        (b'{"keys":"all"}', 200, "JWKS has no 'keys' array"),
        (b"{}", 200, "JWKS has no 'keys' array"),
        (b'{"keys":[]}', 200, "JWKS contains no usable signature key"),
        (b'{"keys":[1,"x",null,{}]}', 200, "JWKS contains no usable signature key"),
        (b'{"keys":[]}', 500, "HTTP status 500"),
        (b'{"keys":[]}', 404, "HTTP status 404"),
    ],
    ids=lambda v: str(v)[:20],
)
async def test_garbage_documents(
    upstream: Up,
    http: httpx.AsyncClient,
    devkeys: list[DevKey],
    body: bytes,
    status: int,
    error: str,
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.get(kid="key-0", x5t=None)
    state.body, state.status = body, status
    with pytest.raises(KeysUnavailableError):
        await keys.refresh(force=True)
    assert keys.last_error is not None and keys.last_error.startswith(error)
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"  # stale kept
    cold = make(http, server.url + "/jwk", Clock())
    with pytest.raises(KeysUnavailableError):
        await cold.get(kid="key-0", x5t=None)
    assert cold.last_error is not None and cold.last_error.startswith(error)


async def test_oversized_document_with_content_length(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    _state, server = upstream
    keys = make(http, server.url + "/jwk", max_document_bytes=1000)
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.last_error == "document too large"


async def test_oversized_streamed_document(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    state.stream_bytes = 300_000
    keys = make(http, server.url + "/jwk")
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.last_error == "document too large"


async def test_too_many_keys(upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]) -> None:
    state, server = upstream
    state.body = {"keys": [devkeys[0].public_jwk(include_x5c=False)] * 5}
    keys = make(http, server.url + "/jwk", max_keys=4)
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.last_error == "JWKS has more than 4 keys"


async def test_redirect_not_followed(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    keys = make(http, server.url + "/redirect")
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.last_error == "HTTP status 302"
    assert state.hits["/jwk"] == 0


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/jwk", "http://", "http://[::1"])
async def test_bad_urls_never_leak_foreign_exceptions(http: httpx.AsyncClient, url: str) -> None:
    keys = make(http, url)
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)
    assert keys.last_error


# -- which published keys are used --------------------------------------------------------------


def _ec_jwk(kid: str, curve: ec.EllipticCurve | None = None) -> dict[str, Any]:
    curve = curve or ec.SECP256R1()
    numbers = ec.generate_private_key(curve).public_key().public_numbers()
    size = (curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[curve.name]
    return {
        "kty": "EC",
        "crv": crv,
        "kid": kid,
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
    }


def _small_rsa_jwk(kid: str) -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = numbers.public_numbers().n
    return {"kty": "RSA", "kid": kid, "n": b64url(n.to_bytes(128, "big")), "e": "AQAB"}


async def test_key_filtering(upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]) -> None:
    state, server = upstream
    enc = {**devkeys[1].public_jwk(), "kid": "enc", "use": "enc"}
    ops = {**devkeys[1].public_jwk(include_x5c=False), "kid": "ops", "key_ops": ["encrypt"]}
    oct_key = {"kty": "oct", "kid": "oct", "k": b64url(b"secret" * 8)}
    private = {**devkeys[1].public_jwk(include_x5c=False), "kid": "private", "d": "AQAB"}
    mismatch = {**devkeys[1].public_jwk(), "kid": "mismatch"}
    mismatch["x5c"] = devkeys[2].public_jwk()["x5c"]
    del mismatch["x5t"]
    bad_x5t = {**devkeys[1].public_jwk(), "kid": "bad-x5t", "x5t": devkeys[2].x5t}
    bad_x5c = {**devkeys[1].public_jwk(), "kid": "bad-x5c", "x5c": ["!!not base64!!"]}
    bad_n = {"kty": "RSA", "kid": "bad-n", "n": "%%%", "e": "AQAB"}
    state.body = {
        "keys": [
            enc,
            ops,
            oct_key,
            private,
            mismatch,
            bad_x5t,
            bad_x5c,
            bad_n,
            _small_rsa_jwk("small"),
            _ec_jwk("ec"),
            _ec_jwk("secp256k1", ec.SECP384R1()) | {"crv": "secp256k1"},
            {**devkeys[0].public_jwk(), "key_ops": ["verify"]},
        ]
    }
    keys = make(http, server.url + "/jwk")
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    ec_key = await keys.get(kid="ec", x5t=None)
    assert ec_key.kty == "EC" and ec_key.allows("ES256")
    assert not ec_key.allows("ES384") and not ec_key.allows("RS256")
    assert keys.skipped_keys == 10
    for kid in ("enc", "ops", "oct", "private", "mismatch", "bad-x5t", "bad-x5c", "bad-n", "small"):
        with pytest.raises(InvalidTokenError):
            await keys.get(kid=kid, x5t=None)


async def test_published_alg_restricts_key(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    state.body = {"keys": [{**devkeys[0].public_jwk(), "alg": "RS512"}]}
    keys = make(http, server.url + "/jwk")
    key = await keys.get(kid="key-0", x5t=None)
    assert key.allows("RS512") and not key.allows("RS256") and not key.allows("PS512")


async def test_x5c_is_standard_base64(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    jwk = devkeys[0].x5c_only_jwk()
    der = base64.b64decode(jwk["x5c"][0])
    jwk["x5c"] = [base64.urlsafe_b64encode(der).decode()]  # wrong alphabet
    if jwk["x5c"][0] == base64.b64encode(der).decode():  # pragma: no cover - no +/ in it
        pytest.skip("certificate happens to contain no + or /")
    state.body = {"keys": [jwk]}
    keys = make(http, server.url + "/jwk")
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid=devkeys[0].x5t, x5t=None)


def test_config_errors() -> None:
    client = httpx.AsyncClient()
    try:
        with pytest.raises(ConfigError):
            KeySet(name="a", http=client)
        with pytest.raises(ConfigError):
            KeySet(name="a", http=client, jwks_url="http://x/", metadata_url="http://x/")
        with pytest.raises(ConfigError):
            KeySet(
                name="a", http=client, jwks_url="http://x/", min_ttl_seconds=10, max_ttl_seconds=5
            )
        with pytest.raises(ConfigError):
            KeySet(name="a", http=client, jwks_url="http://x/", fetch_timeout_seconds=0)
        for cooldown in (-1, float("nan")):
            with pytest.raises(ConfigError):
                KeySet(
                    name="a", http=client, jwks_url="http://x/", refetch_cooldown_seconds=cooldown
                )
    finally:
        asyncio.run(client.aclose())


# -- stale-while-revalidate, bounded staleness, what starts the cooldown -----------------------
# (issue 16 item 5: a hanging JWKS endpoint stalled every request once the cache expired;
#  issue 11: a key published just after a load or a scheduled refresh was refused for a whole
#  cooldown because every fetch started it)


async def test_hanging_refresh_does_not_delay_requests_with_cached_keys(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, fetch_timeout_seconds=0.5)
    await keys.get(kid="key-0", x5t=None)
    state.hang = True
    clock.now += 301  # lifetime over: stale, well inside max_stale_seconds
    started = time.monotonic()
    results = await asyncio.gather(*(keys.get(kid="key-0", x5t=None) for _ in range(20)))
    elapsed = time.monotonic() - started
    assert {r.kid for r in results} == {"key-0"}
    assert elapsed < 0.2  # not the 0.5 s fetch timeout: nobody waited on the refresh
    assert keys.fetch_count == 2  # one background refresh for all twenty
    await keys.wait_idle()
    assert keys.last_error == "timed out"
    assert state.hits["/jwk"] == 2
    # the failed refresh is retried in the background after the cooldown, still not waited on
    clock.now += 30
    started = time.monotonic()
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    assert time.monotonic() - started < 0.2
    assert keys.fetch_count == 3
    await keys.wait_idle()


async def test_refresh_ahead_of_expiry_picks_up_rotation_without_a_miss(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock)
    await keys.get(kid="key-0", x5t=None)
    assert keys.peek("key-0", None) is not None
    state.body = {"keys": [devkeys[0].public_jwk(), devkeys[1].public_jwk()]}
    state.delay_seconds = 0.3
    clock.now += 300 * KeySet.REFRESH_AHEAD_FRACTION  # refresh due, lifetime not over
    assert keys.peek("key-0", None) is None  # the request goes to get(), which starts the refresh
    started = time.monotonic()
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    assert time.monotonic() - started < 0.2  # answered from the cache, not after the 0.3 s fetch
    await keys.wait_idle()
    assert keys.peek("key-1", None) is not None  # the rotated key arrived before it was needed
    assert state.hits["/jwk"] == 2


async def test_keys_stale_beyond_max_stale_fail_closed(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, max_stale_seconds=600, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    state.status = 500
    clock.now += 300 + 599  # stale for 599 s: still used
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    await keys.wait_idle()
    assert keys.ready and keys.last_error == "HTTP status 500"
    clock.now += 31  # past the bound, cooldown over: this request waits on one fetch, which fails
    with pytest.raises(KeysUnavailableError) as info:
        await keys.get(kid="key-0", x5t=None)
    assert info.value.status_code == 503 and info.value.reason == "keys_unavailable"
    assert "500" not in info.value.detail and "http" not in info.value.detail.lower()
    assert not keys.ready and keys.peek("key-0", None) is None
    hits = state.hits["/jwk"]
    with pytest.raises(KeysUnavailableError):  # inside the cooldown: fail fast, no fetch
        await keys.get(kid="key-0", x5t=None)
    assert state.hits["/jwk"] == hits
    state.status = 200
    clock.now += 30
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"
    assert keys.ready


async def test_max_stale_zero_never_uses_keys_past_their_lifetime(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, max_stale_seconds=0)
    await keys.get(kid="key-0", x5t=None)
    state.status = 503
    clock.now += 300
    with pytest.raises(KeysUnavailableError):
        await keys.get(kid="key-0", x5t=None)


async def test_key_published_just_after_first_load_is_found_at_once(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    state.body = {"keys": [devkeys[0].public_jwk(), devkeys[1].public_jwk()]}
    clock.now += 1  # inside the cooldown, had the first load started it
    assert (await keys.get(kid="key-1", x5t=None)).kid == "key-1"
    assert state.hits["/jwk"] == 2


async def test_key_published_just_after_a_scheduled_refresh_is_found_at_once(
    upstream: Up, http: httpx.AsyncClient, devkeys: list[DevKey]
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    clock.now += 300 * KeySet.REFRESH_AHEAD_FRACTION
    await keys.get(kid="key-0", x5t=None)  # starts the scheduled refresh
    await keys.wait_idle()
    assert state.hits["/jwk"] == 2
    state.body = {"keys": [devkeys[0].public_jwk(), devkeys[2].public_jwk()]}
    clock.now += 1
    assert (await keys.get(kid="key-2", x5t=None)).kid == "key-2"
    assert state.hits["/jwk"] == 3


async def test_flood_of_unknown_kids_fetches_once_per_cooldown(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    state.delay_seconds = 0.05
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    for _ in range(3):  # three cooldowns, each: 40 concurrent then 40 sequential misses
        results = await asyncio.gather(
            *(keys.get(kid=f"nope-{i}", x5t=None) for i in range(40)), return_exceptions=True
        )
        assert all(isinstance(r, InvalidTokenError) and r.reason == "unknown_key" for r in results)
        for i in range(40):
            clock.now += 0.5
            with pytest.raises(InvalidTokenError):
                await keys.get(kid=f"other-{i}", x5t=None)
        clock.now += 10  # 30 s after the fetch that started this cooldown
    assert state.hits["/jwk"] == 1 + 3


async def test_failed_fetch_starts_the_cooldown(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, refetch_cooldown_seconds=30)
    await keys.get(kid="key-0", x5t=None)
    state.status = 500
    with pytest.raises(KeysUnavailableError):
        await keys.refresh(force=True)
    clock.now += 29
    with pytest.raises(InvalidTokenError):
        await keys.get(kid="nope", x5t=None)
    assert state.hits["/jwk"] == 2  # no refetch inside the cooldown after a failure
    clock.now += 1
    with pytest.raises(InvalidTokenError):
        await keys.get(kid="nope", x5t=None)
    assert state.hits["/jwk"] == 3


async def test_unknown_kid_during_a_hanging_refresh_waits_at_most_the_fetch_timeout(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, fetch_timeout_seconds=0.3)
    await keys.get(kid="key-0", x5t=None)
    state.hang = True
    clock.now += 301
    assert (await keys.get(kid="key-0", x5t=None)).kid == "key-0"  # refresh now in flight
    started = time.monotonic()
    with pytest.raises(InvalidTokenError) as info:
        await keys.get(kid="key-new", x5t=None)  # joins the refresh in flight
    assert info.value.reason == "unknown_key"
    assert time.monotonic() - started < 1.0
    assert keys.fetch_count == 2


async def test_carry_over_takes_cached_keys_only_from_the_same_url(
    upstream: Up, http: httpx.AsyncClient
) -> None:
    state, server = upstream
    clock = Clock()
    old = make(http, server.url + "/jwk", clock)
    await old.get(kid="key-0", x5t=None)
    same = make(http, server.url + "/jwk", clock, max_stale_seconds=10)
    other = make(http, server.url + "/jwk?v=2", clock)
    assert same.carry_over(old) and same.ready
    assert same.fetch_count == old.fetch_count == 1  # counters stay monotonic
    assert not other.carry_over(old) and not other.ready
    state.status = 500  # the endpoint is down: the carried keys answer without a fetch
    assert (await same.get(kid="key-0", x5t=None)).kid == "key-0"
    assert state.hits["/jwk"] == 1
    clock.now += 300 + 10  # the new key set's own max_stale_seconds applies
    assert not same.ready


async def test_closed_key_set_cancels_its_refresh(upstream: Up, http: httpx.AsyncClient) -> None:
    state, server = upstream
    clock = Clock()
    keys = make(http, server.url + "/jwk", clock, fetch_timeout_seconds=5)
    await keys.get(kid="key-0", x5t=None)
    state.hang = True
    clock.now += 301
    await keys.get(kid="key-0", x5t=None)
    started = time.monotonic()
    await keys.aclose()
    assert time.monotonic() - started < 1.0
    await keys.wait_idle()


async def test_max_stale_seconds_is_read_from_the_issuer_table(
    upstream: Up, http: httpx.AsyncClient, tmp_path: Any
) -> None:
    from samtykke_gateway.config import load_config

    from tests.state_support import write_config

    state, server = upstream
    config = write_config(tmp_path / "gw.toml", issuer_url=server.url, upstream_url="http://127.0.0.1:9")
    config.write_text(config.read_text()
                      .replace("[issuers.maskinporten]\n", "[issuers.maskinporten]\nmax_stale_seconds = 5\n")
                      .replace(f"{server.url}/maskinporten/jwk", f"{server.url}/jwk"))
    issuers = load_config(config).issuers
    assert issuers["maskinporten"].max_stale_seconds == 5 and issuers["altinn"].max_stale_seconds == 86400
    clock = Clock()
    keys = key_set(issuers["maskinporten"], http, clock=clock)
    await keys.get(kid="key-0", x5t=None)
    state.status = 500
    clock.now += 300 + 4
    assert keys.ready
    clock.now += 1
    assert not keys.ready
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("max_stale_seconds = 5", "max_stale_seconds = -1"))
    with pytest.raises(ConfigError, match="max_stale_seconds"):
        load_config(bad)
