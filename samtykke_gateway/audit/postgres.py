"""PostgreSQL disclosure store: several gateway replicas, one verifiable chain.

Chain extension for concurrent writers: every append transaction starts with
``SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE``. The row lock serialises chain
extension across connections, processes and hosts; the transaction inserts its records with
``seq + 1 ...``, each ``prev_hash`` the hash before it, moves ``chain_head`` and commits, which
releases the lock. A rolled-back transaction moves nothing, so ``seq`` stays gap-free. Inside
one process a single writer task batches queued appends into one such transaction (group
commit): one lock round and one WAL flush for the batch; each ``append`` resumes only after
the commit holding its record. ``synchronous_commit`` is forced ``on`` per session (a
server default of ``off`` would release responses before the WAL reaches disk);
``lock_timeout`` bounds the wait behind a stuck replica.

Availability: pool connect/acquire is bounded by ``connect_timeout`` (default 2 s), a whole
write by ``write_timeout`` (5 s); every failure is :class:`AuditUnavailableError`. When the
server or network fails, queued appends fail with the batch (no queue of 2 s waits), and the
pool reconnects in the background and on demand - no restart needed.

Schema: tables live in their own schema (default ``samtykke_audit``), created and migrated by
:meth:`PostgresStore.open` under a transaction-level advisory lock, versioned in
``schema_version``.

URL: ``postgresql://user:pw@host:5432/db?schema=samtykke_audit&connect_timeout=2&max_batch=256
&pool_max_size=4&write_timeout=5`` - other query parameters are passed to libpq. The append
path is bound to the event loop that called :meth:`open`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "postgresql:// audit stores need psycopg: pip install 'samtykke-gateway[postgres]'"
    ) from exc

from samtykke_gateway.config_text import url_without_password
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

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1

#: version -> statements bringing the schema from version - 1 to version
#: (run with ``search_path`` set to the store's schema).
MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE disclosure (
            seq bigint PRIMARY KEY,
            prev_hash text NOT NULL,
            hash text NOT NULL,
            at timestamptz NOT NULL,
            subject text,
            consumer text,
            supplier text,
            consent_id text,
            decision text,
            record text NOT NULL
        )""",
        "CREATE INDEX disclosure_subject_at ON disclosure (subject, at)",
        """CREATE TABLE chain_head (
            id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL
        )""",
        """CREATE TABLE chain_checkpoint (
            id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL,
            purged_at timestamptz, purged_total bigint NOT NULL DEFAULT 0
        )""",
        f"INSERT INTO chain_head VALUES (1, 0, '{GENESIS_HASH}')",
        f"INSERT INTO chain_checkpoint VALUES (1, 0, '{GENESIS_HASH}', NULL, 0)",
    ),
}

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_COLUMNS = ("seq", "prev_hash", "hash", "at", *PROJECTED, "record")
_TYPES = ("bigint", "text", "text", "timestamptz", *("text" for _ in PROJECTED), "text")
#: One statement per batch: insert every row (unnest of per-column arrays), move the head.
_APPEND = (
    f"WITH rows AS (INSERT INTO disclosure ({', '.join(_COLUMNS)})"
    f" SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in _TYPES)}))"
    " UPDATE chain_head SET seq = %s, hash = %s WHERE id = 1"
)
_SELECT_ROWS = f"SELECT {', '.join(_COLUMNS)} FROM disclosure"
_MIGRATION_LOCK = 0x5A4D_5447  # advisory lock class for schema migrations
_PURGE_CHUNK_ROWS = 5_000


@dataclass(slots=True)
class _Job:
    record: PreparedRecord
    future: asyncio.Future[None]


