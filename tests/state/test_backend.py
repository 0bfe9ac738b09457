"""State backends (memory and real Redis) behave the same: atomic one-time claims, release,
revocation (case-insensitive), daily limits, jti accounting, leases, and fail-closed errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from samtykke_gateway.exceptions import StateUnavailableError
from samtykke_gateway.state import Claim, MemoryBackend, StateBackend
from samtykke_gateway.state.redis_backend import RedisBackend

from tests.state_support import DEAD_REDIS_URL, redis_backend, redis_prefix

pytestmark = pytest.mark.anyio
KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@contextlib.asynccontextmanager
async def backends(kind: str, n: int = 1) -> AsyncIterator[list[StateBackend]]:
    """``n`` views of one state: for Redis, ``n`` separate clients (as ``n`` replicas)."""
    if kind == "memory":
        one = MemoryBackend()
        yield [one] * n
        return
    async with redis_prefix() as (url, prefix):
        made = [redis_backend(url, prefix) for _ in range(n)]
        try:
            yield made  # type: ignore[misc]
        finally:
            for b in made:
                await b.close()


def claim(consent_id: str, **kw: Any) -> Claim:
    base: dict[str, Any] = dict(consent_id=consent_id.lower(), check_revocation=True, jti_key=None,
                                jti_mode="off", jti_ttl_seconds=60, one_time=False,
                                one_time_ttl_seconds=3600, usage_key=None, daily_limit=0,
                                token=uuid.uuid4().hex)
    base.update(kw)
    return Claim(**base)


@pytest.mark.parametrize("kind", KINDS)
async def test_one_time_first_delivery_spends_the_consent(kind: str) -> None:
    async with backends(kind) as (b,):
        cid = str(uuid.uuid4())
        first = claim(cid, one_time=True)
        r = await b.begin(first)
        assert r.outcome == "ok"
        assert await b.spent(cid) == "claimed"
        assert (await b.begin(claim(cid, one_time=True))).outcome == "spent"  # in flight
        await b.finish(first, r, released=True)
        assert await b.spent(cid.upper()) == "spent"
        assert (await b.begin(claim(cid, one_time=True))).outcome == "spent"


@pytest.mark.parametrize("kind", KINDS)
async def test_claim_is_given_back_when_nothing_was_released(kind: str) -> None:
    async with backends(kind) as (b,):
        cid = str(uuid.uuid4())
        first = claim(cid, one_time=True)
        r = await b.begin(first)
        await b.finish(first, r, released=False)
        assert await b.spent(cid) is None
        again = claim(cid, one_time=True)
        r2 = await b.begin(again)
        assert r2.outcome == "ok"
        # a stale finish from the first request must not release the second one's claim
        await b.finish(first, r, released=False)
        assert await b.spent(cid) == "claimed"
        await b.finish(again, r2, released=True)
        assert await b.spent(cid) == "spent"


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_claims_across_replicas_only_one_wins(kind: str) -> None:
    async with backends(kind, n=4) as replicas:
        cid = str(uuid.uuid4())
        results = await asyncio.gather(
            *(replicas[i % 4].begin(claim(cid, one_time=True)) for i in range(40))
        )
        assert sorted(r.outcome for r in results).count("ok") == 1
        assert {r.outcome for r in results} == {"ok", "spent"}


@pytest.mark.parametrize("kind", KINDS)
async def test_revocation_is_case_insensitive_and_seen_by_every_replica(kind: str) -> None:
    async with backends(kind, n=2) as (a, b):
        cid = str(uuid.uuid4()).upper()
        assert (await b.begin(claim(cid))).outcome == "ok"
        assert await a.revoke([cid, cid.lower()]) == 1
        assert await a.revoke([cid]) == 0
        assert await b.revoked(cid.lower())
        assert (await b.begin(claim(cid))).outcome == "revoked"
        # revocation wins over everything and takes nothing
        once = claim(cid, one_time=True)
        assert (await b.begin(once)).outcome == "revoked"
        assert await b.spent(cid) is None
        # with revocation checks off the backend ignores it
        assert (await b.begin(claim(cid, check_revocation=False))).outcome == "ok"


@pytest.mark.parametrize("kind", KINDS)
async def test_daily_limit_counts_and_gives_back(kind: str) -> None:
    async with backends(kind) as (b,):
        cid = str(uuid.uuid4())
        day = time.strftime("%Y-%m-%d")
        made = [claim(cid, usage_key=f"r:{day}", daily_limit=2) for _ in range(3)]
        r1, r2, r3 = [await b.begin(c) for c in made]
        assert (r1.outcome, r2.outcome, r3.outcome) == ("ok", "ok", "limit")
        await b.finish(made[1], r2, released=False)  # an upstream failure does not count
        assert (await b.begin(claim(cid, usage_key=f"r:{day}", daily_limit=2))).outcome == "ok"
        assert (await b.begin(claim(cid, usage_key=f"r:{day}", daily_limit=2))).outcome == "limit"
        # another day, another route: separate counters
        assert (await b.begin(claim(cid, usage_key="r:2000-01-01", daily_limit=2))).outcome == "ok"
        assert (await b.begin(claim(cid, usage_key=f"other:{day}", daily_limit=2))).outcome == "ok"


@pytest.mark.parametrize("kind", KINDS)
async def test_limit_refusal_gives_back_the_one_time_claim(kind: str) -> None:
    async with backends(kind) as (b,):
        cid = str(uuid.uuid4())
        first = claim(cid, usage_key="r:d", daily_limit=1)
        await b.begin(first)
        refused = await b.begin(claim(cid, one_time=True, usage_key="r:d", daily_limit=1))
        assert refused.outcome == "limit"
        assert await b.spent(cid) is None


@pytest.mark.parametrize("kind", KINDS)
async def test_jti_log_counts_reuse_refuse_refuses(kind: str) -> None:
    async with backends(kind) as (b,):
        jti = uuid.uuid4().hex
        r1 = await b.begin(claim("c1", jti_key=jti, jti_mode="log"))
        r2 = await b.begin(claim("c1", jti_key=jti, jti_mode="log"))
        assert (r1.outcome, r1.jti_reused, r2.outcome, r2.jti_reused) == ("ok", False, "ok", True)
        jti2 = uuid.uuid4().hex
        c = claim("c2", jti_key=jti2, jti_mode="refuse")
        r = await b.begin(c)
        assert r.outcome == "ok" and r.jti_marked
        assert (await b.begin(claim("c2", jti_key=jti2, jti_mode="refuse"))).outcome == "replay"
        await b.finish(c, r, released=False)  # nothing released: the token may be used again
        assert (await b.begin(claim("c2", jti_key=jti2, jti_mode="refuse"))).outcome == "ok"


async def test_jti_and_claim_keys_expire_with_the_token_memory() -> None:
    now = [1000.0]
    b = MemoryBackend(clock=lambda: now[0])
    jti = "j"
    assert (await b.begin(claim("c", jti_key=jti, jti_mode="refuse", jti_ttl_seconds=10))).outcome == "ok"
    now[0] += 11
    assert (await b.begin(claim("c", jti_key=jti, jti_mode="refuse", jti_ttl_seconds=10))).outcome == "ok"
    await b.begin(claim("d", one_time=True, one_time_ttl_seconds=60))
    now[0] += 61
    assert await b.spent("d") is None


@pytest.mark.redis
async def test_redis_keys_carry_expiry_and_prefix() -> None:
    import redis.asyncio as redis_asyncio

    async with backends("redis") as (b,):
        assert isinstance(b, RedisBackend)
        cid = str(uuid.uuid4())
        await b.begin(claim(cid, one_time=True, one_time_ttl_seconds=120, jti_key="abc", jti_mode="log",
                            jti_ttl_seconds=30, usage_key="r:d", daily_limit=5))
        client = redis_asyncio.Redis.from_url(b.url_for_display)
        try:
            prefix = b._prefix
            assert 0 < await client.pttl(f"{prefix}once:{cid}") <= 120_000
            assert 0 < await client.pttl(f"{prefix}jti:abc") <= 30_000
            assert 0 < await client.ttl(f"{prefix}usage:r:d:{cid}") <= 172_800
        finally:
            await client.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_meta_and_lease(kind: str) -> None:
    async with backends(kind, n=2) as (a, b):
        assert await a.get_meta("feed:x") is None
        await a.set_meta("feed:x", "2020-02-03T10:09:59.548_1")
        assert await b.get_meta("feed:x") == "2020-02-03T10:09:59.548_1"
        assert await a.acquire_lease("poll", "replica-a", 5)
        assert await a.acquire_lease("poll", "replica-a", 5)  # renew
        assert not await b.acquire_lease("poll", "replica-b", 5)


async def test_redis_down_is_state_unavailable_quickly() -> None:
    b = RedisBackend(DEAD_REDIS_URL, key_prefix="x:")
    errors: list[str] = []
    b._on_error = errors.append
    started = time.monotonic()
    try:
        for op in (b.begin(claim("c", one_time=True)), b.ping(), b.revoke(["c"]), b.get_meta("m")):
            with pytest.raises(StateUnavailableError) as info:
                await op
            assert info.value.status_code == 503 and info.value.reason == "state_unavailable"
            assert info.value.__cause__ is None  # no foreign exception chained out
    finally:
        await b.close()
    assert time.monotonic() - started < 5
    assert errors == ["begin", "ping", "revoke", "get_meta"]


@pytest.mark.parametrize("kind", KINDS)
async def test_clear_claim_drops_a_claim_never_a_spent_mark(kind: str) -> None:
    async with backends(kind) as (b,):
        cid, done = str(uuid.uuid4()), str(uuid.uuid4())
        await b.begin(claim(cid, one_time=True))  # its replica "died": never finished
        c = claim(done, one_time=True)
        await b.finish(c, await b.begin(c), released=True)
        assert await b.clear_claim(cid.upper()) is True
        assert await b.spent(cid) is None
        assert await b.clear_claim(done) is False
        assert await b.spent(done) == "spent"
        assert await b.clear_claim(str(uuid.uuid4())) is False


# -- the generation marker: a Redis that lost its data (docs/protocol.md §8) ----------------------

async def _wipe(url: str, prefix: str) -> None:
    """What a Redis restarted without persistence does to this deployment's keys."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _log_with_records() -> bool:
    return False


