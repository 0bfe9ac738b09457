"""The disclosure store found down stops forwarding (``samtykke_gateway.audit.guard``)."""

from __future__ import annotations

import asyncio

import pytest

from samtykke_gateway.audit.guard import UNAVAILABLE_DETAIL, AuditGuard
from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.testing import DevIssuer

from .proxy_support import STREAM_PATH, served
from .support import a3_headers

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
        assert info.value.detail == UNAVAILABLE_DETAIL
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
    await guard.check()
    assert store.pings == 2 and not guard.down
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
        for _ in range(3):
            again = await gw.client.post(STREAM_PATH + "?case=echo", content=b'{"betaling": 1}', headers=headers)
            assert again.status_code == 503 and again.json()["reason"] == "audit_unavailable"
            assert "simulated" not in again.text  # the store's own error stays in the log
        assert len(gw.lab.requests) == 1, "forwarded while the disclosure log was known down"
        gw.store.set_unavailable(False)
        await asyncio.sleep(1.1)
        ok = await gw.client.post(STREAM_PATH + "?case=echo", content=b'{"betaling": 1}', headers=headers)
        assert ok.status_code == 200, ok.text
        assert len(gw.lab.requests) == 2
