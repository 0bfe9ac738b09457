"""The gateway runtime: configuration plus the I/O objects one decision needs.

:class:`Gateway` owns (creates and closes) the JWKS HTTP client, the key sets, the token
verifier, the disclosure store and the consent-state backend, unless they are injected —
whoever creates a resource closes it. Both deployment forms (ASGI middleware and sidecar)
run every request through one :class:`Gateway`.

A gateway built for a config reload (``carry_keys_from``) takes over the cached keys of every
issuer whose JWKS / metadata URL did not change, so a reload during a JWKS outage keeps
verifying tokens (``docs/protocol.md §4`` step 3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from samtykke_gateway.audit import DisclosureStore, open_store
from samtykke_gateway.audit.guard import AuditGuard
from samtykke_gateway.config import GatewayConfig
from samtykke_gateway.exceptions import KeysUnavailableError
from samtykke_gateway.policy.decide import Gate, build_issuer_policies
from samtykke_gateway.observe.hooks import ConsentState, Observer
from samtykke_gateway.observe.metrics import GatewayMetrics, metrics_of
from samtykke_gateway.policy.routing import Router
from samtykke_gateway.state import ConsentStateService, open_state
from samtykke_gateway.tokens.verify import IssuerPolicy, TokenVerifier

__all__ = ["Gateway"]


class Gateway:
    """Runtime state shared by all requests.

    :param config: validated :class:`GatewayConfig`.
    :param http: client for JWKS / metadata fetches (created, and then closed, if omitted).
    :param store: disclosure store (opened from ``config.audit_url`` if omitted).
    :param state: consent state (revocation, one-time, limits); built from ``[state]`` if omitted.
    :param observer: metrics sink; a new :class:`GatewayMetrics` (own registry) if omitted.
    :param clock: epoch seconds, injectable for tests.
    :param carry_keys_from: the gateway this one replaces (a config reload): each issuer whose
        JWKS / metadata URL is unchanged starts with that gateway's cached keys; the names of
        the others are in :attr:`new_key_sources`.
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
        carry_keys_from: Gateway | None = None,
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
        metrics = metrics_of(self.observer)  # also behind a DecisionLog
        self.state: ConsentState = state or open_state(config, metrics=metrics)
        if isinstance(self.state, ConsentStateService):  # first start vs reset: docs/protocol.md §8
            self.state.bind_disclosure_log(self.store)
        #: issuers whose key set starts empty although ``carry_keys_from`` was given
        self.new_key_sources: frozenset[str] = frozenset()
        self.issuers: dict[str, IssuerPolicy] = self._issuer_policies(config, carry_keys_from)
        if isinstance(self.observer, GatewayMetrics):  # a DecisionLog's owner binds its own (serve: on success)
            self.observer.bind_issuers(self.issuers)
        self.router = Router(config.routes)
        self.gate = Gate(config, issuers=self.issuers, verifier=self.verifier, clock=clock, router=self.router,
                         memo_entries=config.decision_memo_entries)
        self._started = False
        self._start_lock = asyncio.Lock()

    def _issuer_policies(self, config: GatewayConfig, previous: Gateway | None) -> dict[str, IssuerPolicy]:
        policies = build_issuer_policies(config, self.http)
        if previous is not None:
            for name, policy in policies.items():
                old = previous.issuers.get(name)
                if old is None or not policy.keys.carry_over(old.keys):
                    self.new_key_sources |= {name}
        return policies

    async def start(self, *, require_new_keys: bool = False) -> None:
        """Open the disclosure store and load the key sets of the issuers in use, all at once. Idempotent.

        Best effort by default: a key set that cannot load now is retried on first use (after
        the refetch cooldown); requests then fail closed with 503. Carried-over keys are not
        fetched again here (a due refresh runs in the background).

        :param require_new_keys: fail when a key set in :attr:`new_key_sources` (an issuer
            added or whose URL changed in a reload) has no keys after its first fetch.
        :raises AuditUnavailableError: the store cannot be opened (the gateway must not serve).
        :raises KeysUnavailableError: ``require_new_keys`` and a new key set did not load; the
            message names the issuer, its URL (no userinfo or query) and the cause.
        """
        async with self._start_lock:
            if self._started:
                return
            if self._own_store:
                await self.store.open()
            if self._own_state and isinstance(self.state, ConsentStateService):
                await self.state.start()
            # only issuers some route uses: a legacy [issuers.altinn] no route needs is not fetched
            used = [p for name, p in self.issuers.items() if name in self.config.issuers_in_use]
            ready = await asyncio.gather(*(p.keys.ensure_loaded() for p in used))
            if require_new_keys:
                missing = [p.keys for p, ok in zip(used, ready, strict=True)
                           if not ok and p.name in self.new_key_sources]
                if missing:
                    raise KeysUnavailableError("; ".join(
                        f"no keys for issuer {k.name} from {k.source}: {k.last_error or 'not loaded'}"
                        for k in missing))
            self._started = True

    async def ensure_started(self) -> None:
        if not self._started:
            await self.start()

    async def close(self) -> None:
        """Close what this gateway created (its key sets' fetches in flight too). Idempotent."""
        for policy in self.issuers.values():
            await policy.keys.aclose()
        if self._own_store:
            await self.store.close()
        if self._own_state:
            await self.state.close()
        if self._own_http:
            await self.http.aclose()
        self._started = False
