"""The disclosure store found down stops forwarding (``samtykke_gateway.audit.guard``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from samtykke_gateway.audit.guard import NOT_FORWARDED_DETAIL, AuditGuard
from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import STREAM_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio


class _Store:
    def __init__(self) -> None:
        self.up = False
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if not self.up:
            raise AuditUnavailableError("disclosure store ping failed (PoolTimeout)")


async def test_guard_probes_once_per_interval_and_recovers() -> None:
    now = [100.0]
    store = _Store()
    guard = AuditGuard(store, retry_seconds=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    await guard.check()  # up: no probe
    assert store.pings == 0
    guard.failed()
    for _ in range(5):  # within the interval: refused at once, no probe
        with pytest.raises(AuditUnavailableError) as info:
            await guard.check()
        assert info.value.detail == NOT_FORWARDED_DETAIL
    assert store.pings == 0
    now[0] += 1.0
    with pytest.raises(AuditUnavailableError) as info:  # probe fails: the cause is not passed on
        await guard.check()
    assert store.pings == 1 and "PoolTimeout" not in info.value.detail
    with pytest.raises(AuditUnavailableError):  # and the next probe waits another interval
        await guard.check()
    assert store.pings == 1
    store.up = True
    now[0] += 1.0
    await guard.check()  # the probe passes: this caller is the trial
    assert store.pings == 2 and guard.down
    with pytest.raises(AuditUnavailableError):  # others wait for the trial's own write
        await guard.check()
    guard.failed()  # the trial's write failed (reads work, writes do not)
    with pytest.raises(AuditUnavailableError):
        await guard.check()
    now[0] += 1.0
    await guard.check()  # next trial
    guard.succeeded()
    assert not guard.down
    await guard.check()
    assert store.pings == 3


async def test_a_trial_that_never_settles_does_not_block_forever() -> None:
    now = [0.0]
    store = _Store()
    store.up = True
    guard = AuditGuard(store, retry_seconds=1.0, trial_seconds=30.0, clock=lambda: now[0])  # type: ignore[arg-type]
    guard.failed()
    now[0] += 1.0
    await guard.check()
    now[0] += 29.0
    with pytest.raises(AuditUnavailableError):
        await guard.check()
    now[0] += 1.5
    await guard.check()
    assert store.pings == 2


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_store_down_stops_forwarding(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The first request after the store went down is forwarded (the outage shows only when its
    record is written) and answered 503; the next ones are refused before the data API sees
    them — a POST is not executed upstream without a record; once the store is back, requests
    flow again within a second."""
    async with served(mode, issuer_url) as gw:
        headers = {**a3_headers(dev_issuer), "Content-Type": "application/json"}
        gw.store.set_unavailable(True)
        first = await gw.client.post(STREAM_PATH + "?case=echo", content=b'{"betaling": 1}', headers=headers)
        assert first.status_code == 503 and first.json()["reason"] == "audit_unavailable"
        assert len(gw.lab.requests) == 1
        assert "not forwarded" not in first.text  # it was: never say otherwise
        for _ in range(3):
            again = await gw.client.post(STREAM_PATH + "?case=echo", content=b'{"betaling": 1}', headers=headers)
            assert again.status_code == 503 and again.json()["reason"] == "audit_unavailable"
            assert "simulated" not in again.text  # the store's own error stays in the log
            assert "not forwarded" in again.text
        assert len(gw.lab.requests) == 1, "forwarded while the disclosure log was known down"
        gw.store.set_unavailable(False)
        await asyncio.sleep(1.1)
        ok = await gw.client.post(STREAM_PATH + "?case=echo", content=b'{"betaling": 1}', headers=headers)
        assert ok.status_code == 200, ok.text
        assert len(gw.lab.requests) == 2



@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_store_that_reads_but_cannot_write_lets_one_request_a_second_through(
    mode: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """PostgreSQL read-only after a failover, a full disk: ``ping`` works, writes fail. After the
    first failed write, a probe lets one trial request through per second, not every request
    until the next failure (review: 19 of 60 POSTs in 3 s were executed upstream)."""
    async with served(mode, issuer_url) as gw:
        async def failing_append(record: Any) -> None:
            raise AuditUnavailableError("append failed (ReadOnlySqlTransaction)")

        gw.store.append = failing_append  # ping still succeeds
        headers = {**a3_headers(dev_issuer), "Content-Type": "application/json"}
        first = await gw.client.post(STREAM_PATH + "?case=echo", content=b"{}", headers=headers)
        assert first.status_code == 503
        before = len(gw.lab.requests)

        async def one(delay: float) -> int:
            await asyncio.sleep(delay)
            response = await gw.client.post(STREAM_PATH + "?case=echo", content=b"{}", headers=headers)
            return response.status_code

        statuses = await asyncio.gather(*(one(i * 0.05) for i in range(50)))  # 2.5 s of traffic
        assert set(statuses) == {503}
        assert len(gw.lab.requests) - before <= 3, len(gw.lab.requests) - before