class PostgresStore:
    """Disclosure store in PostgreSQL (psycopg 3, ``AsyncConnectionPool``).

    :param conninfo: libpq URL or key/value string (may contain a password; never logged).
    :param display_url: what ``url_for_display`` shows (defaults to ``conninfo`` sans password).
    :param schema: PostgreSQL schema holding the tables (lower-case identifier).
    :param connect_timeout_seconds: bound on connecting / acquiring a pooled connection.
    :param write_timeout_seconds: bound on one append transaction (including the lock wait).
    :param max_batch: most appends committed in one transaction (1 disables group commit).
    :param pool_max_size: connections per process (writes use one at a time).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        display_url: str | None = None,
        schema: str = "samtykke_audit",
        connect_timeout_seconds: float = 2.0,
        write_timeout_seconds: float = 5.0,
        max_batch: int = 256,
        pool_max_size: int = 4,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError("schema must be a lower-case SQL identifier ([a-z_][a-z0-9_]*)")
        if not (connect_timeout_seconds > 0 and write_timeout_seconds > 0):
            raise ValueError("timeouts must be > 0")
        if max_batch < 1 or pool_max_size < 1:
            raise ValueError("max_batch and pool_max_size must be >= 1")
        self.url_for_display = display_url or url_without_password(conninfo)
        self.schema = schema
        self.connect_timeout_seconds = connect_timeout_seconds
        self.write_timeout_seconds = write_timeout_seconds
        self.max_batch = max_batch
        self.pool_max_size = pool_max_size
        self._conninfo = conninfo
        self._pool: AsyncConnectionPool | None = None
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Build from ``postgresql://`` / ``postgres://`` (our options come out of the query).

        :raises ValueError: bad option value.
        """
        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        rest: list[tuple[str, str]] = []
        convert: dict[str, tuple[str, Callable[[str], Any]]] = {
            "schema": ("schema", str),
            "connect_timeout": ("connect_timeout_seconds", float),
            "write_timeout": ("write_timeout_seconds", float),
            "max_batch": ("max_batch", int),
            "pool_max_size": ("pool_max_size", int),
        }
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in convert:
                name, kind = convert[key]
                try:
                    ours[name] = kind(value)
                except ValueError:
                    raise ValueError(f"postgres store option {key!r} has a bad value") from None
            else:
                rest.append((key, value))
        conninfo = parts._replace(scheme="postgresql", query=urlencode(rest)).geturl()
        return cls(conninfo, display_url=url_without_password(url), **ours)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self._conninfo,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(2, math.ceil(self.connect_timeout_seconds)),
            },
            min_size=1,
            max_size=self.pool_max_size,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            timeout=self.connect_timeout_seconds,
            reconnect_timeout=max(5.0, 2 * self.connect_timeout_seconds),
            name="samtykke-audit",
        )
        try:
            async with asyncio.timeout(self.connect_timeout_seconds + 1):
                await pool.open(wait=True, timeout=self.connect_timeout_seconds)
            self._pool = pool
            await self._migrate()
        except Exception as exc:  # noqa: BLE001 - translated at this one boundary
            self._pool = None
            await pool.close(timeout=1.0)
            raise _unavailable("open", exc) from None
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="samtykke-audit-writer")
        logger.info("audit store open: %s (schema %d)", self.url_for_display, SCHEMA_VERSION)

    async def close(self) -> None:
        writer, queue, pool = self._writer, self._queue, self._pool
        self._writer = self._queue = self._pool = None
        if writer is not None and queue is not None:
            queue.put_nowait(None)
            await writer
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("SELECT seq FROM chain_head")

        await self._with_connection("ping", check, limit_seconds=self.connect_timeout_seconds + 1)

    async def head_seq(self) -> int:
        """seq of the chain head: 0 for a log that never held a record (a purge keeps it)."""
        async def read(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT seq FROM chain_head WHERE id = 1")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._with_connection("head", read, limit_seconds=self.connect_timeout_seconds + 1)

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Session settings, once per pooled connection (nothing here ever changes them)."""
        # Below the write timeout, so a lock wait ends as a clean SQL error (connection kept)
        # rather than a cancelled query.
        lock_ms = int(self.write_timeout_seconds * 800)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        # Durable on COMMIT even where the server default is synchronous_commit = off.
        await conn.execute("SET synchronous_commit = on")
        # A replica stuck holding the chain head must not stall the others for long.
        await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms")))

    async def _migrate(self) -> None:
        async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MIGRATION_LOCK, self.schema)
                )
                schema = sql.Identifier(self.schema)
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                row = await cur.fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise AuditUnavailableError(
                        f"disclosure store schema version {current} is newer than this gateway"
                        f" ({SCHEMA_VERSION})",
                        reason="audit_schema_too_new",
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version]:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_version (version) VALUES (%s)", (version,)
                    )

        await self._with_connection("open", migrate, limit_seconds=30.0)

    # -- writes --------------------------------------------------------------------------------

    async def append(self, record: DisclosureRecord) -> None:
        prepared = prepare(record)
        queue, writer = self._queue, self._writer
        if queue is None or writer is None or writer.done():
            raise AuditUnavailableError("disclosure store is not open")
        job = _Job(prepared, asyncio.get_running_loop().create_future())
        queue.put_nowait(job)
        await job.future

    async def _write_loop(self) -> None:
        queue = self._queue
        while queue is not None:
            first = await queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._write_batch(batch)
            if stop:
                return

    async def _write_batch(self, batch: list[_Job]) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            # Round trips: BEGIN, lock the head, one insert-and-move-head statement, COMMIT.
            async with conn.transaction():
                cur = await conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
                seq, prev = _pair(await cur.fetchone(), "chain_head")
                columns: list[list[Any]] = [[] for _ in _COLUMNS]
                for job in batch:
                    rec = job.record
                    seq += 1
                    digest = chain_hash_text(rec.record_json, seq=seq, prev_hash=prev)
                    values = (
                        seq,
                        prev,
                        digest,
                        datetime.fromisoformat(rec.at),
                        *(rec.columns[k] for k in PROJECTED),
                        rec.record_json,
                    )
                    for column, value in zip(columns, values, strict=True):
                        column.append(value)
                    prev = digest
                await conn.execute(_APPEND, (*columns, seq, prev))

        try:
            await self._with_connection("append", write, limit_seconds=self.write_timeout_seconds)
        except AuditUnavailableError as error:
            failed = [*batch, *self._drain()]
            for job in failed:
                if not job.future.done():
                    job.future.set_exception(
                        AuditUnavailableError(error.detail, reason=error.reason)
                    )
            return
        for job in batch:
            if not job.future.done():
                job.future.set_result(None)

    def _drain(self) -> list[_Job]:
        """Take every queued append (they would only wait for the same outage)."""
        queue, jobs = self._queue, []
        while queue is not None and not queue.empty():
            job = queue.get_nowait()
            if job is None:  # keep the stop marker for the loop
                queue.put_nowait(None)
                break
            jobs.append(job)
        return jobs

    async def purge(self, *, older_than_days: float) -> int:
        cutoff = purge_cutoff(older_than_days)

        async def chunk(conn: psycopg.AsyncConnection[Any]) -> tuple[int, bool]:
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT seq, hash FROM chain_checkpoint WHERE id = 1 FOR UPDATE"
                )
                base_seq, base_hash = _pair(await cur.fetchone(), "chain_checkpoint")
                cur = await conn.execute(
                    f"{_SELECT_ROWS} WHERE seq > %s ORDER BY seq LIMIT %s",
                    (base_seq, _PURGE_CHUNK_ROWS),
                )
                rows = [_row(r) for r in await cur.fetchall()]
                removed, done, last = purgeable_prefix(rows, cutoff, base_seq, base_hash)
                if last is not None:
                    await conn.execute(
                        "DELETE FROM disclosure WHERE seq > %s AND seq <= %s", (base_seq, last[0])
                    )
                    await conn.execute(
                        "UPDATE chain_checkpoint SET seq = %s, hash = %s, purged_at = now(),"
                        " purged_total = purged_total + %s WHERE id = 1",
                        (last[0], last[1], removed),
                    )
                return removed, done or len(rows) < _PURGE_CHUNK_ROWS

        total = 0
        while True:
            removed, done = await self._with_connection("purge", chunk, limit_seconds=300.0)
            total += removed
            if done:
                return total

    # -- reads ---------------------------------------------------------------------------------

    async def verify(self, *, watch: Collection[int] = ()) -> VerifyResult:
        async def walk(conn: psycopg.AsyncConnection[Any]) -> VerifyResult:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = await conn.execute("SELECT seq, hash FROM chain_checkpoint WHERE id = 1")
                base = _pair(await cur.fetchone(), "chain_checkpoint")
                cur = await conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1")
                head = _pair(await cur.fetchone(), "chain_head")
                verifier = ChainVerifier(base_seq=base[0], base_hash=base[1], watch=watch)
                async with conn.cursor(name="samtykke_audit_verify") as rows:
                    rows.itersize = 2_000
                    await rows.execute(f"{_SELECT_ROWS} ORDER BY seq")
                    async for values in rows:
                        verifier.feed(_row(values))
                return verifier.finish(head_seq=head[0], head_hash=head[1])

        return await self._with_connection("verify", walk, limit_seconds=None)

    async def export(
        self, *, subject: str, since: str | None = None, until: str | None = None
    ) -> list[DisclosureRecord]:
        low = datetime.fromisoformat(normalise_time(since)) if since else None
        high = datetime.fromisoformat(normalise_time(until)) if until else None

        async def query(conn: psycopg.AsyncConnection[Any]) -> list[DisclosureRecord]:
            cur = await conn.execute(
                "SELECT record FROM disclosure WHERE subject = %s"
                " AND (%s::timestamptz IS NULL OR at >= %s)"
                " AND (%s::timestamptz IS NULL OR at < %s) ORDER BY at, seq",
                (project_column(subject), low, low, high, high),
            )
            return [load_record(text) for (text,) in await cur.fetchall()]

        return await self._with_connection("export", query, limit_seconds=None)

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
        low = datetime.fromisoformat(normalise_time(since)) if since else None
        high = datetime.fromisoformat(normalise_time(until)) if until else None
        key = project_column(subject)

        async def query(conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, DisclosureRecord]]:
            cur = await conn.execute(
                "SELECT seq, record FROM disclosure WHERE seq > %s"
                " AND (%s::text IS NULL OR subject = %s)"
                " AND (%s::timestamptz IS NULL OR at >= %s)"
                " AND (%s::timestamptz IS NULL OR at < %s) ORDER BY seq LIMIT %s",
                (after_seq, key, key, low, low, high, high, limit),
            )
            return [(int(seq), load_record(text)) for seq, text in await cur.fetchall()]

        return await self._with_connection("read", query, limit_seconds=None)

    # -- the one place psycopg exceptions are translated --------------------------------------

    async def _with_connection(
        self,
        operation: str,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        limit_seconds: float | None,
    ) -> T:
        pool = self._pool
        if pool is None:
            raise AuditUnavailableError("disclosure store is not open")
        try:
            async with asyncio.timeout(limit_seconds), self._connection(pool) as conn:
                return await work(conn)
        except AuditUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg, pool, OS and timeout errors alike
            raise _unavailable(operation, exc) from None

    @asynccontextmanager
    async def _connection(
        self, pool: AsyncConnectionPool
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with pool.connection(timeout=self.connect_timeout_seconds) as conn:
            yield conn


def _row(values: Sequence[Any]) -> ChainRow:
    seq, prev_hash, digest, at, *cols, record = values
    stamp = normalise_time(at.isoformat()) if isinstance(at, datetime) else None
    return ChainRow(
        int(seq), prev_hash, digest, record, stamp, dict(zip(PROJECTED, cols, strict=True))
    )


def _pair(row: Sequence[Any] | None, table: str) -> tuple[int, str]:
    """(seq, hash) of a singleton row. :raises psycopg.DataError: the row is missing."""
    if row is None:
        raise psycopg.DataError(f"{table} row missing")
    return int(row[0]), str(row[1])


def _unavailable(operation: str, exc: BaseException) -> AuditUnavailableError:
    if isinstance(exc, AuditUnavailableError):
        return exc
    # Never the message: a PostgreSQL DETAIL line can quote row values (personal data).
    code = getattr(exc, "sqlstate", None) or type(exc).__name__
    logger.warning("audit store %s failed: %s", operation, code)
    return AuditUnavailableError(f"disclosure store {operation} failed ({code})")
