"""Helpers for the consent-state and operations tests: real Redis (``SAMTYKKE_TEST_REDIS_URL``),
unique key prefixes, configs with one-time / limited routes, sidecar subprocesses."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.config import GatewayConfig

from tests.support import make_config

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


def redis_url() -> str:
    """The test Redis URL; skips (or fails under ``SAMTYKKE_REQUIRE_SERVICES=1``) when unset."""
    url = os.environ.get("SAMTYKKE_TEST_REDIS_URL")
    if not url:
        if os.environ.get("SAMTYKKE_REQUIRE_SERVICES") == "1":
            pytest.fail("SAMTYKKE_TEST_REDIS_URL is not set but SAMTYKKE_REQUIRE_SERVICES=1")
        pytest.skip("SAMTYKKE_TEST_REDIS_URL is not set (Redis tests need a server)")
    return url


def unique_prefix() -> str:
    return f"samtykke-test:{uuid.uuid4().hex[:12]}:"


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """(url, prefix); deletes every key under the prefix afterwards."""
    import redis.asyncio as redis_asyncio

    url, prefix = redis_url(), unique_prefix()
    try:
        yield url, prefix
    finally:
        client = redis_asyncio.Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def empty_disclosure_log() -> bool:
    """The first-start witness of a new deployment (its disclosure log never held a record)."""
    return True


def redis_backend(url: str, prefix: str, **kw: Any) -> Any:
    """A :class:`RedisBackend` of a new deployment: a missing generation marker is a first start."""
    from samtykke_gateway.state.redis_backend import RedisBackend

    return RedisBackend(url, key_prefix=prefix, disclosure_log_empty=empty_disclosure_log, **kw)


def with_routes(config: GatewayConfig, **changes_by_route: dict[str, Any]) -> GatewayConfig:
    """``with_routes(cfg, spesifisertsummertskattegrunnlag={"one_time": True})``."""
    routes = tuple(
        dataclasses.replace(r, **changes_by_route[r.name]) if r.name in changes_by_route else r
        for r in config.routes
    )
    return dataclasses.replace(config, routes=routes)


def state_config(issuer_url: str, upstream_url: str, *, state: dict[str, Any] | None = None,
                 **route_changes: dict[str, Any]) -> GatewayConfig:
    overrides: dict[str, Any] = {"state": state} if state else {}
    return with_routes(make_config(issuer_url, upstream_url, **overrides), **route_changes)


CONFIG_SECRET = "hunter2-db-password"  # a secret in a config file: never in a message, a log line or a traceback


def latin1_config(tmp_path: Path, issuer_url: str = "http://127.0.0.1:9",
                  upstream_url: str = "http://127.0.0.1:9") -> Path:
    """A valid config with a Latin-1 comment ("år") and :data:`CONFIG_SECRET` further down."""
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url=upstream_url,
                        extra=f"# db password {CONFIG_SECRET}\n")
    path.write_bytes("# inntekts\u00e5r\n".encode("latin-1") + path.read_bytes())
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, issuer_url: str, upstream_url: str, audit_url: str = "memory://",
                 extra: str = "") -> Path:
    """The packaged demo config as a file, placeholders filled, ``extra`` TOML appended."""
    from importlib import resources

    text = resources.files("samtykke_gateway.dev.data").joinpath("demo.toml").read_text(encoding="utf-8")
    text = (text.replace("${ISSUER_URL}", issuer_url).replace("${UPSTREAM_URL}", upstream_url)
            .replace("${AUDIT_URL}", audit_url))
    data_dir = resources.files("samtykke_gateway.dev.data")
    for name in ("inntekt-sbl-loennsinntekt-beskrivelse.txt",):
        (path.parent / name).write_bytes(data_dir.joinpath(name).read_bytes())
    path.write_text(text + "\n" + extra, encoding="utf-8")
    return path


@contextlib.contextmanager
def sidecar_process(args: list[str], *, port: int, log_path: Path, env: dict[str, str] | None = None,
                    ready_path: str = "/healthz", timeout_seconds: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` (a ``samtykke-gateway serve`` command line) until ``ready_path`` answers;
    stdout and stderr go to ``log_path``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_file = log_path.open("wb")
    proc = subprocess.Popen(args, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar did not become ready")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()


def cli() -> list[str]:
    """The console script, run with this interpreter."""
    return [sys.executable, "-m", "samtykke_gateway.cli.main"]


class OwnRedis:
    """A redis-server of this test's own on 127.0.0.1 (never the shared one): it can be killed
    and restarted. ``args``: persistence options, e.g. ``["--save", "", "--appendonly", "no"]``.
    Skips when no ``redis-server`` binary is installed (fails under ``SAMTYKKE_REQUIRE_SERVICES=1``)."""

    def __init__(self, directory: Path, args: list[str]) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("SAMTYKKE_REQUIRE_SERVICES") == "1":
                pytest.fail("redis-server is not installed but SAMTYKKE_REQUIRE_SERVICES=1")
            pytest.skip("redis-server is not installed (restart tests run their own Redis)")
        self.binary, self.directory, self.args = binary, directory, args
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--protected-mode", "yes", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is saved on the way out) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@contextlib.contextmanager
def own_redis(directory: Path, *, persistent: bool) -> Iterator[OwnRedis]:
    """Without persistence (``--save "" --appendonly no``, like the CI Redis) or with AOF
    ``appendfsync always``."""
    args = (["--save", "", "--appendonly", "yes", "--appendfsync", "always"] if persistent
            else ["--save", "", "--appendonly", "no"])
    server = OwnRedis(directory, args)
    server.start()
    try:
        yield server
    finally:
        server.kill()
