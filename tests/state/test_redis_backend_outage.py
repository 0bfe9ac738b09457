"""Redis going away and coming back, through a loopback TCP relay in front of the real Redis:
requests fail closed (503 ``state_unavailable``) within the socket timeout while it is down,
``/readyz`` says so, and service resumes by itself when Redis is reachable again.

Redis losing its data (a redis-server of the test's own, killed and restarted): without
persistence the gateway notices the reset (generation marker) and answers 503
``consent_state_reset`` on stateful routes until an operator confirms; with AOF
``appendfsync always`` nothing is lost and nothing is reported."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.audit.memory import MemoryStore
from samtykke_gateway.cli.main import main
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import own_redis, redis_prefix, state_config, write_config
from tests.support import tax_base_path
from tests.state.test_service_enforcement import a3, gateway

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
TAX = "spesifisertsummertskattegrunnlag"


class Relay:
    """TCP relay 127.0.0.1:port → Redis that can be cut (listener closed, connections reset)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()


async def test_redis_outage_fails_closed_and_recovers(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with redis_prefix() as (url, prefix):
        target = urlsplit(url)
        relay = Relay(target.hostname or "127.0.0.1", target.port or 6379)
        await relay.start()
        relayed = f"redis://127.0.0.1:{relay.port}{target.path or '/0'}"
        config = state_config(issuer_url, "http://up.invalid", state={"url": relayed, "key_prefix": prefix},
                              **{TAX: {"one_time": True}})
        async with gateway(config) as (client, gw):
            spent = str(uuid.uuid4())
            assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))).status_code == 200
            await relay.cut()
            started = time.monotonic()
            r = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
            assert r.status_code == 503 and r.json()["reason"] == "state_unavailable"
            assert time.monotonic() - started < 3  # bounded by the 1 s socket timeouts
            with pytest.raises(Exception) as info:
                await gw.state.ping()
            assert type(info.value).__name__ == "StateUnavailableError"
            await relay.start()  # Redis is back (same port)
            ok = None
            for _ in range(20):
                ok = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
                if ok.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert ok is not None and ok.status_code == 200
            # what was spent before the outage is still spent
            again = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))
            assert again.status_code == 403 and again.json()["reason"] == "consent_spent"
        await relay.cut()


def _config(issuer_url: str, redis_url: str) -> GatewayConfig:
    return state_config(issuer_url, "http://up.invalid", state={"url": redis_url, "key_prefix": "gw:"},
                        **{TAX: {"one_time": True}})


