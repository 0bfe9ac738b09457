"""Extension points the enforcement path calls: consent state (docs/protocol.md §4 step 9, §8) and
observation (metrics). :class:`~samtykke_gateway.runtime.Gateway` builds the real ones from the
config (:mod:`samtykke_gateway.state`, :mod:`samtykke_gateway.observe.metrics`); the ``Null*`` classes
here are for callers that inject their own and want nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from samtykke_gateway.audit.record import DisclosureRecord
    from samtykke_gateway.policy.decide import Grant

__all__ = ["ConsentState", "NullObserver", "NullState", "Observer"]


class ConsentState(Protocol):
    """Revocation, one-time consents, usage limits, ``jti`` replay (docs/protocol.md §8).

    ``before_forward`` runs after every consent check passed and before anything is forwarded;
    it raises :class:`ConsentSpentError` (403), :class:`UsageLimitError` (429) or
    :class:`StateUnavailableError` (503). ``after_response`` runs once the outcome is known:
    ``released`` is ``True`` when a 2xx body left the gateway (a one-time consent is then
    spent), ``False`` when nothing was released (a claim taken in ``before_forward`` is given
    back).
    """

    async def before_forward(self, grant: Grant) -> None: ...

    async def after_response(self, grant: Grant, *, released: bool) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class NullState:
    """No consent state: nothing revoked, nothing spent (a single test replica with no state)."""

    async def before_forward(self, grant: Grant) -> None:
        return None

    async def after_response(self, grant: Grant, *, released: bool) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Observer(Protocol):
    """Receives timings (seconds) and outcomes; must never raise and never see a token.

    ``decision``: once per request with its final record (decision, reason, status) and the
    gate's own time. ``audit_write``: each disclosure-store append. ``upstream``: each upstream
    exchange until its response starts (``status`` ``None`` on failure).
    """

    def decision(self, record: DisclosureRecord, gate_seconds: float) -> None: ...

    def audit_write(self, seconds: float, *, ok: bool) -> None: ...

    def upstream(self, seconds: float, *, status: int | None) -> None: ...


class NullObserver:
    def decision(self, record: DisclosureRecord, gate_seconds: float) -> None:
        return None

    def audit_write(self, seconds: float, *, ok: bool) -> None:
        return None

    def upstream(self, seconds: float, *, status: int | None) -> None:
        return None
