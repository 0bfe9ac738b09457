"""In-process disclosure store for tests and benchmarks (``memory://``). Not durable.

Same chain, checkpoint and export semantics as the SQL stores. :meth:`MemoryStore.set_unavailable`
makes ``append``/``ping`` raise :class:`AuditUnavailableError`, for testing fail-closed paths.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.audit.base import VerifyResult
from samtykke_gateway.audit.chain import (
    GENESIS_HASH,
    ChainRow,
    ChainVerifier,
    chain_hash_text,
    check_page,
    normalise_time,
    load_record,
    prepare,
    project_column,
    purge_cutoff,
)
from samtykke_gateway.audit.record import DisclosureRecord

__all__ = ["MemoryStore"]


class MemoryStore:
    """A list of :class:`ChainRow` guarded by a lock (safe from several threads/loops)."""

    def __init__(self) -> None:
        self.url_for_display = "memory://"
        self.rows: list[ChainRow] = []  #: exposed for tamper tests
        self.head: tuple[int, str] = (0, GENESIS_HASH)
        self.checkpoint: tuple[int, str] = (0, GENESIS_HASH)
        self._lock = threading.Lock()
        self._open = False
        self._unavailable = False

    def set_unavailable(self, unavailable: bool = True) -> None:
        """Simulate an unreachable store (``True``) or recovery (``False``)."""
        self._unavailable = unavailable

    @property
    def records(self) -> list[DisclosureRecord]:
        """Every stored record, oldest first."""
        with self._lock:
            return [load_record(r.record_json) for r in self.rows]

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        self._check()

    async def head_seq(self) -> int:
        """seq of the chain head: 0 for a log that never held a record."""
        self._check()
        return self.head[0]

    def _check(self) -> None:
        if not self._open:
            raise AuditUnavailableError("disclosure store is not open")
        if self._unavailable:
            raise AuditUnavailableError("disclosure store unavailable (simulated)")

    async def append(self, record: DisclosureRecord) -> None:
        prepared = prepare(record)
        self._check()
        with self._lock:
            seq, prev = self.head
            seq += 1
            digest = chain_hash_text(prepared.record_json, seq=seq, prev_hash=prev)
            self.rows.append(
                ChainRow(seq, prev, digest, prepared.record_json, prepared.at, prepared.columns)
            )
            self.head = (seq, digest)

    async def verify(self, *, watch: Collection[int] = ()) -> VerifyResult:
        with self._lock:
            rows = sorted(self.rows, key=lambda r: r.seq)
            base, head = self.checkpoint, self.head
        verifier = ChainVerifier(base_seq=base[0], base_hash=base[1], watch=watch)
        for row in rows:
            verifier.feed(row)
        return verifier.finish(head_seq=head[0], head_hash=head[1])

    async def export(
        self, *, subject: str, since: str | None = None, until: str | None = None
    ) -> list[DisclosureRecord]:
        low = normalise_time(since) if since else None
        high = normalise_time(until) if until else None
        key = project_column(subject)
        with self._lock:
            rows = list(self.rows)
        return [
            load_record(r.record_json)
            for r in sorted(rows, key=lambda r: (r.at or "", r.seq))
            if r.columns.get("subject") == key
            and (low is None or (r.at or "") >= low)
            and (high is None or (r.at or "") < high)
        ]

    async def read_records(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        subject: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[tuple[int, DisclosureRecord]]:
        check_page(after_seq, limit)
        low = normalise_time(since) if since else None
        high = normalise_time(until) if until else None
        key = project_column(subject)
        self._check()
        with self._lock:
            rows = [r for r in self.rows if r.seq > after_seq]
        page: list[tuple[int, DisclosureRecord]] = []
        for r in sorted(rows, key=lambda r: r.seq):
            if (
                (subject is None or r.columns.get("subject") == key)
                and (low is None or (r.at or "") >= low)
                and (high is None or (r.at or "") < high)
            ):
                page.append((r.seq, load_record(r.record_json)))
                if len(page) == limit:
                    break
        return page

    async def purge(self, *, older_than_days: float) -> int:
        cutoff = purge_cutoff(older_than_days)
        with self._lock:
            removed = 0
            for row in self.rows:
                if (row.at or "") >= cutoff:
                    break
                removed += 1
            if removed:
                last = self.rows[removed - 1]
                self.checkpoint = (last.seq, last.hash)
                del self.rows[:removed]
            return removed
