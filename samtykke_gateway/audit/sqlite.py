"""SQLite disclosure store (the default): one file, WAL, one dedicated writer thread.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` (the default here). In WAL mode
FULL fsyncs the WAL at every commit, so a record is on disk when ``append`` returns - the
promise docs/protocol.md §7 needs ("durable before the body is released"). ``NORMAL`` only fsyncs at
checkpoints: it survives a gateway crash but may lose the last commits on power loss or a
kernel crash, after the response already left; it is accepted (``?synchronous=NORMAL``) for
benchmarks, not recommended. (``EXTRA`` only adds journal-directory syncs, i.e. equals FULL
in WAL mode.) Group commit is what makes FULL affordable: measured with
``bench/bench_audit.py`` on a shared 2-CPU VM, 32 concurrent appenders got ~3,100 appends/s
with group commit against ~330/s committing one record per transaction, and NORMAL bought
less than 2x on top; at concurrency 1 FULL costs one fsync (0.3-4 ms here) per append.

Concurrency: every write runs on one thread that owns the write connection. Appends queue
there; the thread takes everything queued (up to ``max_batch``) and commits it as one
transaction (group commit): one fsync for the batch, and each ``append`` resumes only after
the commit that holds its own record. ``BEGIN IMMEDIATE`` + a ``chain_head`` row keep the
chain linear even when several processes share the file. Reads (verify, export) use their own
connection in a worker thread and see a WAL snapshot.

Failure: any error fails the batch with :class:`AuditUnavailableError` and drops the
connection; the next write reconnects *without* ``create`` (a deleted database is an error,
never a fresh empty chain). Before each batch the thread checks the path still names the file
it has open (a moved/deleted database would otherwise swallow records into an unlinked inode).

URL: ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``, options
``?synchronous=FULL|EXTRA|NORMAL&busy_timeout_ms=2000&max_batch=256``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from samtykke_gateway.exceptions import AuditUnavailableError
from samtykke_gateway.audit.base import VerifyResult
from samtykke_gateway.audit.chain import (
    GENESIS_HASH,
    PROJECTED,
    ChainRow,
    ChainVerifier,
    PreparedRecord,
    chain_hash_text,
    check_page,
    normalise_time,
    load_record,
    prepare,
    project_column,
    purge_cutoff,
    purgeable_prefix,
)
from samtykke_gateway.audit.record import DisclosureRecord

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1

#: version -> statements bringing the schema from version - 1 to version.
MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE disclosure (
            seq INTEGER PRIMARY KEY,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            at TEXT NOT NULL,
            subject TEXT,
            consumer TEXT,
            supplier TEXT,
            consent_id TEXT,
            decision TEXT,
            record TEXT NOT NULL
        )""",
        "CREATE INDEX disclosure_subject_at ON disclosure (subject, at)",
        """CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL
        )""",
        """CREATE TABLE chain_checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL,
            purged_at TEXT, purged_total INTEGER NOT NULL DEFAULT 0
        )""",
        f"INSERT INTO chain_head VALUES (1, 0, '{GENESIS_HASH}')",
        f"INSERT INTO chain_checkpoint VALUES (1, 0, '{GENESIS_HASH}', NULL, 0)",
    ),
}

