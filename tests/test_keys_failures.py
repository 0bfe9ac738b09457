"""KeySet counts failed fetches (exported as samtykke_jwks_fetch_failures_total)."""

from __future__ import annotations

import httpx
import pytest

from samtykke_gateway.exceptions import KeysUnavailableError
from samtykke_gateway.keys import KeySet


@pytest.mark.anyio
async def test_failed_fetches_are_counted() -> None:
    async with httpx.AsyncClient() as http:
        keys = KeySet(name="altinn", http=http, jwks_url="http://127.0.0.1:9/jwk", fetch_timeout_seconds=1,
                      refetch_cooldown_seconds=0)
        with pytest.raises(KeysUnavailableError):
            await keys.get(kid="k", x5t=None)
        assert keys.fetch_count >= 1
        assert keys.failure_count == keys.fetch_count


@pytest.mark.anyio
async def test_failed_fetch_is_logged_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fresh user: /readyz said "not loaded" and nothing said why."""
    import logging

    async with httpx.AsyncClient() as http:
        keys = KeySet(name="maskinporten", http=http, jwks_url="http://127.0.0.1:9/jwk", fetch_timeout_seconds=1)
        with caplog.at_level(logging.WARNING, logger="samtykke_gateway.keys"):
            assert not await keys.ensure_loaded()
    messages = [r.getMessage() for r in caplog.records if r.name == "samtykke_gateway.keys"]
    assert messages == ["JWKS fetch for maskinporten from http://127.0.0.1:9/jwk failed: HTTP failure (ConnectError)"]
