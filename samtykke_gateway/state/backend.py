"""The contract every consent-state backend implements (memory, Redis).

One request asks the backend once, atomically (:meth:`StateBackend.begin`): is the consent
revoked, has this ``jti`` been seen, can the one-time claim be taken, is there room under the
daily limit. Once the outcome is known the request reports back once
(:meth:`StateBackend.finish`): a claim becomes *spent* when something was released and is given
back otherwise (the usage count and a refuse-mode ``jti`` mark likewise).

Every backend failure is a :class:`~samtykke_gateway.exceptions.StateUnavailableError`; no
foreign exception leaves a backend. Consent ids are stored lower-cased; ``jti`` values are
stored as a SHA-256 prefix (they are token identifiers, not secrets, but need not be kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["BeginResult", "Claim", "Outcome", "StateBackend"]

Outcome = Literal["ok", "revoked", "spent", "limit", "replay"]
JtiMode = Literal["off", "log", "refuse"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What one request asks of the state (built by :class:`ConsentStateService`).

    ``consent_id``: lower-cased. ``jti_key``: hashed ``jti`` or ``None``. ``*_ttl_seconds``:
    how long the key lives (the token's / consent's remaining lifetime plus margin).
    ``usage_key``: ``"{route}:{YYYY-MM-DD}"`` (Europe/Oslo day) when the route has a
    ``daily_limit``, else ``None``. ``token``: unique value marking this request's one-time
    claim (so only its owner can release it).
    """

    consent_id: str
    check_revocation: bool
    jti_key: str | None
    jti_mode: JtiMode
    jti_ttl_seconds: float
    one_time: bool
    one_time_ttl_seconds: float
    usage_key: str | None
    daily_limit: int
    token: str


@dataclass(frozen=True, slots=True)
class BeginResult:
    """``outcome``: ``ok`` or why not. ``jti_reused``: the ``jti`` had been seen before (in
    ``log`` mode the request still goes on). ``jti_marked``: this request set the mark."""

    outcome: Outcome
    jti_reused: bool = False
    jti_marked: bool = False


class StateBackend(Protocol):
    """Shared consent state. All methods raise only ``StateUnavailableError``."""

    #: ``True`` when other processes see the same state (Redis); ``False`` in-process.
    shared: bool

    async def begin(self, claim: Claim) -> BeginResult:
        """Check and take, atomically; nothing is taken unless the outcome is ``ok``."""
        ...

    async def finish(self, claim: Claim, result: BeginResult, *, released: bool) -> None:
        """``released``: mark the one-time claim spent; else give back what ``begin`` took."""
        ...

    async def revoke(self, consent_ids: Iterable[str]) -> int:
        """Record revocations (lower-cased ids). :returns: how many were new."""
        ...

    async def revoked(self, consent_id: str) -> bool:
        """Is ``consent_id`` revoked here (file revocations are not the backend's)."""
        ...

    async def spent(self, consent_id: str) -> str | None:
        """``"spent"``, ``"claimed"`` (a delivery in flight, or a replica died during one) or
        ``None``."""
        ...

    async def clear_claim(self, consent_id: str) -> bool:
        """Drop a dangling one-time *claim* (never a ``spent`` mark): for an operator who knows
        nothing was delivered (a replica died mid-request, the backend failed after an upstream
        error). :returns: whether a claim was removed."""
        ...

    async def get_meta(self, name: str) -> str | None:
        """A small named value (feed continuation token, last successful poll time)."""
        ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or extend a lease (one feed poller across replicas). :returns: held by
        ``owner`` now."""
        ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it (graceful shutdown)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
