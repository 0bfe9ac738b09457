"""The hash chain over disclosure records: canonical form, hashing, verification.

Every stored record carries ``seq`` (1, 2, 3, ... without gaps), ``prev_hash`` (the
``hash`` of record ``seq - 1``, or of the purge checkpoint, or :data:`GENESIS_HASH`) and::

    hash = SHA-256( canonical_json({"prev_hash": prev_hash, "record": record, "seq": seq}) )

``canonical_json`` is sorted-key, compact (``","`` / ``":"``), ASCII-only JSON (non-ASCII
escaped as ``\\uXXXX``), no NaN/Infinity. ``record`` is the JSON object of every
:class:`DisclosureRecord` field (lists/dicts as JSON). Anyone can re-check a chain with
``sha256`` and a JSON library.

The chain is *tamper-evident*, not tamper-proof: whoever can write the store can rebuild
every hash after an edit. Pinning the head (``seq``, ``hash``) somewhere else (a second
system, a signed daily note) turns that into a detectable event.

:class:`ChainVerifier` is push-based (feed rows in ``seq`` order, then :meth:`finish`) so a
store can stream millions of rows with O(1) memory. It reports the *first* broken link
and tells edited / deleted / inserted / reordered apart where the evidence allows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.audit.base import VerifyResult
from samtykke_gateway.audit.record import OMITTED_WHEN_NONE, DisclosureRecord

__all__ = [
    "GENESIS_HASH",
    "MAX_READ_PAGE",
    "PROJECTED",
    "ChainRow",
    "ChainVerifier",
    "PreparedRecord",
    "canonical_json",
    "chain_hash",
    "chain_hash_text",
    "check_page",
    "load_record",
    "normalise_time",
    "prepare",
    "project_column",
    "purge_cutoff",
    "purgeable_prefix",
]

logger = logging.getLogger(__name__)

#: ``prev_hash`` of record 1 of a chain that was never purged.
GENESIS_HASH = "0" * 64

#: Record fields copied into indexed columns (for export and ad-hoc SQL). Verification
#: checks each column against the hashed record, so editing a column is an edit too.
PROJECTED = ("subject", "consumer", "supplier", "consent_id", "decision")

#: How many renumbered positions verification tries when classifying a deletion.
_RENUMBER_SEARCH = 10_000


def canonical_json(obj: Any) -> str:
    """Sorted-key compact ASCII JSON; raises ``TypeError``/``ValueError`` if not JSON-able.

    Always exactly ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=True, allow_nan=False)`` (:func:`_reference_json`); orjson's output is
    taken only where it is provably the same bytes (:func:`_fast_json`).
    """
    if type(obj) is dict and _plain_dict(obj, 0):
        text = _fast_json(obj)
        if text is not None:
            return text
    return _reference_json(obj)


def _reference_json(obj: Any) -> str:
    """The definition of the canonical form: the stdlib encoder, as every log was written."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _fast_json(obj: dict[str, Any]) -> str | None:
    """orjson's encoding of a :func:`_plain_dict` object, or ``None`` where it would differ.

    For exact ``str``/``int``/``bool``/``None``/``dict`` (``str`` keys)/``list`` values both
    encoders write the same bytes (compact separators, keys sorted by code point, ``\\"``
    ``\\\\`` ``\\n`` ``\\r`` ``\\t`` ``\\b`` ``\\f`` and lower-case ``\\u00XX`` escapes, ints
    as ``repr``), except that orjson writes non-ASCII as UTF-8 and DEL (0x7f) raw where
    ``ensure_ascii`` escapes both (-> ``None``) and raises on lone surrogates and ints
    beyond 64 bits (-> ``None``). Property-tested against :func:`_reference_json` in
    ``tests/audit/test_canonical.py``.
    """
    try:
        out = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        return None
    if not out.isascii() or b"\x7f" in out:
        return None
    return out.decode("ascii")


_SCALARS = frozenset((str, int, bool, type(None)))


def _plain_values(values: Iterable[Any]) -> bool:
    """The values of a record's fields: scalars, lists of scalars, :func:`_plain_dict` s."""
    for value in values:
        t = type(value)
        if t in _SCALARS:
            continue
        if t is list:
            for item in value:
                if type(item) not in _SCALARS:
                    return False
        elif t is not dict or not _plain_dict(value, 1):
            return False
    return True


