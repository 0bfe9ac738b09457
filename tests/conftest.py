"""Shared pytest fixtures. Async tests use anyio's pytest plugin on asyncio.

Hypothesis' conjecture utilities are imported up front: imported lazily at the terminal summary
(after uvicorn threads and FastAPI ran) they hit CPython 3.11.7's "AST constructor recursion
depth mismatch" SystemError in pytest's assertion rewriter (CPython gh-106905, fixed in 3.11.8).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis.internal.conjecture.utils  # noqa: F401
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.issuer import DevIssuer


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core. Most of the suite's wall time is spent waiting on
    loopback sockets, subprocesses and injected deadlines, not on the CPU (idle 2-core run,
    2026-12-08: 146 s of CPU in 155 s of wall time with 2 workers, 108 s wall with 4)."""
    return 2 * (os.cpu_count() or 1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def dev_issuer() -> DevIssuer:
    """One dev issuer (fresh RSA keys, generated at test time) for the whole session."""
    return DevIssuer()


@pytest.fixture(scope="session")
def issuer_url(dev_issuer: DevIssuer) -> Iterator[str]:
    """The dev issuer's JWKS served over real HTTP on 127.0.0.1."""
    with ThreadedServer(dev_issuer.asgi_app()) as server:
        yield server.url