@contextlib.asynccontextmanager
async def _gateway_on(config: GatewayConfig, store: MemoryStore) -> Any:
    """The middleware over the example upstream, with a disclosure log that outlives it (a
    replica restarted keeps its log)."""
    gw = Gateway(config, store=store)
    await gw.start()
    try:
        transport = httpx.ASGITransport(app=ConsentMiddleware(ExampleUpstream().app, gateway=gw),
                                        client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield client, gw
    finally:
        await gw.close()


async def _readiness(config: GatewayConfig, gw: Gateway) -> tuple[bool, dict[str, Any]]:
    app = SidecarApp(config, gateway=gw)
    try:
        return await app.readiness()
    finally:
        await app.shutdown()


async def _status(client: httpx.AsyncClient, issuer: DevIssuer, consent_id: str) -> tuple[int, str | None]:
    r = await client.get(tax_base_path("2022"), headers=a3(issuer, consent_id))
    return r.status_code, (r.json().get("reason") if r.status_code != 200 else None)


async def test_redis_restarted_empty_answers_consent_state_reset_until_an_operator_confirms(
        dev_issuer: DevIssuer, issuer_url: str, tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis", persistent=False) as server:
        config = _config(issuer_url, server.url)
        store = MemoryStore()
        await store.open()
        spent, revoked, fresh = (str(uuid.uuid4()) for _ in range(3))
        async with _gateway_on(config, store) as (client, gw):
            assert await _status(client, dev_issuer, spent) == (200, None)  # first start: marker created
            assert await _status(client, dev_issuer, spent) == (403, "consent_spent")
            assert await gw.state.backend.revoke([revoked]) == 1  # type: ignore[attr-defined]
            assert await _status(client, dev_issuer, revoked) == (403, "consent_revoked")

            await asyncio.to_thread(server.restart)  # no persistence: every key is gone

            # the spent and the revoked consent are NOT served again; nothing stateful is
            assert await _status(client, dev_issuer, spent) == (503, "consent_state_reset")
            assert await _status(client, dev_issuer, revoked) == (503, "consent_state_reset")
            assert await _status(client, dev_issuer, fresh) == (503, "consent_state_reset")
            ready, checks = await _readiness(config, gw)
            assert not ready and checks["consent_state"] == "consent_state_reset"
            assert checks["consent_state_durability"].startswith("warning: no persistence")

        # a replica started now (its disclosure log has records) fails closed as well
        async with _gateway_on(config, store) as (client, gw):
            assert await _status(client, dev_issuer, fresh) == (503, "consent_state_reset")

            cfg = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                               extra=f'[state]\nurl = "{server.url}"\nkey_prefix = "gw:"\n')
            assert await asyncio.to_thread(main, ["state", "confirm-reset", "--config", str(cfg)]) == 0
            assert await asyncio.to_thread(main, ["state", "confirm-reset", "--config", str(cfg)]) == 1

            assert await _status(client, dev_issuer, fresh) == (200, None)
            assert (await _readiness(config, gw))[0]
            # what was spent before the reset is unknown now (the docs say so: the operator
            # checks the disclosure log and re-revokes before confirming)
            assert await _status(client, dev_issuer, spent) == (200, None)
            assert await _status(client, dev_issuer, spent) == (403, "consent_spent")
        await store.close()


async def test_a_replica_running_through_the_reset_adopts_the_operators_confirmation(
        dev_issuer: DevIssuer, issuer_url: str, tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis", persistent=False) as server:
        config = _config(issuer_url, server.url)
        store = MemoryStore()
        await store.open()
        async with _gateway_on(config, store) as (client, _):
            assert await _status(client, dev_issuer, str(uuid.uuid4())) == (200, None)
            await asyncio.to_thread(server.restart)
            assert await _status(client, dev_issuer, str(uuid.uuid4())) == (503, "consent_state_reset")
            from samtykke_gateway.state.redis_backend import RedisBackend

            operator = RedisBackend(server.url, key_prefix="gw:")
            try:
                written, marker = await operator.confirm_reset()
            finally:
                await operator.close()
            assert written and marker is not None and marker.origin == "operator"
            assert await _status(client, dev_issuer, str(uuid.uuid4())) == (200, None)
        await store.close()


async def test_redis_with_aof_always_killed_and_restarted_keeps_spent_and_revoked_consents(
        dev_issuer: DevIssuer, issuer_url: str, tmp_path: Path) -> None:
    with own_redis(tmp_path / "redis", persistent=True) as server:
        config = _config(issuer_url, server.url)
        store = MemoryStore()
        await store.open()
        spent, revoked = str(uuid.uuid4()), str(uuid.uuid4())
        async with _gateway_on(config, store) as (client, gw):
            assert await _status(client, dev_issuer, spent) == (200, None)
            assert await gw.state.backend.revoke([revoked]) == 1  # type: ignore[attr-defined]
            await asyncio.to_thread(server.restart)  # SIGKILL: only what AOF fsynced survives

            assert await _status(client, dev_issuer, spent) == (403, "consent_spent")
            assert await _status(client, dev_issuer, revoked) == (403, "consent_revoked")
            assert await _status(client, dev_issuer, str(uuid.uuid4())) == (200, None)
            ready, checks = await _readiness(config, gw)
            assert ready, checks
            assert checks["consent_state"] == "ok"
            assert checks["consent_state_durability"] == "ok: AOF, appendfsync always"
        await store.close()