@pytest.mark.redis
async def test_a_wiped_redis_is_a_reset_for_every_replica_until_an_operator_confirms() -> None:
    async with redis_prefix() as (url, prefix):
        a, b = redis_backend(url, prefix), redis_backend(url, prefix)
        late = redis_backend(url, prefix)  # started after the reset, with an empty log of its own
        try:
            cid = str(uuid.uuid4())
            first = claim(cid, one_time=True)
            await a.finish(first, await a.begin(first), released=True)
            assert (await b.begin(claim(cid, one_time=True))).outcome == "spent"
            await _wipe(url, prefix)
            for replica in (a, b, late):
                with pytest.raises(StateUnavailableError) as info:
                    await replica.begin(claim(cid, one_time=True))
                assert info.value.status_code == 503 and info.value.reason == "consent_state_reset"
            with pytest.raises(StateUnavailableError):
                await late.ping()
            marker = await a.generation()
            assert marker is not None and marker.kind == "reset"
            written, confirmed = await redis_backend(url, prefix).confirm_reset()
            assert written and confirmed is not None and confirmed.origin == "operator"
            for replica in (a, b, late):
                await replica.ping()
                assert (await replica.begin(claim(str(uuid.uuid4())))).outcome == "ok"
        finally:
            for replica in (a, b, late):
                await replica.close()


