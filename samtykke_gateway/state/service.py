"""The consent-state hook the enforcement path calls (docs/protocol.md §4 step 9, §8).

:class:`ConsentStateService` implements :class:`~samtykke_gateway.observe.hooks.ConsentState` over a
:class:`~.backend.StateBackend`, the optional revocation file and the optional consent feed.

Per request, in this order (``before_forward``):

1. revocation: the file, then the backend (``revoked:{id}``) — every route, when
   ``[state] check_revocation`` is true (the default);
2. ``jti`` accounting (``[state] jti_replay``): ``log`` counts and logs reuse of a Maskinporten
   token, ``refuse`` makes every token single-use (401 ``token_replayed``);
3. one-time routes (``one_time = true``): the first request per consent id takes a claim;
   while it is held or after it was spent, others get 403 ``consent_spent``;
4. ``daily_limit``: per route and consent id per Europe/Oslo day; over the limit → 429.

``after_response`` marks the claim spent when a 2xx body was released and gives back the
claim, the usage count and a refuse-mode ``jti`` mark when nothing was released.

Fail closed (:class:`~samtykke_gateway.exceptions.StateUnavailableError`, 503): a route needs
the backend when revocation is checked (every route), when it is one-time or limited, or when
``jti_replay = "refuse"``. Only a route that needs none of these (``check_revocation = false``,
no one-time, no limit, ``jti_replay`` off or log) keeps working with the backend down; in
``log`` mode the ``jti`` accounting is then skipped for a few seconds (logged, counted).
A stale consent feed (the Altinn 2 consent list, legacy: no successful poll within
``max_staleness_seconds``) refuses with 503 ``revocation_feed_stale`` only what it protects: an
Altinn 2 consent on a route with one of the feed's services. Altinn 3 consents (migrated ones
too) never depend on it, and it never fails :meth:`ConsentStateService.ping` (readiness): a feed
outage is shared by every replica, so taking replicas out would take down the routes it does
not protect (docs/protocol.md §8). Revocations it recorded stay in force for every consent id.
A Redis that lost its data (the generation marker is gone or says reset,
:mod:`.redis_backend`) is treated like an unreachable backend, with its own reason: 503
``consent_state_reset`` on every route that needs the backend, until an operator runs
``samtykke-gateway state confirm-reset`` (``docs/protocol.md §8``).

Consent ids compare lower-case. A claim left by a replica that died mid-delivery counts as
spent (nothing tells whether the body left): the ``once:`` key expires with the consent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from samtykke_gateway.correlation import new_id
from samtykke_gateway.exceptions import (
    ConsentSpentError,
    InvalidTokenError,
    StateUnavailableError,
    UsageLimitError,
)
from samtykke_gateway.state.backend import BeginResult, Claim, StateBackend
from samtykke_gateway.state.revocation_file import RevocationFile

if TYPE_CHECKING:
    from samtykke_gateway.policy.decide import Grant

__all__ = ["ConsentStateService", "StateMetrics"]

log = logging.getLogger("samtykke_gateway.state")
_OSLO = ZoneInfo("Europe/Oslo")
_ONE_DAY = 86400.0
_MAX_CLAIM_TTL = 400 * _ONE_DAY
_JTI_BREAKER_SECONDS = 5.0
_JTI_KEY_CACHE = 4096


class StateMetrics(Protocol):
    """What the state reports to metrics (all optional no-ops)."""

    def state_error(self, operation: str) -> None: ...

    def jti_reused(self) -> None: ...


class _Feed(Protocol):
    @property
    def stale(self) -> bool: ...

    #: the Altinn 2 services ``"{serviceCode}_{editionCode}"`` whose consents the feed covers
    services: frozenset[str]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class ConsentStateService:
    """:class:`~samtykke_gateway.observe.hooks.ConsentState` implementation.

    :param backend: memory or Redis backend (closed by :meth:`close`).
    :param check_revocation: check revocations on every route.
    :param revocation_file: optional file of revoked ids.
    :param feed: optional consent-feed poller (started by :meth:`start`, closed by :meth:`close`).
    :param jti_replay: ``off`` / ``log`` / ``refuse``.
    :param leeway_seconds: added to a token's ``exp`` for the ``jti`` key's lifetime.
    :param metrics: optional :class:`StateMetrics`.
    :param clock: epoch seconds.
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        check_revocation: bool = True,
        revocation_file: RevocationFile | None = None,
        feed: _Feed | None = None,
        jti_replay: Literal["off", "log", "refuse"] = "log",
        leeway_seconds: float = 30.0,
        metrics: StateMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.check_revocation = check_revocation
        self.revocation_file = revocation_file
        self.feed = feed
        self.jti_replay = jti_replay
        self.leeway_seconds = leeway_seconds
        self.metrics = metrics
        self.clock = clock
        self._pending: dict[int, tuple[Grant, Claim, BeginResult]] = {}
        self._jti_skip_until = 0.0
        # A token is reused for its lifetime (Maskinporten: ~2 minutes), so its jti key is
        # asked for again and again; so is the day, until Oslo midnight.
        self._jti_keys: dict[str, str] = {}
        self._day: tuple[float, float, str] = (0.0, -1.0, "")  # [start, end) epoch, "YYYY-MM-DD"

    def bind_disclosure_log(self, store: Any) -> None:
        """Tell the backend which disclosure log witnesses a first start: a missing generation
        marker is taken for the first start only while that log never held a record (chain
        head ``seq`` 0; a store without ``head_seq`` cannot tell, so a missing marker is then a
        reset). The gateway that uses this service calls it (the newest one wins on reload)."""
        if not hasattr(self.backend, "disclosure_log_empty"):
            return

        async def empty() -> bool:
            head_seq = getattr(store, "head_seq", None)
            return head_seq is not None and int(await head_seq()) == 0

        self.backend.disclosure_log_empty = empty

    async def start(self) -> None:
        """Load the revocation file and start the feed poller. Idempotent."""
        if self.revocation_file is not None:
            self.revocation_file.load()
        if self.feed is not None:
            await self.feed.start()

    def _needs_backend(self, grant: Grant) -> bool:
        route = grant.match.route
        return (self.check_revocation or route.one_time or route.daily_limit is not None
                or (self.jti_replay != "off" and grant.maskinporten.jti is not None))

    def _jti_key(self, jti: str) -> str:
        key = self._jti_keys.get(jti)
        if key is None:
            if len(self._jti_keys) >= _JTI_KEY_CACHE:
                self._jti_keys.clear()
            key = self._jti_keys[jti] = hashlib.sha256(jti.encode()).hexdigest()[:32]
        return key

    def _oslo_day(self, now: float) -> str:
        start, end, day = self._day
        # the last microsecond before midnight goes the long way: fromtimestamp() rounds to the
        # microsecond, so 23:59:59.9999998 is already the next day there
        if start <= now < end - 1e-6:
            return day
        local = datetime.fromtimestamp(now, _OSLO)
        day = local.strftime("%Y-%m-%d")
        midnight = datetime.combine(local.date(), dt_time(0), tzinfo=_OSLO)
        start = midnight.timestamp()
        end = datetime.combine(local.date() + timedelta(days=1), dt_time(0), tzinfo=_OSLO).timestamp()
        if start <= now < end:  # (always; a clock that jumps just misses the memo)
            self._day = (start, end, day)
        return day

    def _claim(self, grant: Grant, *, jti_mode: Literal["off", "log", "refuse"],
               consent_id: str | None = None) -> Claim:
        now = self.clock()
        route = grant.match.route
        consent = grant.consent
        jti = grant.maskinporten.jti
        jti_key = self._jti_key(jti) if (jti and jti_mode != "off") else None
        usage_key = None
        if route.daily_limit is not None:
            usage_key = f"{route.name}:{self._oslo_day(now)}"
        return Claim(
            consent_id=consent.consent_id.strip().lower() if consent_id is None else consent_id,
            check_revocation=self.check_revocation,
            jti_key=jti_key,
            jti_mode=jti_mode,
            jti_ttl_seconds=max(1.0, grant.maskinporten.expires_at - now + self.leeway_seconds),
            one_time=route.one_time,
            one_time_ttl_seconds=min(_MAX_CLAIM_TTL, max(60.0, consent.valid_to - now + _ONE_DAY)),
            usage_key=usage_key,
            daily_limit=route.daily_limit or 0,
            token=new_id(),
        )

    async def before_forward(self, grant: Grant) -> None:
        """Check and take the consent state for an otherwise allowed request.

        :raises ConsentSpentError: 403 ``consent_revoked`` or ``consent_spent``.
        :raises UsageLimitError: 429 ``usage_limit_reached``.
        :raises InvalidTokenError: 401 ``token_replayed`` (``jti_replay = "refuse"``).
        :raises StateUnavailableError: 503 backend, revocation file or feed not usable.
        """
        cid = grant.consent.consent_id.strip().lower()
        if self.check_revocation:
            if self.feed is not None and self.feed.stale and self.feed_protects(grant):
                raise StateUnavailableError("the consent revocation feed is stale", reason="revocation_feed_stale")
            if self.revocation_file is not None and self.revocation_file.check(cid):
                raise ConsentSpentError("the consent has been revoked", reason="consent_revoked")
        if not self._needs_backend(grant):
            return
        jti_mode = self.jti_replay
        route = grant.match.route
        optional_only = not (self.check_revocation or route.one_time or route.daily_limit is not None
                             or jti_mode == "refuse")
        if optional_only and self.clock() < self._jti_skip_until:
            return
        claim = self._claim(grant, jti_mode=jti_mode, consent_id=cid)
        try:
            result = await self.backend.begin(claim)
        except StateUnavailableError:
            if optional_only:  # only jti logging was asked for: note the gap, keep serving
                self._jti_skip_until = self.clock() + _JTI_BREAKER_SECONDS
                log.warning("jti accounting skipped for %.0f s: state backend unreachable", _JTI_BREAKER_SECONDS)
                return
            raise
        if result.jti_reused:
            if self.metrics is not None:
                self.metrics.jti_reused()
            # DEBUG: a Maskinporten token is reused for its lifetime, so this fired on nearly every
            # request (~28 µs a line, issue 13); samtykke_jti_reuse_total counts them
            log.debug("maskinporten token reused (jti seen before; route=%s mode=%s)", route.name, jti_mode)
        if result.outcome == "revoked":
            raise ConsentSpentError("the consent has been revoked", reason="consent_revoked")
        if result.outcome == "spent":
            raise ConsentSpentError("this one-time consent has already been used", reason="consent_spent")
        if result.outcome == "limit":
            raise UsageLimitError("the daily usage limit for this consent is reached", reason="usage_limit_reached")
        if result.outcome == "replay":
            raise InvalidTokenError("this access token has already been used", reason="token_replayed")
        if claim.one_time or claim.usage_key is not None or (result.jti_marked and jti_mode == "refuse"):
            self._pending[id(grant)] = (grant, claim, result)

    async def after_response(self, grant: Grant, *, released: bool) -> None:
        """Spend the one-time claim (``released``) or give back what was taken.

        :raises StateUnavailableError: the backend could not record it (the claim then stays
            taken: the consent counts as spent until it expires — fail closed).
        """
        pending = self._pending.pop(id(grant), None)
        if pending is None:
            return
        _, claim, result = pending
        await self.backend.finish(claim, result, released=released)

    def feed_protects(self, grant: Grant) -> bool:
        """Whether the consent feed guards this request: an Altinn 2 consent on a route with one
        of the feed's services. A stale feed refuses exactly these (503)."""
        if self.feed is None or grant.consent.kind != "altinn2":
            return False
        return not self.feed.services.isdisjoint(grant.match.route.altinn2_services)

    def feed_status(self) -> str | None:
        """``None`` without a feed (or with revocations unchecked); else ``"ok"`` or
        ``"stale: Altinn 2 consents of <services> refused"`` for ``/readyz``'s detail."""
        if self.feed is None or not self.check_revocation:
            return None
        if not self.feed.stale:
            return "ok"
        return f"stale: Altinn 2 consents of {', '.join(sorted(self.feed.services))} refused"

    async def ping(self) -> None:
        """:raises StateUnavailableError: backend unreachable or revocation file unreadable.
        A stale consent feed is not a failure here (see the module docstring; it shows in
        :meth:`feed_status`)."""
        if self.revocation_file is not None:
            self.revocation_file.load()
            if self.revocation_file.error is not None:
                raise StateUnavailableError(self.revocation_file.error, reason="revocation_file_unreadable")
        await self.backend.ping()

    async def durability(self) -> dict[str, str] | None:
        """What the shared backend promises about keeping the state (Redis persistence):
        ``{"verdict": "ok" | "warning" | "unknown", "detail": text}``; ``None`` for a backend
        in this process (memory://). Never raises."""
        read = getattr(self.backend, "durability", None)
        return None if read is None else dict(await read())

    async def close(self) -> None:
        """Stop the feed poller and close the backend. Idempotent."""
        if self.feed is not None:
            await self.feed.close()
        await self.backend.close()
