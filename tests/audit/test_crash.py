"""Crash test (issue 5): ``kill -9`` of ``samtykke-gateway serve`` under concurrent load loses
no disclosure record of a released response and leaves a chain that verifies.

The sidecar is a real subprocess in front of the example upstream (a loopback thread), keys from
the dev issuer's JWKS. 16 clients send valid Altinn 2 pairs (income), valid Altinn 3 tokens
(specified tax base 2022) and denied requests (no token, a period outside the consent). The
process is killed with SIGKILL while requests are in flight, restarted on the same store, loaded
again and stopped. Then ``samtykke-gateway audit verify`` must exit 0 and every 200 the clients
received must have its record (``X-Correlation-ID`` response header = record ``correlation_id``,
read back with ``audit export --subject``). A gateway that released a body before its record
was durable would lose the records still queued at the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from samtykke_gateway.cli.main import main
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import cli, free_port, sidecar_process, write_config
from tests.support import INCOME_PATH, INCOME_PERSON, TAX_BASE_PERSON, a2_headers, a3_headers, tax_base_path
from tests.audit_support import pg_schema, with_query

pytestmark = pytest.mark.slow
__all__ = ["pg_schema"]  # the fixture, re-exported for pytest

CLIENTS = 16
POOL = 24  # pre-minted tokens per kind: the load generator must not eat the gateway's CPU
ALLOWED_INCOME = INCOME_PATH + "?fraOgMed=2018-07&tilOgMed=2018-07"
DENIED_INCOME = INCOME_PATH + "?fraOgMed=2018-09"  # outside the consented period: 403
ALLOWED_TAX_BASE = tax_base_path("2022")


@dataclass
class Tally:
    """What the clients saw: correlation ids of every 200 (body fully read) and of the rest."""

    ok: list[str] = field(default_factory=list)
    denied: dict[int, int] = field(default_factory=dict)
    other: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0


class Load:
    def __init__(self, issuer: DevIssuer) -> None:
        self.a2 = [a2_headers(issuer, lifetime_seconds=600) for _ in range(POOL)]
        self.a3 = [a3_headers(issuer, lifetime_seconds=600) for _ in range(POOL)]

    def pick(self, rng: random.Random) -> tuple[str, dict[str, str], int]:
        roll = rng.random()
        if roll < 0.45:
            return ALLOWED_INCOME, rng.choice(self.a2), 200
        if roll < 0.80:
            return ALLOWED_TAX_BASE, rng.choice(self.a3), 200
        if roll < 0.90:
            return DENIED_INCOME, rng.choice(self.a2), 403
        return ALLOWED_INCOME, {}, 401

    async def run(self, base: str, tally: Tally, *, seconds: float, kill: subprocess.Popen[bytes] | None = None,
                  kill_after_ok: int = 0) -> None:
        """``CLIENTS`` workers for ``seconds``; with ``kill``, SIGKILL the process once
        ``kill_after_ok`` 200s have arrived (requests still in flight), then stop."""
        stop, enough = asyncio.Event(), asyncio.Event()
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:

            async def worker(n: int) -> None:
                rng = random.Random(n)
                while not stop.is_set():
                    path, headers, expected = self.pick(rng)
                    try:
                        r = await client.get(path, headers=headers)
                    except httpx.HTTPError:
                        tally.transport_errors += 1
                        if kill is not None and kill.poll() is not None:
                            return
                        await asyncio.sleep(0.01)
                        continue
                    if r.status_code == 200:
                        assert expected == 200, (path, r.status_code)
                        tally.ok.append(r.headers["x-correlation-id"])
                        if len(tally.ok) >= kill_after_ok:
                            enough.set()
                    elif r.status_code == expected:
                        tally.denied[r.status_code] = tally.denied.get(r.status_code, 0) + 1
                    else:
                        tally.other[r.status_code] = tally.other.get(r.status_code, 0) + 1

            async def killer() -> None:
                assert kill is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(enough.wait(), timeout=seconds)
                kill.send_signal(signal.SIGKILL)
                kill.wait(5)

            async def timer() -> None:
                await asyncio.sleep(seconds)
                stop.set()

            tasks = [asyncio.create_task(worker(i)) for i in range(CLIENTS)]
            side = asyncio.create_task(killer() if kill is not None else timer())
            await side
            if kill is not None:
                await asyncio.sleep(0.3)  # let the in-flight requests fail on the dead socket
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


@pytest.fixture
def upstream_url() -> Iterator[str]:
    with ThreadedServer(ExampleUpstream().app) as server:
        yield server.url


def _serve(config: Path, port: int, log: Path):  # type: ignore[no-untyped-def]
    args = [*cli(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return sidecar_process(args, port=port, log_path=log, env={"SAMTYKKE_GATEWAY_LOG_LEVEL": "WARNING"},
                           ready_path="/readyz")


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    """``samtykke-gateway audit ...`` in this process (the command line's own handler; no
    interpreter start per call), as :func:`subprocess.run` would report it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["audit", *args])
    return subprocess.CompletedProcess(["samtykke-gateway", "audit", *args], code, out.getvalue(), err.getvalue())


