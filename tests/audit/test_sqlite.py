"""SQLite specifics: durability settings, failure modes that work as root, recovery in place.

Tests run as root, so ``chmod`` cannot make the store fail (and ``chattr +i`` on the WAL's
``-shm`` file crashes SQLite with SIGBUS). The failure modes used instead: another process
holding the write lock, the database directory replaced by a plain file, the file deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.audit_support import PERSON, make_record

from samtykke_gateway.audit import VerifyResult, open_store
from samtykke_gateway.audit.sqlite import SqliteStore
from samtykke_gateway.exceptions import AuditUnavailableError

pytestmark = pytest.mark.anyio


async def _open(path: Path, **options: object) -> SqliteStore:
    store = SqliteStore(path, **options)  # type: ignore[arg-type]
    await store.open()
    return store


async def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db")
    try:
        pragmas = await store._submit(
            lambda: [
                store._connection().execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout")
            ]
        )
        assert pragmas == ["wal", 2, 2000]  # 2 = FULL
    finally:
        await store.close()


async def test_locked_database_fails_fast_and_recovers(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db", busy_timeout_ms=200)
    try:
        await store.append(make_record(0))
        other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(AuditUnavailableError, match="SQLITE_BUSY"):
            await store.append(make_record(1))
        assert time.monotonic() - started < 2.0
        other.execute("ROLLBACK")
        other.close()
        await store.append(make_record(2))
        assert await store.verify() == VerifyResult(True, 2, None, None)
    finally:
        await store.close()


async def test_waiting_for_the_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db", busy_timeout_ms=400)
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(AuditUnavailableError):
            await store.append(make_record(0))
        assert ticks >= 10
    finally:
        task.cancel()
        other.execute("ROLLBACK")
        other.close()
        await store.close()


async def test_directory_replaced_by_a_file_then_restored(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    directory.mkdir()
    store = await _open(directory / "a.db")
    try:
        await store.append(make_record(0))
        os.rename(directory, tmp_path / "audit.moved")
        directory.write_text("not a directory")
        with pytest.raises(AuditUnavailableError):
            await store.append(make_record(1))
        with pytest.raises(AuditUnavailableError):
            await store.ping()
        with pytest.raises(AuditUnavailableError):
            await store.verify()
        directory.unlink()
        os.rename(tmp_path / "audit.moved", directory)
        await store.append(make_record(2))  # same store object: no reopen
        await store.ping()
        result = await store.verify()
        assert result == VerifyResult(True, 2, None, None)
    finally:
        await store.close()


async def test_deleted_database_is_never_silently_recreated(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store = await _open(path)
    try:
        await store.append(make_record(0))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        with pytest.raises(AuditUnavailableError):
            await store.append(make_record(1))
        assert not path.exists()  # no fresh, empty chain was started behind our back
    finally:
        await store.close()


async def test_failure_logs_carry_no_personal_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = await _open(tmp_path / "a.db", busy_timeout_ms=50)
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(AuditUnavailableError) as info:
            await store.append(make_record(0))
        assert info.value.__cause__ is None and info.value.__context__ is None
        assert PERSON not in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
        await store.close()
    assert "audit store append failed: SQLITE_BUSY" in caplog.text
    assert PERSON not in caplog.text


async def test_newer_schema_refuses_to_open(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db")
    await store.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future')")
    newer = SqliteStore(tmp_path / "a.db")
    with pytest.raises(AuditUnavailableError) as info:
        await newer.open()
    assert info.value.reason == "audit_schema_too_new"
    await newer.close()


async def test_unwritable_path_at_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = open_store(f"sqlite:///{tmp_path}/file/a.db")
    with pytest.raises(AuditUnavailableError):
        await store.open()
    await store.close()


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db")
    commits = 0
    original = store._write_batch

    def counting(batch: list[Any]) -> None:
        nonlocal commits
        commits += 1
        original(batch)

    store._write_batch = counting  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(store.append(make_record(i)) for i in range(64)))
        assert commits < 64
        assert (await store.verify()).checked == 64
    finally:
        await store.close()


async def test_no_group_commit_when_max_batch_is_one(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db", max_batch=1)
    try:
        await asyncio.gather(*(store.append(make_record(i)) for i in range(20)))
        assert (await store.verify()).checked == 20
    finally:
        await store.close()


def _worker_process(url: str, worker: int, start: Any) -> None:
    async def main() -> None:
        store = open_store(url)
        await store.open()
        start.wait(30)
        try:
            await asyncio.gather(
                *(store.append(make_record(i, correlation_id=f"w{worker}-{i}")) for i in range(50))
            )
        finally:
            await store.close()

    asyncio.run(main())


def test_worker_processes_sharing_one_file_keep_one_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_worker_process, args=(url, w, start)) for w in range(4)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    async def check() -> None:
        store = open_store(url)
        await store.open()
        try:
            assert await store.verify() == VerifyResult(True, 200, None, None)
        finally:
            await store.close()

    asyncio.run(check())
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM disclosure ORDER BY seq")]
    assert seqs == list(range(1, 201))


async def test_new_log_files_are_owner_only(tmp_path: Path) -> None:
    store = await _open(tmp_path / "a.db")
    try:
        await store.append(make_record(0))
        for name in ("a.db", "a.db-wal", "a.db-shm"):
            assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    finally:
        await store.close()
