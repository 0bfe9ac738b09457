"""Where the configuration meets the tokens layer: one :class:`IssuerPolicy` with its
:class:`KeySet` per ``[issuers.<name>]`` table (the tokens layer never reads the config)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from samtykke_gateway.config import GatewayConfig, IssuerConfig
from samtykke_gateway.tokens.keys import KeySet
from samtykke_gateway.tokens.verify import IssuerPolicy

__all__ = ["build_issuer_policies", "key_set"]


def build_issuer_policies(
    config: GatewayConfig, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic
) -> dict[str, IssuerPolicy]:
    """One :class:`IssuerPolicy` (with its own :class:`KeySet`) per configured issuer."""
    return {name: IssuerPolicy(
        name=cfg.name,
        issuer=cfg.issuer,
        algorithms=cfg.algorithms,
        keys=key_set(cfg, http, clock=clock),
        leeway_seconds=config.leeway_seconds,
        audiences=cfg.audiences,
    ) for name, cfg in config.issuers.items()}


def key_set(cfg: IssuerConfig, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic) -> KeySet:
    """The :class:`KeySet` an ``[issuers.<name>]`` table describes (the tokens layer never reads
    the config: this is where the two meet)."""
    return KeySet(
        name=cfg.name,
        http=http,
        jwks_url=cfg.jwks_url,
        metadata_url=cfg.metadata_url,
        min_ttl_seconds=cfg.min_ttl_seconds,
        max_ttl_seconds=cfg.max_ttl_seconds,
        default_ttl_seconds=cfg.default_ttl_seconds,
        refetch_cooldown_seconds=cfg.refetch_cooldown_seconds,
        fetch_timeout_seconds=cfg.fetch_timeout_seconds,
        max_stale_seconds=cfg.max_stale_seconds,
        clock=clock,
    )
