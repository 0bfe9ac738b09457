"""Reload in-process: in-flight requests finish on the old gateway, which is closed afterwards;
the consent state survives a reload that does not change ``[state]``; a refused reload keeps
the running generation. Key sets of unchanged issuers carry over (a reload during a JWKS outage
keeps serving, in-process and in a real ``serve`` process sent SIGHUP); a reload whose changed
issuer's keys cannot load is refused and says so."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.sidecar.serve import ReloadingApp
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import cli, free_port, sidecar_process, write_config
from tests.support import tax_base_path
from tests.state.test_service_enforcement import a3
from samtykke_gateway.sidecar.serve import _reload_done
from tests.state_support import CONFIG_SECRET

pytestmark = pytest.mark.anyio
ONE_TIME_TAX = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')


class SlowUpstream:
    def __init__(self) -> None:
        self.inner = ExampleUpstream().app
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.delay:
            await asyncio.sleep(self.delay)
        await self.inner(scope, receive, send)


async def test_reload_drains_in_flight_requests_and_keeps_state(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str) -> None:
    slow = SlowUpstream()
    with ThreadedServer(slow) as upstream:
        config = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url=upstream.url)
        config.write_text(config.read_text().replace(*ONE_TIME_TAX))
        app = ReloadingApp(config)
        await app.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test",
                                         timeout=10) as client:
                spent = str(uuid.uuid4())
                assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))).status_code == 200
                old = app.current
                assert old is not None
                slow.delay = 0.5
                in_flight = asyncio.create_task(client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4()))))
                await asyncio.sleep(0.2)
                assert old.inflight == 1
                config.write_text(config.read_text().replace('error_style = "problem"', 'error_style = "skatteetaten"'))
                assert await app.reload()
                assert app.current is not None and app.current is not old
                assert app.current.state is old.state  # [state] unchanged: kept
                assert not old.gateway.http.is_closed  # still serving the in-flight request
                response = await in_flight
                assert response.status_code == 200
                for _ in range(50):
                    if old.gateway.http.is_closed:
                        break
                    await asyncio.sleep(0.02)
                assert old.gateway.http.is_closed  # closed once drained
                slow.delay = 0
                # new config answers (skatteetaten error style) and the spent claim survived
                again = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, spent))
                assert again.status_code == 403 and "kode" in again.json()
                # a refused reload keeps the running generation
                current = app.current
                config.write_text("[[routes]]\nname = 1\n")
                assert not await app.reload()
                assert app.current is current
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await app.close()


def _kept_keys_message(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "samtykke_gateway.serve" and "reload" in r.getMessage()]


async def test_reload_during_jwks_outage_keeps_the_cached_keys(
    tmp_path: Path, dev_issuer: DevIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16 item 1: the new generation started with no keys and every request was 503."""
    jwks = ThreadedServer(dev_issuer.asgi_app(), timeout_graceful_shutdown=1).start()
    try:
        with ThreadedServer(ExampleUpstream().app) as upstream:
            config = write_config(tmp_path / "gw.toml", issuer_url=jwks.url, upstream_url=upstream.url)
            app = ReloadingApp(config)
            await app.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test",
                                             timeout=10) as client:
                    assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))).status_code == 200
                    old = app.current
                    assert old is not None
                    jwks.stop()  # the JWKS endpoint goes down
                    config.write_text(config.read_text().replace('error_style = "problem"', 'error_style = "skatteetaten"'))
                    with caplog.at_level(logging.INFO, logger="samtykke_gateway.serve"):
                        assert await app.reload()
                    new = app.current
                    assert new is not None and new is not old
                    assert _kept_keys_message(caplog.records) == ["config reloaded (cached keys kept for: altinn, maskinporten)"]
                    statuses = [(await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))).status_code
                                for _ in range(5)]
                    assert statuses == [200] * 5  # new generation, fresh tokens, no JWKS: verified with carried keys
                    assert (await client.get("/readyz")).status_code == 200
                    mp = new.gateway.issuers["maskinporten"].keys
                    assert mp is not old.gateway.issuers["maskinporten"].keys
                    assert mp.fetch_count == 1  # the first generation's load; nothing fetched since
            finally:
                await app.close()
    finally:
        jwks.stop()