_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")
_COLUMNS = ("seq", "prev_hash", "hash", "at", *PROJECTED, "record")
_INSERT = (
    f"INSERT INTO disclosure ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_SELECT_ROWS = f"SELECT {', '.join(_COLUMNS)} FROM disclosure"
_projected = operator.itemgetter(*PROJECTED)
_PURGE_CHUNK_ROWS = 5_000


class _Stop:
    pass


_STOP = _Stop()


@dataclass(slots=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    record: PreparedRecord | None = None
    call: Callable[[], Any] | None = None
    operation: str = "append"


class SqliteStore:
    """Disclosure store in one SQLite file.

    :param path: database file; created (with its schema) by :meth:`open`.
    :param synchronous: ``"FULL"`` (default), ``"EXTRA"`` or ``"NORMAL"`` - see module doc.
    :param busy_timeout_ms: how long a write waits for another process's lock before failing.
    :param max_batch: most appends committed in one transaction (1 disables group commit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 2000,
        max_batch: int = 256,
    ) -> None:
        if str(path) in ("", ":memory:"):
            raise ValueError("sqlite store needs a file path; use memory:// for an in-memory store")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        if busy_timeout_ms < 0 or max_batch < 1:
            raise ValueError("busy_timeout_ms must be >= 0 and max_batch >= 1")
        self.path = os.path.abspath(os.fspath(path))
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self.url_for_display = f"sqlite:///{self.path}"
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._state_lock = threading.Lock()  # makes "check open + enqueue" atomic with close
        # Writer-thread state:
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        with self._state_lock:
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(
                    target=self._run, name="samtykke-audit-sqlite", daemon=True
                )
                self._thread.start()
        try:
            await self._submit(self._migrate, "open")
        except BaseException:
            await self.close()  # a failed open leaves nothing running; open() may be retried
            raise

    async def close(self) -> None:
        with self._state_lock:
            thread, self._thread = self._thread, None
            self._closed = True
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            await asyncio.to_thread(thread.join)

    async def ping(self) -> None:
        await self._submit(lambda: self._connection().execute("SELECT seq FROM chain_head"), "ping")

    async def head_seq(self) -> int:
        """seq of the chain head: 0 for a log that never held a record (a purge keeps it)."""
        return int(await self._submit(
            lambda: self._connection().execute("SELECT seq FROM chain_head WHERE id = 1").fetchone()[0], "head"))

    # -- writes --------------------------------------------------------------------------------

    async def append(self, record: DisclosureRecord) -> None:
        prepared = prepare(record)
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), record=prepared)
        self._enqueue(job)
        await job.future

    async def purge(self, *, older_than_days: float) -> int:
        cutoff = purge_cutoff(older_than_days)
        removed = 0
        while True:
            count, done = await self._submit(lambda: self._purge_chunk(cutoff), "purge")
            removed += count
            if done:
                return removed

    def _enqueue(self, job: _Job) -> None:
        with self._state_lock:
            if self._thread is None or self._closed:
                raise AuditUnavailableError("disclosure store is not open")
            self._queue.put(job)

    async def _submit(self, call: Callable[[], T], operation: str = "call") -> T:
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), call=call, operation=operation)
        self._enqueue(job)
        result: T = await job.future
        return result

    # -- reads (own connection, worker thread) -------------------------------------------------

    async def verify(self, *, watch: Collection[int] = ()) -> VerifyResult:
        return await self._read(lambda conn: self._verify_sync(conn, watch))

    async def export(
        self, *, subject: str, since: str | None = None, until: str | None = None
    ) -> list[DisclosureRecord]:
        low = normalise_time(since) if since else None
        high = normalise_time(until) if until else None
        return await self._read(lambda conn: self._export_sync(conn, subject, low, high))

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
        params: list[object] = [after_seq]
        sql = "SELECT seq, record FROM disclosure WHERE seq > ?"
        if subject is not None:
            sql, params = sql + " AND subject = ?", [*params, project_column(subject)]
        if since:
            sql, params = sql + " AND at >= ?", [*params, normalise_time(since)]
        if until:
            sql, params = sql + " AND at < ?", [*params, normalise_time(until)]
        sql, params = sql + " ORDER BY seq LIMIT ?", [*params, limit]

        def page(conn: sqlite3.Connection) -> list[tuple[int, DisclosureRecord]]:
            return [(seq, load_record(text)) for seq, text in conn.execute(sql, params)]

        return await self._read(page)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                conn = self._connect(create=False)
            except (sqlite3.Error, OSError) as exc:
                raise _unavailable("read", exc) from None
            try:
                conn.execute("PRAGMA query_only = 1")
                conn.execute("BEGIN")
                return work(conn)
            except AuditUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - never a foreign exception
                raise _unavailable("read", exc) from None
            finally:
                conn.close()

        if self._closed or self._thread is None:
            raise AuditUnavailableError("disclosure store is not open")
        return await asyncio.to_thread(run)

    @staticmethod
    def _verify_sync(conn: sqlite3.Connection, watch: Collection[int] = ()) -> VerifyResult:
        base_seq, base_hash = _single(conn, "chain_checkpoint")
        head_seq, head_hash = _single(conn, "chain_head")
        verifier = ChainVerifier(base_seq=base_seq, base_hash=base_hash, watch=watch)
        for row in conn.execute(f"{_SELECT_ROWS} ORDER BY seq"):
            verifier.feed(_row(row))
        return verifier.finish(head_seq=head_seq, head_hash=head_hash)

    @staticmethod
    def _export_sync(
        conn: sqlite3.Connection, subject: str, low: str | None, high: str | None
    ) -> list[DisclosureRecord]:
        sql, params = "SELECT record FROM disclosure WHERE subject = ?", [project_column(subject)]
        if low is not None:
            sql, params = sql + " AND at >= ?", [*params, low]
        if high is not None:
            sql, params = sql + " AND at < ?", [*params, high]
        rows = conn.execute(sql + " ORDER BY at, seq", params).fetchall()
        return [load_record(text) for (text,) in rows]

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        carry: _Job | _Stop | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if isinstance(job, _Stop):
                break
            if job.call is not None:
                self._run_call(job)
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop) or nxt.call is not None:
                    carry = nxt
                    break
                batch.append(nxt)
            self._write_batch(batch)
        self._drop_connection()
        # Anything queued after stop (a race with close) must not hang its caller.
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(left, _Job):
                _settle(left, AuditUnavailableError("disclosure store is closed"))

    def _run_call(self, job: _Job) -> None:
        if job.call is None:
            return
        try:
            result = job.call()
        except AuditUnavailableError as exc:
            _settle(job, exc)
        except (sqlite3.Error, OSError) as exc:
            self._drop_connection()
            _settle(job, _unavailable(job.operation, exc))
        except Exception as exc:  # noqa: BLE001 - never leak a foreign exception
            self._drop_connection()
            _settle(job, _unavailable(job.operation, exc))
        else:
            _settle(job, None, result)

    def _write_batch(self, batch: list[_Job]) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq, prev = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
                rows = []
                for rec in (job.record for job in batch if job.record is not None):
                    seq += 1
                    digest = chain_hash_text(rec.record_json, seq=seq, prev_hash=prev)
                    rows.append((seq, prev, digest, rec.at, *_projected(rec.columns), rec.record_json))
                    prev = digest
                conn.executemany(_INSERT, rows)
                conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes AuditUnavailableError
            self._drop_connection()
            error = _unavailable("append", exc)
            for job in batch:
                _settle(job, AuditUnavailableError(error.detail, reason=error.reason))
        else:
            _settle_all(batch)

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        conn = sqlite3.connect(
            f"file:{quote(self.path)}?mode={mode}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=self.busy_timeout_ms / 1000,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(journal).lower() != "wal":
                raise sqlite3.OperationalError("could not enable WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The writer connection, (re)opened if needed and still naming ``self.path``."""
        if self._conn is not None:
            st = os.stat(self.path)  # raises if the file or its directory vanished
            if (st.st_dev, st.st_ino) != self._identity:
                logger.warning(
                    "audit store file was replaced; reconnecting (%s)", self.url_for_display
                )
                self._drop_connection()
        if self._conn is None:
            conn = self._connect(create=False)
            try:
                version = _schema_version(conn)
                if version != SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {version}, expected {SCHEMA_VERSION}"
                    )
                st = os.stat(self.path)
            except BaseException:
                conn.close()
                raise
            self._conn, self._identity = conn, (st.st_dev, st.st_ino)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn, self._identity = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _migrate(self) -> None:
        # The log holds personal data: owner-only from the first byte. SQLite gives the
        # -wal and -shm files the main file's permissions.
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise AuditUnavailableError(
                f"disclosure store directory {directory} does not exist (create it, owned by the"
                " gateway's user, mode 0700)",
                reason="audit_unavailable",
            )
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        else:
            # A new, empty log: normal on first start, a red flag on a restart (a lost or moved
            # log is otherwise indistinguishable from a fresh one). Pin the head elsewhere
            # (`audit verify` prints it; `--anchor` checks it) to detect it.
            logger.warning("audit store: created a NEW, empty disclosure log at %s (expected on a first start;"
                           " on a restart the old log is gone or moved: `samtykke-gateway audit verify --anchor`"
                           " with the head you pinned fails)", self.url_for_display)
        conn = self._connect(create=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
                )
                current = _schema_version(conn)
                if current > SCHEMA_VERSION:
                    raise AuditUnavailableError(
                        f"disclosure store schema version {current} is newer than this gateway"
                        f" ({SCHEMA_VERSION})",
                        reason="audit_schema_too_new",
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version VALUES (?, ?)",
                        (version, datetime.now(UTC).isoformat()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        finally:
            conn.close()
        self._drop_connection()
        self._connection()
        logger.info("audit store open: %s (schema %d)", self.url_for_display, SCHEMA_VERSION)

    def _purge_chunk(self, cutoff: str) -> tuple[int, bool]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            base_seq, base_hash = conn.execute("SELECT seq, hash FROM chain_checkpoint").fetchone()
            rows = conn.execute(
                f"{_SELECT_ROWS} WHERE seq > ? ORDER BY seq LIMIT ?", (base_seq, _PURGE_CHUNK_ROWS)
            ).fetchall()
            removed, done, last = purgeable_prefix(
                [_row(r) for r in rows], cutoff, base_seq, base_hash
            )
            done = done or len(rows) < _PURGE_CHUNK_ROWS
            if last is not None:
                conn.execute(
                    "DELETE FROM disclosure WHERE seq > ? AND seq <= ?", (base_seq, last[0])
                )
                conn.execute(
                    "UPDATE chain_checkpoint SET seq = ?, hash = ?, purged_at = ?,"
                    " purged_total = purged_total + ? WHERE id = 1",
                    (last[0], last[1], datetime.now(UTC).isoformat(), removed),
                )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return removed, done


def _row(values: Sequence[Any]) -> ChainRow:
    seq, prev_hash, digest, at, *cols, record = values
    return ChainRow(seq, prev_hash, digest, record, at, dict(zip(PROJECTED, cols, strict=True)))


def _single(conn: sqlite3.Connection, table: str) -> tuple[int, str]:
    row = conn.execute(f"SELECT seq, hash FROM {table} WHERE id = 1").fetchone()
    if row is None:
        raise sqlite3.DatabaseError(f"{table} row missing")
    return int(row[0]), str(row[1])


def _schema_version(conn: sqlite3.Connection) -> int:
    try:
        (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(version)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _unavailable(operation: str, exc: BaseException) -> AuditUnavailableError:
    if isinstance(exc, AuditUnavailableError):
        return exc
    code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    logger.warning("audit store %s failed: %s", operation, code)
    return AuditUnavailableError(f"disclosure store {operation} failed ({code})")


def _settle_all(jobs: list[_Job]) -> None:
    """Resolve every job of a committed batch: one wake-up per event loop, not per job
    (each ``call_soon_threadsafe`` writes the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[Any]]] = {}
    for job in jobs:
        by_loop.setdefault(job.loop, []).append(job.future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed; nobody waits
            loop.call_soon_threadsafe(_resolve_all, futures)


def _resolve_all(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():  # cancelled while waiting
            future.set_result(None)


def _settle(job: _Job, error: BaseException | None, result: Any = None) -> None:
    def resolve() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed; nobody waits
        job.loop.call_soon_threadsafe(resolve)
