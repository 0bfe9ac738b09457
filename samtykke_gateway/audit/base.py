"""The disclosure store contract every backend implements (memory, SQLite, PostgreSQL).

A store is opened once by whoever creates it (``await store.open()``) and closed by the same
owner. ``append`` is the only call on the request path; it returns only when the record is
durable and raises :class:`~samtykke_gateway.exceptions.AuditUnavailableError` for every
failure, so the caller withholds the response body (docs/protocol.md §7).

Application logs never carry a record field: stores log the store URL without password, the
exception class and the SQLSTATE / SQLite error name - never the database's message text,
which may quote row values (a PostgreSQL ``DETAIL`` line does).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from samtykke_gateway.audit.record import DisclosureRecord

__all__ = ["DisclosureStore", "VerifyResult"]


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of walking the hash chain.

    ``checked``: rows read. ``first_broken_seq``: the first seq whose link is broken (for a
    deletion: the first missing seq). ``problem``: starts with ``edited``, ``deleted``,
    ``inserted`` or ``reordered``, then says where.
    """

    ok: bool
    checked: int
    first_broken_seq: int | None
    problem: str | None
    #: When ``ok``: the head the walk ended at (pin it outside the database, e.g. in the
    #: platform's log store, and pass it back as an anchor to detect a rewound tail).
    #: (Not part of equality: two walks agree when their verdicts agree.)
    head_seq: int | None = field(default=None, compare=False)
    head_hash: str | None = field(default=None, compare=False)
    #: Hashes of the seqs asked for with ``verify(watch=...)`` that the walk passed.
    watched: dict[int, str] = field(default_factory=dict, compare=False)
    #: seq of the purge checkpoint the walk started from (0: never purged).
    checkpoint_seq: int = field(default=0, compare=False)


@runtime_checkable
class DisclosureStore(Protocol):
    """Durable, hash-chained log of disclosure records."""

    #: The store URL with any password removed (safe to log).
    url_for_display: str

    async def open(self) -> None:
        """Connect; create the schema or migrate it to the current version.

        :raises AuditUnavailableError: store unreachable, or its schema is newer than ours.
        """
        ...

    async def append(self, record: DisclosureRecord) -> None:
        """Add ``record`` at the chain head; durable on return.

        :raises AuditUnavailableError: on any failure (never a foreign exception).
        """
        ...

    async def ping(self) -> None:
        """Cheap liveness check. :raises AuditUnavailableError: store unreachable."""
        ...

    async def close(self) -> None:
        """Finish pending appends and release connections/threads. Idempotent."""
        ...

    async def verify(self, *, watch: Collection[int] = ()) -> VerifyResult:
        """Walk the chain from the purge checkpoint to the head.

        :param watch: seqs whose hashes to report in :attr:`VerifyResult.watched` (anchors).

        :raises AuditUnavailableError: store unreachable.
        """
        ...

    async def export(
        self, *, subject: str, since: str | None = None, until: str | None = None
    ) -> list[DisclosureRecord]:
        """Every record about ``subject`` (allowed and denied), oldest first.

        ``since`` is inclusive, ``until`` exclusive; both ISO 8601 (a bare date means 00:00Z).

        :raises ValueError: ``since``/``until`` not ISO 8601.
        :raises AuditUnavailableError: store unreachable.
        """
        ...

    async def read_records(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        subject: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[tuple[int, DisclosureRecord]]:
        """One page of ``(seq, record)`` with ``seq > after_seq``, in chain order (ascending
        seq), at most ``limit`` (1..10,000) - pass the last seq back to read the next page, so a
        reader of a year of records holds one page at a time (the disclosure report).

        ``since`` inclusive, ``until`` exclusive (ISO 8601, as :meth:`export`); ``subject``:
        only records about that person/organisation.

        :raises ValueError: ``since``/``until`` not ISO 8601, ``limit`` out of range.
        :raises AuditUnavailableError: store unreachable.
        """
        ...

    async def purge(self, *, older_than_days: float) -> int:
        """Remove the oldest records whose time is before now − ``older_than_days``.

        Removes a *prefix* of the chain (stops at the first record that is new enough) and
        records the last removed (seq, hash) as the checkpoint verification starts from.
        Returns the number of rows removed.

        :raises AuditUnavailableError: store unreachable.
        """
        ...
