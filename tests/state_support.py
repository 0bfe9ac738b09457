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

from .support import make_config

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, issuer_url: str, upstream_url: str, audit_url: str = "memory://",
                 extra: str = "") -> Path:
    """The packaged demo config as a file, placeholders filled, ``extra`` TOML appended."""
    from importlib import resources

    text = resources.files("samtykke_gateway.data").joinpath("demo.toml").read_text(encoding="utf-8")
    text = (text.replace("${ISSUER_URL}", issuer_url).replace("${UPSTREAM_URL}", upstream_url)
            .replace("${AUDIT_URL}", audit_url))
    data_dir = resources.files("samtykke_gateway.data")
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
    return [sys.executable, "-m", "samtykke_gateway.cli"]