def _plain_dict(obj: dict[Any, Any], depth: int) -> bool:
    """Only exact JSON types, ``str`` keys, two dict levels, lists of scalars (a record is
    dict -> dict -> list of str). Never floats (``repr`` vs orjson's formatting, NaN),
    subclasses (``IntEnum``, ``str`` enums), tuples, or what orjson serialises and the
    stdlib refuses (``UUID``, ``datetime``, enums, dataclasses, ``orjson.Fragment``)."""
    for key, value in obj.items():
        if type(key) is not str:
            return False
        t = type(value)
        if t in _SCALARS:
            continue
        if t is list:
            for item in value:
                if type(item) not in _SCALARS:
                    return False
        elif t is not dict or depth or not _plain_dict(value, 1):
            return False
    return True


def chain_hash(record: Mapping[str, Any], *, seq: int, prev_hash: str) -> str:
    """SHA-256 hex of the canonical ``{"prev_hash", "record", "seq"}`` object."""
    return chain_hash_text(canonical_json(record), seq=seq, prev_hash=prev_hash)


def chain_hash_text(record_json: str, *, seq: int, prev_hash: str) -> str:
    """:func:`chain_hash` for a record already in canonical JSON (no re-serialising).

    Sorted keys put ``prev_hash`` < ``record`` < ``seq``, so the canonical object is built
    by concatenation.
    """
    # A hex digest and a plain int encode as themselves (no escapes): skip the encoder.
    if type(prev_hash) is str and prev_hash.isascii() and prev_hash.isalnum():
        prev_text = f'"{prev_hash}"'
    else:
        prev_text = _reference_json(prev_hash)
    seq_text = str(seq) if type(seq) is int else _reference_json(seq)
    body = f'{{"prev_hash":{prev_text},"record":{record_json},"seq":{seq_text}}}'
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def normalise_time(value: str) -> str:
    """ISO 8601 -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC), which sorts as text.

    Accepts ``Z`` or an offset; a naive time or a bare date is taken as UTC.

    :raises ValueError: not ISO 8601.
    """
    global _valid_second
    # Fast path: already normalised (what the middleware writes), year 1000-9999 (strftime
    # writes years below 1000 unpadded). The date and the time up to the second are checked
    # by the parser once per distinct second.
    if type(value) is str and len(value) == 27 and _NORMALISED.fullmatch(value) is not None:
        second = value[:19]
        if second != _valid_second:
            datetime.fromisoformat(second)  # raises ValueError for 2026-02-30, 25:00, ...
            _valid_second = second
        return value
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Hours 00-23 only: a parser that reads "T24:00:00" as the next midnight (ISO 8601 end of
# day; newer CPython) would pass the per-second check, but the reference refuses 24:00 with
# a fraction and rewrites it to the next day without one.
_NORMALISED = re.compile(
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
)
#: The last ``YYYY-MM-DDTHH:MM:SS`` the parser accepted (rebinding a str is atomic).
_valid_second = ""


#: Most days ``purge`` looks back (100 years): beyond it ``timedelta`` leaves the calendar.
MAX_PURGE_DAYS = 36_500

#: Most records one ``read_records`` page returns.
MAX_READ_PAGE = 10_000


def check_page(after_seq: int, limit: int) -> None:
    """:raises ValueError: ``limit`` outside 1..:data:`MAX_READ_PAGE` or ``after_seq`` < 0."""
    if not 1 <= limit <= MAX_READ_PAGE or after_seq < 0:
        raise ValueError(f"read_records: limit must be 1..{MAX_READ_PAGE} and after_seq >= 0")


def purge_cutoff(older_than_days: float, *, now: datetime | None = None) -> str:
    """Normalised time ``older_than_days`` before ``now`` (default: the current UTC time).

    :raises ValueError: negative, NaN or infinite.
    """
    if not math.isfinite(older_than_days) or not 0 <= older_than_days <= MAX_PURGE_DAYS:
        raise ValueError(f"older_than_days must be a number within 0..{MAX_PURGE_DAYS}")
    moment = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    return normalise_time(moment.isoformat())


def project_column(value: Any) -> str | None:
    """The text a projected column holds for a record value (``None`` stays ``None``).

    Non-strings become canonical JSON; NUL and lone surrogates (which PostgreSQL text and
    UTF-8 cannot hold) are escaped, so a hostile path segment cannot make the append fail.
    The record itself keeps the exact value (ASCII JSON escapes everything).
    """
    if value is None:
        return None
    if type(value) is str and value.isascii() and "\x00" not in value:
        return value  # what the general path below returns for it, at a tenth of the cost
    text = value if isinstance(value, str) else canonical_json(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record serialised once, on the caller's side, before it reaches a writer."""

    record_json: str
    at: str
    columns: dict[str, Any]

    @property
    def record_obj(self) -> dict[str, Any]:
        """The record as verification will read it back."""
        obj: dict[str, Any] = json.loads(self.record_json)
        return obj


def prepare(record: DisclosureRecord) -> PreparedRecord:
    """Serialise ``record`` canonically.

    :raises AuditUnavailableError: a field is not JSON-able or ``time`` is not ISO 8601
        (fail closed: a record that cannot be stored must not let the response out).
    """
    try:
        # Shallow: the encoder walks nested lists/dicts itself (asdict's deep copy was 3x
        # the cost of the whole serialisation); one C call reads every field.
        names, values_of = _fields_of(type(record))
        values = values_of(record)
        obj = dict(zip(names, values, strict=True))  # field names: str keys
        for name in OMITTED_WHEN_NONE:  # stored as before the field existed
            if obj[name] is None:
                del obj[name]
        text = _fast_json(obj) if _plain_values(values) else None
        if text is None:
            text = _reference_json(obj)
        at = normalise_time(record.time)
        columns = {k: project_column(obj.get(k)) for k in PROJECTED}
    except (TypeError, ValueError, AttributeError):
        raise AuditUnavailableError(
            "disclosure record cannot be serialised", reason="audit_record_invalid"
        ) from None
    return PreparedRecord(record_json=text, at=at, columns=columns)


_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _fields_of(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """A record dataclass's field names and a getter of their values as one tuple."""
    known = _FIELDS.get(cls)
    if known is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) < 2:  # attrgetter of a single name returns the value, not a 1-tuple
            raise TypeError("not a disclosure record")
        known = _FIELDS[cls] = (names, operator.attrgetter(*names))
    return known


def load_record(record_json: str) -> DisclosureRecord:
    """A stored record back as a :class:`DisclosureRecord`.

    :raises AuditUnavailableError: the stored text is not a record (corrupt or tampered;
        ``audit verify`` says where).
    """
    try:
        data = json.loads(record_json)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return DisclosureRecord.from_dict(data)
    except (TypeError, ValueError):
        raise AuditUnavailableError(
            "a stored disclosure record is unreadable; run 'audit verify'",
            reason="audit_record_corrupt",
        ) from None


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One stored row as read back: chain fields, the record text and projected columns."""

    seq: int
    prev_hash: str
    hash: str
    record_json: str
    at: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)

    def self_consistent(self) -> bool:
        """The stored hash matches the record, seq and prev_hash; columns match the record.

        The stored text is hashed as it is: the store only ever writes canonical JSON, so a
        text that differs in any byte (even re-serialised "equivalently") is an edit.
        """
        try:
            if chain_hash_text(self.record_json, seq=self.seq, prev_hash=self.prev_hash) != (
                self.hash
            ):
                return False
            record = json.loads(self.record_json)
            if not isinstance(record, dict):
                return False
            if self.at is not None and normalise_time(str(record.get("time"))) != self.at:
                return False
            return all(project_column(record.get(k)) == v for k, v in self.columns.items())
        except (TypeError, ValueError):
            return False

    def hashes_as(self, seq: int) -> bool:
        """Whether the stored hash would be right had this row kept ``seq``."""
        try:
            return chain_hash_text(self.record_json, seq=seq, prev_hash=self.prev_hash) == self.hash
        except (TypeError, ValueError):
            return False


def purgeable_prefix(
    rows: Sequence[ChainRow], cutoff: str, base_seq: int, base_hash: str
) -> tuple[int, bool, tuple[int, str] | None]:
    """(count, reached-the-end, last (seq, hash)) of the verified prefix older than ``cutoff``.

    Stops at the first record new enough *or* not extending the chain: purge never erases
    the evidence of a broken link.
    """
    seq, digest, count = base_seq, base_hash, 0
    for row in rows:
        if (row.at or "") >= cutoff:
            return count, True, (seq, digest) if count else None
        if row.seq != seq + 1 or row.prev_hash != digest or not row.self_consistent():
            logger.warning("audit purge stopped at a broken chain link; run 'audit verify'")
            return count, True, (seq, digest) if count else None
        seq, digest, count = row.seq, row.hash, count + 1
    return count, False, (seq, digest) if count else None


@dataclass(slots=True)
class _Suspect:
    """The first row that did not extend the chain, and what later rows say about it."""

    row: ChainRow
    prev_seq: int
    prev_hash: str
    prev_prev_hash: str | None
    next_prev_hash: str | None = None
    seen_next: bool = False
    predecessor_later_seq: int | None = None
    successor_later_seq: int | None = None


class ChainVerifier:
    """Walk a chain: ``feed`` rows in ascending ``seq``, then ``finish(head_seq, head_hash)``.

    :param base_seq: seq of the purge checkpoint (0 when never purged).
    :param base_hash: hash of the checkpoint record (:data:`GENESIS_HASH` when never purged).
    """

    def __init__(self, *, base_seq: int = 0, base_hash: str = GENESIS_HASH, watch: Collection[int] = ()) -> None:
        self.checked = 0
        self._watch = frozenset(watch)
        self.watched: dict[int, str] = {}
        if base_seq in self._watch:  # the checkpoint keeps the hash of the last purged record
            self.watched[base_seq] = base_hash
        self._base_seq = base_seq
        self._seq = base_seq
        self._hash = base_hash
        self._prev_hash: str | None = None
        self._suspect: _Suspect | None = None

    def feed(self, row: ChainRow) -> None:
        self.checked += 1
        suspect = self._suspect
        if suspect is not None:
            if not suspect.seen_next:
                suspect.seen_next = True
                suspect.next_prev_hash = row.prev_hash
            if suspect.predecessor_later_seq is None and row.hash == suspect.row.prev_hash:
                suspect.predecessor_later_seq = row.seq
            if suspect.successor_later_seq is None and row.prev_hash == suspect.prev_hash:
                suspect.successor_later_seq = row.seq
            return
        if row.seq == self._seq + 1 and row.prev_hash == self._hash and row.self_consistent():
            self._prev_hash, self._seq, self._hash = self._hash, row.seq, row.hash
            if row.seq in self._watch:
                self.watched[row.seq] = row.hash
            return
        self._suspect = _Suspect(row, self._seq, self._hash, self._prev_hash)

    def finish(self, *, head_seq: int, head_hash: str) -> VerifyResult:
        """Classify the first break (if any) and check the walk ended at the recorded head."""
        if self._suspect is not None:
            seq, problem = _classify(self._suspect)
            return VerifyResult(
                ok=False, checked=self.checked, first_broken_seq=seq, problem=problem
            )
        if self._seq < head_seq:
            return self._broken(
                self._seq + 1,
                f"deleted: records {self._seq + 1}..{head_seq} missing "
                f"(the chain head says {head_seq})",
            )
        if self._seq > head_seq:
            return self._broken(
                head_seq + 1,
                f"inserted: records {head_seq + 1}..{self._seq} lie beyond the chain head",
            )
        if self._hash != head_hash:
            return self._broken(
                self._seq, f"edited: record {self._seq} was altered and re-hashed (head differs)"
            )
        return VerifyResult(ok=True, checked=self.checked, first_broken_seq=None, problem=None,
                            head_seq=self._seq, head_hash=self._hash, watched=dict(self.watched),
                            checkpoint_seq=self._base_seq)

    def _broken(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(ok=False, checked=self.checked, first_broken_seq=seq, problem=problem)


def _classify(s: _Suspect) -> tuple[int, str]:
    row, p = s.row, s.prev_seq
    links = row.prev_hash == s.prev_hash
    consistent = row.self_consistent()
    if links and row.seq == p + 1:
        if s.next_prev_hash == s.prev_hash:
            return (
                row.seq,
                f"inserted: record {row.seq} is not part of the chain (the next links past it)",
            )
        return row.seq, f"edited: record {row.seq} does not match its hash"
    if links:
        return (
            row.seq,
            f"edited: record {row.seq} carries a wrong sequence number (expected {p + 1})",
        )
    if row.seq <= p:
        return row.seq, f"inserted: record {row.seq} repeats or precedes sequence number {p}"
    if s.prev_prev_hash is not None and row.prev_hash == s.prev_prev_hash:
        return p, f"inserted: record {p} is not part of the chain (record {row.seq} links past it)"
    if s.predecessor_later_seq is not None or s.successor_later_seq is not None:
        where = s.predecessor_later_seq or s.successor_later_seq
        return (
            row.seq,
            f"reordered: record {row.seq} is out of place (its neighbour sits at {where})",
        )
    if row.seq > p + 1 and consistent:
        return p + 1, f"deleted: records {p + 1}..{row.seq - 1} missing"
    if consistent:
        return (
            p,
            f"edited: record {p} was altered and re-hashed (record {row.seq} links to its original)",
        )
    for gap in range(1, _RENUMBER_SEARCH + 1):
        if row.hashes_as(row.seq + gap):
            return p + 1, (
                f"deleted: {gap} record(s) after {p} missing and later records renumbered"
            )
    return row.seq, f"edited: record {row.seq} does not link to record {p}"
