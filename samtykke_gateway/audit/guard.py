"""Remember that the disclosure store is down, so requests are refused *before* they are
forwarded (docs/protocol.md §7: nothing may leave, and nothing should be done, without a record).

The store is only found down when a write fails, and a request's record is written after the
data API has answered (it holds the upstream status and what was released). Without this
guard every request during an outage was still forwarded — a POST executed upstream, then 503
to the client with no record — and each waited for the store's own timeout (15 s for a
PostgreSQL server that hangs). While the guard is down, one request per ``retry_seconds``
probes the store (:meth:`DisclosureStore.ping`); the others are refused at once. A probe that
succeeds lets only that one request through (a trial) until its own record is written: a store
that answers reads but refuses writes (read-only after a failover, a full disk) would otherwise
let every request in between through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.audit.base import DisclosureStore

__all__ = ["AuditGuard"]

#: The 503 detail when a record could not be written (the request may have reached the data API).
UNAVAILABLE_DETAIL = "the disclosure log is unavailable; nothing was released"
#: The 503 detail when the guard refused the request before it was forwarded.
NOT_FORWARDED_DETAIL = "the disclosure log is unavailable; the request was not forwarded"


class AuditGuard:
    """Up/down state of one disclosure store, from the outcome of its writes and probes.

    :param store: the store to probe.
    :param retry_seconds: while down, at most one probe per this many seconds (monotonic).
    :param trial_seconds: most seconds a trial request may take to settle (its record written
        or failed) before another probe is allowed.
    :param clock: monotonic seconds (tests).
    """

    def __init__(self, store: DisclosureStore, *, retry_seconds: float = 1.0, trial_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.retry_seconds = retry_seconds
        self.trial_seconds = trial_seconds
        self.down = False
        self._clock = clock
        self._next_probe = 0.0

    def failed(self) -> None:
        """A write failed: refuse until a probe and then a trial write succeed."""
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
        if now < self._next_probe:  # waiting to probe, or a trial request is under way
            raise AuditUnavailableError(NOT_FORWARDED_DETAIL)
        self._next_probe = now + self.retry_seconds  # concurrent requests do not probe too
        try:
            await self.store.ping()
        except AuditUnavailableError:
            raise AuditUnavailableError(NOT_FORWARDED_DETAIL) from None
        # this request is the trial: the others wait for its write (succeeded()/failed())
        self._next_probe = self._clock() + self.trial_seconds
