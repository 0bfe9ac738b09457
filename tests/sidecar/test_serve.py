"""``samtykke-gateway serve`` as separate processes: the Dockerfile's exact entry command and
HEALTHCHECK, reload on SIGHUP (valid and invalid config), JSON logs, and two replicas sharing
Redis (a one-time consent spent on one is refused on the other; a revocation holds on both)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.observe.metrics import parse_text
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import cli, free_port, redis_prefix, sidecar_process, write_config
from tests.support import INCOME_PATH, INCOME_PERSON, TAX_BASE_PERSON, a2_headers, tax_base_path
from tests.state.test_service_enforcement import a3
from tests.state_support import CONFIG_SECRET

pytestmark = pytest.mark.slow
DOCKERFILE = Path(__file__).resolve().parent.parent.parent / "Dockerfile"
ONE_TIME_TAX = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')


@pytest.fixture
def upstream_url() -> Iterator[str]:
    with ThreadedServer(ExampleUpstream().app) as server:
        yield server.url


def _dockerfile_json(instruction: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(rf"^{instruction}\s+(.*?\[.*\])\s*$", text, re.M)
    assert match, f"{instruction} missing from the Dockerfile"
    value = match.group(1)
    return list(json.loads(value[value.index("["):]))


def test_dockerfile_is_small_nonroot_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER 10001$", text, re.M)
    assert "/etc/samtykke-gateway/gateway.toml" in text
    assert _dockerfile_json("ENTRYPOINT") == ["samtykke-gateway"]


def test_dockerfile_entry_command_serves_probes(tmp_path: Path, issuer_url: str, upstream_url: str) -> None:
    """Run ENTRYPOINT + CMD as written, changing only three values: the config path (no
    /etc here), the port (8080 may be taken) and the bind address (loopback in tests)."""
    argv = _dockerfile_json("ENTRYPOINT") + _dockerfile_json("CMD")
    assert argv[:2] == ["samtykke-gateway", "serve"]
    config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream_url)
    port = free_port()
    swap = {"/etc/samtykke-gateway/gateway.toml": str(config), "8080": str(port), "0.0.0.0": "127.0.0.1"}
    argv = [swap.get(a, a) for a in argv]
    argv[0] = str(Path(sys.executable).parent / "samtykke-gateway")
    with sidecar_process(argv, port=port, log_path=tmp_path / "log"):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        check = _dockerfile_json("HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \\s*CMD")
        check = [a.replace("8080", str(port)) for a in check]
        check[0] = sys.executable
        assert subprocess.run(check, timeout=10).returncode == 0
    check_dead = subprocess.run(check, timeout=10, capture_output=True)
    assert check_dead.returncode != 0  # the health check notices a dead server


def test_sighup_reloads_valid_config_and_refuses_invalid(tmp_path: Path, issuer_url: str, upstream_url: str) -> None:
    config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream_url)
    original = config.read_text()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [*cli(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with sidecar_process(args, port=port, log_path=tmp_path / "log") as proc:
        assert httpx.get(base + "/livez").status_code == 404
        config.write_text(original.replace("[gateway]\n", '[gateway]\nhealth_path = "/livez"\n'))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: httpx.get(base + "/livez").status_code == 200)
        config.write_text(original.replace("[gateway]\n", '[gateway]\nhealth_path = "livez-no-slash"\n'))
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _reloads(base).get("refused") == 1)
        assert httpx.get(base + "/livez").status_code == 200  # the running config stayed
        config.write_text("this is [not toml")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _reloads(base).get("refused") == 2)
        assert _reloads(base) == {"ok": 1, "refused": 2}
        assert httpx.get(base + "/livez").status_code == 200
        assert proc.poll() is None
    lines = [json.loads(ln) for ln in (tmp_path / "log").read_text().splitlines() if ln.startswith("{")]
    reloads = [ln for ln in lines if ln.get("event") == "reload"]
    assert [ln["result"] for ln in reloads] == ["ok", "refused", "refused"]
    assert "gateway.health_path" in reloads[1]["message"]
    # the start line says where it listens
    start = next(ln for ln in lines if ln.get("event") == "start")
    assert start["message"] == f"gateway started on {base}" and start["listen"] == base


def _reloads(base: str) -> dict[str, int]:
    parsed = parse_text(httpx.get(base + "/metrics").text)
    return {s["result"]: int(v) for s, v in parsed.get("samtykke_config_reloads_total", [])}


def _wait(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.redis
def test_two_replicas_share_redis(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str, upstream_url: str) -> None:
    async def clean_prefix() -> tuple[str, str]:
        async with redis_prefix() as (url, prefix):
            return url, prefix  # the prefix is unique; keys are cleaned below as well

    url, prefix = asyncio.run(clean_prefix())
    extra = f'[state]\nurl = "{url}"\nkey_prefix = "{prefix}"\n'
    config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream_url, extra=extra)
    config.write_text(config.read_text().replace(*ONE_TIME_TAX))
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for i, port in enumerate(ports):
            args = [*cli(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
            stack.enter_context(sidecar_process(args, port=port, log_path=tmp_path / f"log{i}"))
        a, b = (f"http://127.0.0.1:{p}" for p in ports)
        # spent on A, refused on B
        cid = str(uuid.uuid4())
        assert httpx.get(a + tax_base_path("2022"), headers=a3(dev_issuer, cid)).status_code == 200
        r = httpx.get(b + tax_base_path("2022"), headers=a3(dev_issuer, cid.upper()))
        assert r.status_code == 403 and r.json()["reason"] == "consent_spent"
        # concurrent first uses across both replicas: exactly one delivery
        racing = str(uuid.uuid4())

        async def race() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as client:
                rs = await asyncio.gather(*(client.get((a, b)[i % 2] + tax_base_path("2022"),
                                                       headers=a3(dev_issuer, racing)) for i in range(12)))
            return [x.status_code for x in rs]

        codes = asyncio.run(race())
        assert codes.count(200) == 1 and codes.count(403) == 11, codes
        # a revocation through the CLI holds on both
        revoked = str(uuid.uuid4())
        for base in (a, b):
            ok = httpx.get(base + INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer, consent_id=revoked))
            assert ok.status_code == 200
        assert subprocess.run([*cli(), "revoke", "--config", str(config), revoked], capture_output=True).returncode == 0
        for base in (a, b):
            r = httpx.get(base + INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer, consent_id=revoked))
            assert r.status_code == 403 and r.json()["reason"] == "consent_revoked"
        # both replicas are ready and report their decisions
        for base in (a, b):
            assert httpx.get(base + "/readyz").json()["checks"]["consent_state"] == "ok"
    asyncio.run(_cleanup(url, prefix))
    # JSON logs: every line parses, decisions carry a correlation id, nothing personal
    for i in range(2):
        text = (tmp_path / f"log{i}").read_text()
        lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        decisions = [ln for ln in lines if ln.get("event") == "decision"]
        assert decisions and all(len(d["correlation_id"]) >= 8 for d in decisions)
        for secret in (INCOME_PERSON, TAX_BASE_PERSON, "eyJ", cid, revoked):
            assert secret not in text


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def test_serve_refuses_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nprofile = 'nope'\n")
    done = subprocess.run([*cli(), "serve", "--config", str(bad), "--port", "1"], capture_output=True, timeout=30)
    assert done.returncode == 2 and b"gateway.profile" in done.stderr


def test_serve_with_tracing_env_and_no_otel_says_how(tmp_path: Path, issuer_url: str) -> None:
    config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    code = ("import sys; sys.modules['opentelemetry'] = None; from samtykke_gateway.cli.main import main; "
            f"sys.exit(main(['serve', '--config', {str(config)!r}, '--port', '1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                          env={**os.environ, "SAMTYKKE_GATEWAY_TRACING": "1"})
    assert done.returncode == 2 and b"samtykke-gateway[otel]" in done.stderr, shlex.join(done.args)


@pytest.mark.slow
def test_sighup_with_non_utf8_config_keeps_running_and_logs_no_content(tmp_path: Path, issuer_url: str) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                        extra=f"# db password {CONFIG_SECRET}\n")
    port, log_path = free_port(), tmp_path / "serve.log"
    with sidecar_process([*cli(), "serve", "--config", str(path), "--port", str(port)], port=port,
                         log_path=log_path) as proc:
        path.write_bytes(b"# \xff\xfe\n" + path.read_bytes())
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reload refused" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert proc.poll() is None
    log = log_path.read_text(errors="replace")
    assert "config reload refused" in log and "not UTF-8 at byte 2" in log
    assert CONFIG_SECRET not in log and "never retrieved" not in log and "Traceback" not in log


ONE_TIME = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')


@pytest.mark.slow
def test_serve_logs_the_in_memory_warning_once_at_start(tmp_path: Path, issuer_url: str) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    path.write_text(path.read_text().replace(*ONE_TIME))
    port, log_path = free_port(), tmp_path / "serve.log"
    with sidecar_process([*cli(), "serve", "--config", str(path), "--port", str(port)], port=port, log_path=log_path):
        pass
    lines = [line for line in log_path.read_text().splitlines() if "one_time/daily_limit" in line]
    assert len(lines) == 1 and '"level":"warning"' in lines[0] and "single worker/replica" in lines[0]