async def test_reload_whose_changed_issuer_cannot_load_keys_keeps_the_old_generation(
    tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ThreadedServer(ExampleUpstream().app) as upstream, \
            ThreadedServer(dev_issuer.asgi_app()) as second_jwks:
        config = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url=upstream.url)
        original = config.read_text()
        app = ReloadingApp(config)
        await app.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test",
                                         timeout=10) as client:
                current = app.current
                dead = free_port()
                moved = f"http://ops:hunter2@127.0.0.1:{dead}/maskinporten/jwk?key=s3cret"
                config.write_text(original.replace(f"{issuer_url}/maskinporten/jwk", moved)
                                  .replace('error_style = "problem"', 'error_style = "skatteetaten"'))
                with caplog.at_level(logging.INFO, logger="samtykke_gateway.serve"):
                    assert not await app.reload()
                assert app.current is current
                (message,) = _kept_keys_message(caplog.records)
                assert message.startswith("config reload refused, the running config stays: no keys for issuer maskinporten")
                assert f"from http://127.0.0.1:{dead}/maskinporten/jwk: HTTP failure (ConnectError)" in message
                assert "hunter2" not in message and "s3cret" not in message and "ops" not in message
                response = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
                assert response.status_code == 200  # the old generation serves
                bad = await client.get(tax_base_path("2022"))
                assert "kode" not in bad.json()  # its error style too
                # the same change to a reachable endpoint is taken, altinn's keys carried over
                caplog.clear()
                config.write_text(original.replace(f"{issuer_url}/maskinporten/jwk", f"{second_jwks.url}/maskinporten/jwk"))
                with caplog.at_level(logging.INFO, logger="samtykke_gateway.serve"):
                    assert await app.reload()
                assert _kept_keys_message(caplog.records) == ["config reloaded (cached keys kept for: altinn)"]
                assert app.current is not None and app.current.gateway.new_key_sources == {"maskinporten"}
                response = await client.get(tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())))
                assert response.status_code == 200
        finally:
            await app.close()


@pytest.mark.slow
def test_sighup_during_jwks_outage_keeps_a_serve_process_answering(tmp_path: Path, dev_issuer: DevIssuer) -> None:
    """Issue 16 item 1 against a real process: JWKS down, SIGHUP, valid requests still 200."""
    jwks = ThreadedServer(dev_issuer.asgi_app(), timeout_graceful_shutdown=1).start()
    try:
        with ThreadedServer(ExampleUpstream().app) as upstream:
            config = write_config(tmp_path / "gw.toml", issuer_url=jwks.url, upstream_url=upstream.url)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            args = [*cli(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
            with sidecar_process(args, port=port, log_path=tmp_path / "log", ready_path="/readyz") as proc:
                def status() -> int:
                    return httpx.get(base + tax_base_path("2022"), headers=a3(dev_issuer, str(uuid.uuid4())),
                                     timeout=10).status_code

                assert status() == 200
                jwks.stop()
                config.write_text(config.read_text().replace("[gateway]\n", '[gateway]\nhealth_path = "/livez"\n'))
                proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 10
                while httpx.get(base + "/livez").status_code != 200:
                    assert time.monotonic() < deadline, "the reload did not happen"
                    time.sleep(0.05)
                assert [status() for _ in range(10)] == [200] * 10
                assert httpx.get(base + "/readyz").status_code == 200
    finally:
        jwks.stop()
    lines = [json.loads(ln) for ln in (tmp_path / "log").read_text().splitlines() if ln.startswith("{")]
    reloads = [ln for ln in lines if ln.get("event") == "reload"]
    assert [(r["result"], r["message"]) for r in reloads] == [("ok", "config reloaded (cached keys kept for: altinn, maskinporten)")]


@pytest.mark.anyio
async def test_reload_of_non_utf8_config_is_refused_cleanly(tmp_path: Path, issuer_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                        extra=f"# db password {CONFIG_SECRET}\n")
    app = ReloadingApp(path)
    await app.start()
    try:
        current = app.current
        path.write_bytes(b"# \xff\xfe\n" + path.read_bytes())
        with caplog.at_level(logging.INFO):
            assert not await app.reload()
        assert app.current is current
        text = "\n".join(r.getMessage() for r in caplog.records) + "".join(str(r.exc_info) for r in caplog.records)
        assert "config reload refused" in text and "not UTF-8 at byte 2" in text
        assert CONFIG_SECRET not in text
    finally:
        await app.close()


@pytest.mark.anyio
async def test_reload_failure_of_any_kind_logs_no_exception_text(tmp_path: Path, issuer_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    app = ReloadingApp(path)
    await app.start()
    try:
        def boom(_path: object) -> None:
            raise UnicodeDecodeError("utf-8", CONFIG_SECRET.encode() + b"\xff", len(CONFIG_SECRET), len(CONFIG_SECRET) + 1, "invalid")

        monkeypatch.setattr("samtykke_gateway.sidecar.serve.load_config", boom)
        with caplog.at_level(logging.INFO):
            assert not await app.reload()
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "UnicodeDecodeError" in text and CONFIG_SECRET not in text
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        await app.close()


@pytest.mark.anyio
async def test_a_failed_sighup_task_is_retrieved_and_logged_by_class_only(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise UnicodeDecodeError("utf-8", CONFIG_SECRET.encode() + b"\xff", len(CONFIG_SECRET), len(CONFIG_SECRET) + 1, "invalid")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait([task])
    with caplog.at_level(logging.INFO):
        _reload_done(task)
    assert task._log_traceback is False  # type: ignore[attr-defined]  # retrieved: asyncio stays quiet
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "UnicodeDecodeError" in text and CONFIG_SECRET not in text


async def test_a_request_before_start_is_a_503_with_a_reason_not_an_empty_answer(tmp_path: Path,
                                                                                  issuer_url: str) -> None:
    app = ReloadingApp(write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as client:
        response = await client.get(tax_base_path("2022"))
    assert response.status_code == 503 and response.json()["reason"] == "unavailable"
    assert response.headers["cache-control"] == "no-store" and response.headers["x-correlation-id"]
