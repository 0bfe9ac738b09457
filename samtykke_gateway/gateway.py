"""The gateway runtime: configuration plus the I/O objects one decision needs.

:class:`Gateway` owns (creates and closes) the JWKS HTTP client, the key sets, the token
verifier, the disclosure store and the consent-state backend, unless they are injected —
whoever creates a resource closes it. Both deployment forms (ASGI middleware and sidecar)
run every request through one :class:`Gateway`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from .audit import DisclosureStore, open_store
from .audit.guard import AuditGuard
from .config import GatewayConfig
from .gate import Gate, build_issuer_policies
from .hooks import ConsentState, Observer
from .metrics import GatewayMetrics
from .policy import Router
from .state import ConsentStateService, open_state
from .tokens.verify import IssuerPolicy, TokenVerifier

__all__ = ["Gateway"]


class Gateway:
    """Runtime state shared by all requests.

    :param config: validated :class:`GatewayConfig`.
    :param http: client for JWKS / metadata fetches (created, and then closed, if omitted).
    :param store: disclosure store (opened from ``config.audit_url`` if omitted).
    :param state: consent state (revocation, one-time, limits); built from ``[state]`` if omitted.
    :param observer: metrics sink; a new :class:`GatewayMetrics` (own registry) if omitted.
    :param clock: epoch seconds, injectable for tests.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        http: httpx.AsyncClient | None = None,
        store: DisclosureStore | None = None,
        verifier: TokenVerifier | None = None,
        state: ConsentState | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(5.0), follow_redirects=False, trust_env=False
        )
        self._own_store = store is None
        self.store: DisclosureStore = store or open_store(config.audit_url)
        self.audit_guard = AuditGuard(self.store)
        self.verifier = verifier or TokenVerifier(cache_size=config.token_cache_entries)
        self.observer: Observer = observer or GatewayMetrics()
        self._own_state = state is None
        self.state: ConsentState = state or open_state(
            config, metrics=self.observer if isinstance(self.observer, GatewayMetrics) else None
        )
        if isinstance(self.state, ConsentStateService):  # first start vs reset: docs/protocol.md §8
            self.state.bind_disclosure_log(self.store)
        self.issuers: dict[str, IssuerPolicy] = build_issuer_policies(config, self.http)
        if isinstance(self.observer, GatewayMetrics):
            self.observer.bind_issuers(self.issuers)
        self.router = Router(config.routes)
        self.gate = Gate(config, issuers=self.issuers, verifier=self.verifier, clock=clock)
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the disclosure store and warm the key sets (best effort: a key set that cannot
        load now is retried on first use; requests then fail closed with 503). Idempotent.

        :raises AuditUnavailableError: the store cannot be opened (the gateway must not serve).
        """
        async with self._start_lock:
            if self._started:
                return
            if self._own_store:
                await self.store.open()
            if self._own_state and isinstance(self.state, ConsentStateService):
                await self.state.start()
            await asyncio.gather(
                *(p.keys.refresh() for p in self.issuers.values()), return_exceptions=True
            )
            self._started = True

    async def ensure_started(self) -> None:
        if not self._started:
            await self.start()

    async def close(self) -> None:
        """Close what this gateway created. Idempotent."""
        if self._own_store:
            await self.store.close()
        if self._own_state:
            await self.state.close()
        if self._own_http:
            await self.http.aclose()
        self._started = False
