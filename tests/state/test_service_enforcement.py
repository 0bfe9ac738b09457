"""Consent state on the enforcement path (docs/protocol.md §4 step 9, §8), through the real middleware in
front of the example upstream, with the memory backend and real Redis: one-time consents,
revocation (backend, file), daily limits, jti replay, and fail-closed behaviour with Redis down."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.observe.metrics import GatewayMetrics
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import DEAD_REDIS_URL, redis_prefix, state_config
from tests.support import BANK, INCOME_PATH, TAX_BASE_PERSON, TAX_BASE_SCOPE, TAX_BASE_RESOURCE, a2_headers, tax_base_path

pytestmark = pytest.mark.anyio
TAX = "spesifisertsummertskattegrunnlag"
KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def a3(issuer: DevIssuer, consent_id: str, **mp: Any) -> dict[str, str]:
    details = [DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, consent_id=consent_id,
                                         rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])]
    token = issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=details, **mp)
    return {"Authorization": f"Bearer {token}"}


class Flaky:
    """The example upstream, answering 500 to the next ``fail`` requests."""

    def __init__(self) -> None:
        self.inner = ExampleUpstream()
        self.fail = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.fail > 0:
            self.fail -= 1
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"boom"})
            return
        await self.inner.app(scope, receive, send)


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig, upstream: Any = None) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    gw = Gateway(config)
    app = ConsentMiddleware(upstream or ExampleUpstream().app, gateway=gw)
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield client, gw
    finally:
        await gw.close()


@contextlib.asynccontextmanager
async def state_table(kind: str, **extra: Any) -> AsyncIterator[dict[str, Any]]:
    if kind == "memory":
        yield {"url": "memory://", **extra}
        return
    async with redis_prefix() as (url, prefix):
        yield {"url": url, "key_prefix": prefix.rstrip(":") + ":", **extra}


@pytest.mark.parametrize("kind", KINDS)
async def test_one_time_consent_delivered_once(kind: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with state_table(kind) as st:
        config = state_config(issuer_url, "http://up.invalid", state=st, **{TAX: {"one_time": True}})
        async with gateway(config) as (client, gw):
            cid = str(uuid.uuid4())
            first = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert first.status_code == 200, first.text
            again = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid.upper()))
            assert again.status_code == 403
            assert again.json()["reason"] == "consent_spent"
            assert "already been used" in again.json()["detail"]
            record = next(r for r in gw.store.records if r.correlation_id == again.headers["x-correlation-id"])  # type: ignore[attr-defined]
            assert (record.decision, record.reason, record.status) == ("deny", "consent_spent", 403)
            # another consent is unaffected; the same consent on a route that is not one-time is too
            assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_one_time_claim_released_when_upstream_fails(kind: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with state_table(kind) as st:
        config = state_config(issuer_url, "http://up.invalid", state=st, **{TAX: {"one_time": True}})
        upstream = Flaky()
        async with gateway(config, upstream) as (client, gw):
            cid = str(uuid.uuid4())
            upstream.fail = 1
            failed = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert failed.status_code == 500  # generic upstream error body, nothing released
            assert await gw.state.backend.spent(cid) is None  # type: ignore[attr-defined]
            ok = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert ok.status_code == 200
            assert await gw.state.backend.spent(cid) == "spent"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
async def test_revocation_in_backend_refuses_every_route(kind: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with state_table(kind) as st:
        config = state_config(issuer_url, "http://up.invalid", state=st)
        async with gateway(config) as (client, gw):
            cid = str(uuid.uuid4())
            headers = a2_headers(dev_issuer, consent_id=cid.upper())
            assert (await client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=headers)).status_code == 200
            await gw.state.backend.revoke([cid])  # type: ignore[attr-defined]
            r = await client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer, consent_id=cid.upper()))
            assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
            r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"


async def test_revocation_file_is_reread_and_fails_closed(dev_issuer: DevIssuer, issuer_url: str, tmp_path: Path) -> None:
    revoked = str(uuid.uuid4())
    path = tmp_path / "revoked.txt"
    path.write_text(f"# revoked consents\n{revoked.upper()}  # by support ticket\nnot a/valid id\n\n")
    config = state_config(issuer_url, "http://up.invalid", state={"revocation_file": str(path)})
    async with gateway(config) as (client, gw):
        gw.state.revocation_file._interval = 0  # type: ignore[attr-defined]  # re-check on every request
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, revoked))
        assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
        other = str(uuid.uuid4())
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, other))).status_code == 200
        with path.open("a") as f:
            f.write(other + "\n")
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, other))
        assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
        path.unlink()
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
        assert r.status_code == 503 and r.json()["reason"] == "revocation_file_unreadable"


@pytest.mark.parametrize("kind", KINDS)
async def test_daily_limit_is_429(kind: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with state_table(kind) as st:
        config = state_config(issuer_url, "http://up.invalid", state=st, **{TAX: {"daily_limit": 2}})
        async with gateway(config) as (client, _):
            cid = str(uuid.uuid4())
            codes = [(await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert r.json()["reason"] == "usage_limit_reached"


@pytest.mark.parametrize("kind", KINDS)
async def test_jti_replay_refuse_and_log(kind: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with state_table(kind, jti_replay="refuse") as st:
        config = state_config(issuer_url, "http://up.invalid", state=st)
        async with gateway(config) as (client, _):
            headers = a3(dev_issuer, str(uuid.uuid4()))
            assert (await client.get(tax_base_path("2022"), headers=headers)).status_code == 200
            r = await client.get(tax_base_path("2022"), headers=headers)
            assert r.status_code == 401 and r.json()["reason"] == "token_replayed"
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
    async with state_table(kind, jti_replay="log") as st:
        config = state_config(issuer_url, "http://up.invalid", state=st)
        async with gateway(config) as (client, gw):
            headers = a3(dev_issuer, str(uuid.uuid4()))
            for _ in range(3):
                assert (await client.get(tax_base_path("2022"), headers=headers)).status_code == 200
            assert isinstance(gw.observer, GatewayMetrics)
            assert gw.observer.sample("samtykke_jti_reuse_total") == 2


async def test_redis_down_fails_closed(dev_issuer: DevIssuer, issuer_url: str) -> None:
    # revocation checked (default): every protected route needs the backend -> 503
    config = state_config(issuer_url, "http://up.invalid", state={"url": DEAD_REDIS_URL})
    async with gateway(config) as (client, gw):
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
        assert r.status_code == 503 and r.json()["reason"] == "state_unavailable"
        assert isinstance(gw.observer, GatewayMetrics)
        assert (gw.observer.sample("samtykke_state_errors_total") or 0) >= 1
        # refusals decided before the state is consulted are unaffected (401 stays 401)
        assert (await client.get(tax_base_path("2022"))).status_code == 401


async def test_redis_down_routes_that_need_no_state_keep_working(dev_issuer: DevIssuer, issuer_url: str) -> None:
    config = state_config(issuer_url, "http://up.invalid",
                          state={"url": DEAD_REDIS_URL, "check_revocation": False, "jti_replay": "log"},
                          inntekt={"one_time": True})
    async with gateway(config) as (client, _):
        for _ in range(2):  # jti logging degrades (logged, skipped), the route keeps serving
            r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
            assert r.status_code == 200
        r = await client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert r.status_code == 503 and r.json()["reason"] == "state_unavailable"  # one-time needs it


async def test_jti_refuse_with_redis_down_is_503(dev_issuer: DevIssuer, issuer_url: str) -> None:
    config = state_config(issuer_url, "http://up.invalid",
                          state={"url": DEAD_REDIS_URL, "check_revocation": False, "jti_replay": "refuse"})
    async with gateway(config) as (client, _):
        r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
        assert r.status_code == 503


@pytest.mark.redis
async def test_two_gateways_share_redis(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with redis_prefix() as (url, prefix):
        config = state_config(issuer_url, "http://up.invalid", state={"url": url, "key_prefix": prefix},
                              **{TAX: {"one_time": True}})
        async with gateway(config) as (one, gw1), gateway(config) as (two, _):
            cid = str(uuid.uuid4())
            assert (await one.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))).status_code == 200
            r = await two.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))
            assert r.status_code == 403 and r.json()["reason"] == "consent_spent"
            revoked = str(uuid.uuid4())
            await gw1.state.backend.revoke([revoked])  # type: ignore[attr-defined]
            r = await two.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer, consent_id=revoked))
            assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