def _crash_and_check(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str, upstream_url: str,
                     audit_url: str) -> None:
    config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream_url,
                          audit_url=audit_url)
    load = Load(dev_issuer)
    before, after = Tally(), Tally()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with _serve(config, port, tmp_path / "log1") as proc:
        asyncio.run(load.run(base, before, seconds=15, kill=proc, kill_after_ok=150))
        assert proc.returncode == -signal.SIGKILL
    assert len(before.ok) >= 30, before  # normally 150 (the kill waits for them, at most 15 s)
    assert before.transport_errors >= 1, "the kill did not hit requests in flight"
    with _serve(config, port, tmp_path / "log2") as proc:
        asyncio.run(load.run(base, after, seconds=2.0))
        proc.send_signal(signal.SIGTERM)
        # uvicorn 0.54 re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too
        assert proc.wait(15) in (0, -signal.SIGTERM)
    assert after.ok and not after.other and after.transport_errors == 0, after
    assert set(after.denied) == {401, 403}, after
    assert not before.other, before  # nothing but 200/401/403 (and dropped connections) before the kill

    verify = _audit("verify", "--config", str(config))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    checked = int(verify.stdout.split("chain OK: ")[1].split()[0])
    recorded: dict[str, str] = {}
    for subject in (INCOME_PERSON, TAX_BASE_PERSON):
        export = _audit("export", "--config", str(config), "--subject", subject)
        assert export.returncode == 0, export.stderr
        document = json.loads(export.stdout)
        for entry in document["disclosures"]:
            recorded[entry["correlation_id"]] = "allow"
        for entry in document["denied_attempts"]:
            recorded.setdefault(entry["correlation_id"], entry["reason"])
    received = before.ok + after.ok
    assert len(set(received)) == len(received), "correlation ids must be unique"
    missing = [cid for cid in received if recorded.get(cid) != "allow"]
    assert not missing, f"{len(missing)} released responses have no disclosure record: {missing[:5]}"
    denied_sent = sum(before.denied.values()) + sum(after.denied.values())
    assert checked >= len(received) + denied_sent
    logging.getLogger(__name__).info(
        "before the kill: %d x 200, %s refused, %d dropped; after the restart: %d x 200, %s refused;"
        " %d records verified", len(before.ok), before.denied, before.transport_errors, len(after.ok),
        after.denied, checked)
    assert time.monotonic() - started < 40


def test_kill_9_under_load_sqlite(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str,
                                  upstream_url: str) -> None:
    db = tmp_path / "disclosures.db"
    _crash_and_check(tmp_path, dev_issuer, issuer_url, upstream_url, f"sqlite:///{db}")


@pytest.mark.postgres
def test_kill_9_under_load_postgres(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str, upstream_url: str,
                                    pg_schema: tuple[str, str]) -> None:
    url, schema = pg_schema
    _crash_and_check(tmp_path, dev_issuer, issuer_url, upstream_url, with_query(url, schema=schema))
