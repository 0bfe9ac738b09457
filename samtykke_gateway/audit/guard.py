"""Remember that the disclosure store is down, so requests are refused *before* they are
forwarded (SPEC §7: nothing may leave, and nothing should be done, without a record).

The store is only found down when a write fails, and a request's record is written after the
data API has answered (it holds the upstream status and what was released). Without this
guard every request during an outage was still forwarded — a POST executed upstream, then 503
to the client with no record — and each waited for the store's own timeout (15 s for a
PostgreSQL server that hangs). While the guard is down, one request per ``retry_seconds``
probes the store (:meth:`DisclosureStore.ping`); the others are refused at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..exceptions import AuditUnavailableError
from .base import DisclosureStore

__all__ = ["AuditGuard"]

UNAVAILABLE_DETAIL = "the disclosure log is unavailable; nothing was forwarded or released"


class AuditGuard:
    """Up/down state of one disclosure store, from the outcome of its writes and probes.

    :param store: the store to probe.
    :param retry_seconds: while down, at most one probe per this many seconds (monotonic).
    :param clock: monotonic seconds (tests).
    """

    def __init__(self, store: DisclosureStore, *, retry_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.retry_seconds = retry_seconds
        self.down = False
        self._clock = clock
        self._next_probe = 0.0

    def failed(self) -> None:
        """A write failed: refuse until a probe (or a write) succeeds."""
        if not self.down:
            self.down = True
            self._next_probe = self._clock() + self.retry_seconds

    def succeeded(self) -> None:
        """A write went through: the store is up."""
        self.down = False

    async def check(self) -> None:
        """Return while the store is taken to be up; while down, probe it at most once per
        ``retry_seconds`` and refuse the rest at once.

        :raises AuditUnavailableError: (503) the store is down (or its probe failed).
        """
        if not self.down:
            return
        now = self._clock()
        if now < self._next_probe:
            raise AuditUnavailableError(UNAVAILABLE_DETAIL)
        self._next_probe = now + self.retry_seconds  # concurrent requests do not probe too
        try:
            await self.store.ping()
        except AuditUnavailableError:
            raise AuditUnavailableError(UNAVAILABLE_DETAIL) from None
        self.down = False
