"""Consent state: revocation, one-time consents, daily limits, ``jti`` accounting (docs/protocol.md §8).

::

    service.py          ConsentStateService: the ConsentState hook (order, errors, fail-closed rules)
    backend.py          StateBackend protocol, Claim / BeginResult
    memory.py           in-process backend (one replica)
    redis_backend.py    Redis backend (several replicas; atomic Lua scripts)
    revocation_file.py  revoked ids from a file (re-read on change)
    feed.py             Altinn 2 consent-list poller (HAL, continuation token), Altinn 3 slot

:func:`open_state` builds the whole thing from ``[state]`` in the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samtykke_gateway.state.backend import BeginResult, Claim, StateBackend
from samtykke_gateway.state.memory import MemoryBackend
from samtykke_gateway.state.revocation_file import RevocationFile, append_revocations
from samtykke_gateway.state.service import ConsentStateService, StateMetrics

if TYPE_CHECKING:
    from samtykke_gateway.config import GatewayConfig

__all__ = [
    "BeginResult",
    "Claim",
    "ConsentStateService",
    "MemoryBackend",
    "RevocationFile",
    "StateBackend",
    "StateMetrics",
    "append_revocations",
    "open_backend",
    "open_state",
]


def open_backend(config: GatewayConfig, *, metrics: StateMetrics | None = None) -> StateBackend:
    """The backend named by ``[state] url`` (``memory://`` or ``redis(s)://``)."""
    if config.state_url.startswith(("redis://", "rediss://")):
        from samtykke_gateway.state.redis_backend import RedisBackend

        return RedisBackend(config.state_url, key_prefix=config.state_key_prefix,
                            on_error=metrics.state_error if metrics is not None else None)
    return MemoryBackend()


def open_state(config: GatewayConfig, *, metrics: StateMetrics | None = None) -> ConsentStateService:
    """A :class:`ConsentStateService` for ``config`` (not started: call ``await start()``)."""
    backend = open_backend(config, metrics=metrics)
    revocations = RevocationFile(config.revocation_file) if config.revocation_file else None
    feed = None
    if config.state_feed is not None:
        from samtykke_gateway.state.feed import ConsentFeedPoller

        feed = ConsentFeedPoller.from_config(config.state_feed, backend, metrics=metrics)
    return ConsentStateService(
        backend,
        check_revocation=config.check_revocation,
        revocation_file=revocations,
        feed=feed,
        jti_replay=config.jti_replay,
        leeway_seconds=config.leeway_seconds,
        metrics=metrics,
    )