@pytest.mark.redis
async def test_no_marker_and_a_disclosure_log_with_records_is_a_reset_not_a_first_start() -> None:
    async with redis_prefix() as (url, prefix):
        restarted = RedisBackend(url, key_prefix=prefix, disclosure_log_empty=_log_with_records)
        unknown = RedisBackend(url, key_prefix=prefix)  # a store that cannot tell: same answer
        try:
            for replica in (restarted, unknown):
                with pytest.raises(StateUnavailableError) as info:
                    await replica.begin(claim(str(uuid.uuid4())))
                assert info.value.reason == "consent_state_reset"
            marker = await restarted.generation()
            assert marker is not None and marker.kind == "reset"  # left for every other replica
        finally:
            await restarted.close()
            await unknown.close()


@pytest.mark.redis
async def test_an_unreadable_disclosure_log_at_first_start_decides_nothing() -> None:
    async def broken() -> bool:
        raise OSError("disk gone")

    async with redis_prefix() as (url, prefix):
        b = RedisBackend(url, key_prefix=prefix, disclosure_log_empty=broken)
        try:
            with pytest.raises(StateUnavailableError) as info:
                await b.begin(claim(str(uuid.uuid4())))
            assert info.value.reason == "state_unavailable"
            assert await b.generation() is None  # neither a first generation nor a reset marker
        finally:
            await b.close()


@pytest.mark.redis
async def test_another_replicas_first_start_or_an_older_marker_is_no_confirmation() -> None:
    import redis.asyncio as redis_asyncio

    async with redis_prefix() as (url, prefix):
        running = redis_backend(url, prefix)
        client = redis_asyncio.Redis.from_url(url, decode_responses=True)
        try:
            await running.ping()  # joins the first generation
            old = await client.get(prefix + "generation")
            assert old is not None
            await _wipe(url, prefix)
            fresh = redis_backend(url, prefix)  # a fresh replica, empty log: creates a first-start marker
            await fresh.ping()
            with pytest.raises(StateUnavailableError) as info:
                await running.begin(claim(str(uuid.uuid4())))
            assert info.value.reason == "consent_state_reset"
            with pytest.raises(StateUnavailableError):  # the running replica left the reset marker
                await fresh.begin(claim(str(uuid.uuid4())))
            await fresh.close()
            written, confirmed = await running.confirm_reset()
            assert written and confirmed is not None
            await running.ping()
            # a snapshot brings back the first, older marker: that is a reset, not a confirmation
            await client.set(prefix + "generation", old)
            with pytest.raises(StateUnavailableError) as info:
                await running.ping()
            assert info.value.reason == "consent_state_reset"
        finally:
            await running.close()
            await client.aclose()


@pytest.mark.redis
async def test_confirm_reset_leaves_a_usable_generation_alone() -> None:
    async with redis_prefix() as (url, prefix):
        b = redis_backend(url, prefix)
        try:
            await b.ping()
            before = await b.generation()
            written, now = await b.confirm_reset()
            assert not written and now == before and before is not None and before.kind == "generation"
        finally:
            await b.close()


def test_a_marker_that_does_not_parse_counts_as_a_reset() -> None:
    from samtykke_gateway.state.redis_backend import parse_marker

    assert parse_marker(None) is None
    for value in ("", "{", "[]", '{"generation": 5}', '{"generation": "x"}', "null"):
        marker = parse_marker(value)
        assert marker is not None and marker.kind == "reset", value
    ok = parse_marker('{"generation": "g1", "created": 1.5, "origin": "operator"}')
    assert ok is not None and ok.kind == "generation" and ok.generation == "g1" and ok.created == 1.5
