"""Redis going away and coming back, through a loopback TCP relay in front of the real Redis:
requests fail closed (503 ``state_unavailable``) within the socket timeout while it is down,
``/readyz`` says so, and service resumes by itself when Redis is reachable again."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from urllib.parse import urlsplit

import pytest

from samtykke_gateway.testing import DevIssuer

from .state_support import redis_prefix, state_config
from .support import tax_base_path
from .test_state_enforcement import a3, gateway

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
