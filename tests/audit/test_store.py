"""Contract tests every disclosure store passes: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.audit_support import (
    OTHER,
    PERSON,
    drop_schema,
    make_record,
    postgres_url,
    tamper_for,
    unique_schema,
    with_query,
)

from samtykke_gateway import audit
from samtykke_gateway.audit import DisclosureStore, VerifyResult, open_store
from samtykke_gateway.audit.chain import GENESIS_HASH, chain_hash, prepare
from samtykke_gateway.exceptions import AuditUnavailableError

pytestmark = pytest.mark.anyio

KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=KINDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str, str | None]]:
    """(kind, url, postgres schema)."""
    yield from _store_url(request.param, tmp_path)


@pytest.fixture(params=[k for k in KINDS if k != "memory"])
def durable_store_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str, str | None]]:
    """(kind, url, postgres schema) of the stores that persist across reopening."""
    yield from _store_url(request.param, tmp_path)


def _store_url(kind: str, tmp_path: Path) -> Iterator[tuple[str, str, str | None]]:
    if kind == "memory":
        yield kind, "memory://", None
    elif kind == "sqlite":
        yield kind, f"sqlite:///{tmp_path}/audit.db", None
    else:
        url, schema = postgres_url(), unique_schema()
        yield kind, with_query(url, schema=schema), schema
        drop_schema(url, schema)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[DisclosureStore]:
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def fill(store: DisclosureStore, n: int, **overrides: Any) -> None:
    for i in range(n):
        await store.append(make_record(i, **overrides))


def test_exported_names_are_sorted_and_complete() -> None:
    assert audit.__all__ == sorted(audit.__all__, key=lambda n: (not n.isupper(), n))  # constants first (ruff RUF022)
    assert set(audit.__all__) == {
        "STORE_SCHEMES",
        "DisclosureRecord",
        "DisclosureStore",
        "VerifyResult",
        "open_store",
        "resolve_store_url",
        "store_scheme",
    }


def test_relative_sqlite_path_resolves_against_the_config_directory(tmp_path: Path) -> None:
    assert audit.resolve_store_url("sqlite:///sub/logs.db", tmp_path) == f"sqlite:///{tmp_path}/sub/logs.db"
    assert audit.resolve_store_url("sqlite:////abs/logs.db", tmp_path) == "sqlite:////abs/logs.db"
    assert audit.resolve_store_url("sqlite:///x.db?max_batch=8", tmp_path) == f"sqlite:///{tmp_path}/x.db?max_batch=8"
    assert audit.resolve_store_url("postgresql://h/db", tmp_path) == "postgresql://h/db"
    for bad in ("sqlite:///", "sqlite://x.db", "mysql://x", "/var/lib/audit.db"):
        with pytest.raises(ValueError):
            audit.resolve_store_url(bad, tmp_path)


def test_every_store_scheme_has_a_store() -> None:
    durable = {scheme for scheme, keeps in audit.STORE_SCHEMES.items() if keeps}
    assert durable == {"sqlite", "postgresql", "postgres"}
    for scheme in audit.STORE_SCHEMES:
        assert audit.store_scheme(f"{scheme.upper()}://x/y.db") == scheme
        assert isinstance(open_store(f"{scheme}:///x.db"), DisclosureStore)  # not opened: no file


def test_unknown_scheme_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown audit store scheme 'mysql'"):
        open_store("mysql://x/y")
    with pytest.raises(ValueError, match="no scheme"):
        open_store("/var/lib/audit.db")
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("sqlite://host/x.db")
    with pytest.raises(ValueError, match="unknown sqlite store option"):
        open_store("sqlite:///x.db?fsync=no")
    with pytest.raises(ValueError, match="memory://"):
        open_store("sqlite:///:memory:")


def test_sqlite_url_forms(tmp_path: Path) -> None:
    absolute = open_store(f"sqlite:///{tmp_path}/a.db")
    assert absolute.url_for_display == f"sqlite:///{tmp_path}/a.db"
    relative = open_store("sqlite:///rel/a.db?synchronous=normal&max_batch=1")
    assert relative.path == str(Path("rel/a.db").resolve())  # type: ignore[attr-defined]
    assert relative.synchronous == "NORMAL"  # type: ignore[attr-defined]


async def test_head_seq_is_zero_until_the_first_record_and_survives_a_purge(
        store_url: tuple[str, str, str | None]) -> None:
    """The consent state's first-start witness (a Redis generation marker is created only while
    the disclosure log never held a record)."""
    _, url, _ = store_url
    async with opened(url) as store:
        assert await store.head_seq() == 0  # type: ignore[attr-defined]
        await fill(store, 3, time="2000-01-01T00:00:00.000000Z")
        assert await store.head_seq() == 3  # type: ignore[attr-defined]
        assert await store.purge(older_than_days=1) == 3
        assert await store.head_seq() == 3  # type: ignore[attr-defined]


async def test_append_then_verify_and_export(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        await fill(store, 5)
        await store.append(make_record(5, subject=OTHER, decision="deny", reason="consent_expired"))
        assert await store.verify() == VerifyResult(True, 6, None, None)
        mine = await store.export(subject=PERSON)
        assert [r.correlation_id for r in mine] == [f"corr-{i}" for i in range(5)]
        assert mine[0] == make_record(0)  # every field survives the round trip
        theirs = await store.export(subject=OTHER)
        assert [(r.decision, r.reason) for r in theirs] == [("deny", "consent_expired")]
        assert await store.export(subject="00000000000") == []
        await store.ping()


async def test_export_time_window(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        for i, t in enumerate(["2026-01-01T00:00:00Z", "2026-02-01T12:00:00+01:00", "2026-03-01"]):
            await store.append(make_record(i, time=t))
        got = await store.export(subject=PERSON, since="2026-02-01", until="2026-03-01T00:00:00Z")
        assert [r.correlation_id for r in got] == ["corr-1"]
        got = await store.export(subject=PERSON, since="2026-02-01T11:00:00Z")
        assert [r.correlation_id for r in got] == ["corr-1", "corr-2"]
        with pytest.raises(ValueError):
            await store.export(subject=PERSON, since="last tuesday")


async def test_chain_is_the_documented_sha256(store_url: tuple[str, str, str | None]) -> None:
    kind, url, schema = store_url
    async with opened(url) as store:
        await fill(store, 2)
        if kind == "memory":
            return
        tamper = tamper_for(store, kind, schema)
        text1, hash1 = tamper.row(1)
        text2, hash2 = tamper.row(2)
    assert text1 == prepare(make_record(0)).record_json
    assert hash1 == chain_hash(json.loads(text1), seq=1, prev_hash=GENESIS_HASH)
    assert hash2 == chain_hash(json.loads(text2), seq=2, prev_hash=hash1)


async def test_concurrent_appends_keep_one_chain(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        await asyncio.gather(*(store.append(make_record(i)) for i in range(200)))
        result = await store.verify()
        assert result.ok and result.checked == 200
        assert len(await store.export(subject=PERSON)) == 200


async def test_purge_leaves_a_verifiable_checkpoint(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        for i in range(4):
            await store.append(make_record(i, time=f"2020-01-0{i + 1}T00:00:00Z"))
        await store.append(make_record(4, time="2100-01-01T00:00:00Z"))  # blocks the rest
        await store.append(make_record(5, time="2020-01-09T00:00:00Z"))  # old, but behind new
        assert await store.purge(older_than_days=30) == 4
        assert await store.purge(older_than_days=30) == 0
        result = await store.verify()
        assert result.ok and result.checked == 2, result
        await store.append(make_record(6))
        assert (await store.verify()).ok
        assert [r.correlation_id for r in await store.export(subject=PERSON)] == [
            "corr-5",
            "corr-6",
            "corr-4",
        ]
        with pytest.raises(ValueError):
            await store.purge(older_than_days=-1)


async def test_purge_everything_then_continue(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        await fill(store, 3, time="2020-01-01T00:00:00Z")
        assert await store.purge(older_than_days=0) == 3
        assert await store.verify() == VerifyResult(True, 0, None, None)
        await store.append(make_record(9))
        assert await store.verify() == VerifyResult(True, 1, None, None)


async def test_reopen_continues_the_chain(durable_store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = durable_store_url
    async with opened(url) as store:
        await fill(store, 3)
    async with opened(url) as store:
        await store.append(make_record(3))
        assert await store.verify() == VerifyResult(True, 4, None, None)


async def test_invalid_record_is_audit_unavailable(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        with pytest.raises(AuditUnavailableError) as info:
            await store.append(make_record(0, time="yesterday"))
        assert info.value.reason == "audit_record_invalid"
        with pytest.raises(AuditUnavailableError):
            await store.append(make_record(0, metadata={"x": {1, 2}}))
        assert (await store.verify()).checked == 0


async def test_closed_store_refuses(store_url: tuple[str, str, str | None]) -> None:
    _, url, _ = store_url
    store = open_store(url)
    with pytest.raises(AuditUnavailableError):
        await store.append(make_record(0))
    await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(AuditUnavailableError):
        await store.append(make_record(0))
    with pytest.raises(AuditUnavailableError):
        await store.ping()


async def test_corrupt_row_is_reported_not_leaked(store_url: tuple[str, str, str | None]) -> None:
    kind, url, schema = store_url
    async with opened(url) as store:
        await fill(store, 3)
        tamper_for(store, kind, schema).corrupt(2)
        result = await store.verify()
        assert (result.ok, result.first_broken_seq) == (False, 2)
        assert result.problem is not None and result.problem.startswith("edited")
        with pytest.raises(AuditUnavailableError) as info:
            await store.export(subject=PERSON)
        assert info.value.reason == "audit_record_corrupt"


async def test_failed_open_leaves_the_store_closed_and_can_be_retried(tmp_path: Path) -> None:
    blocker = tmp_path / "dir"
    blocker.write_text("a file where the directory should be")
    store = open_store(f"sqlite:///{blocker}/audit.db")
    with pytest.raises(AuditUnavailableError):
        await store.open()
    with pytest.raises(AuditUnavailableError, match="not open"):
        await store.append(make_record(0))
    blocker.unlink()
    blocker.mkdir()
    await store.open()
    try:
        await store.append(make_record(0))
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_no_personal_data_in_logs(
    store_url: tuple[str, str, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, url, _ = store_url
    async with opened(url) as store:
        await fill(store, 3)
        await store.verify()
        await store.export(subject=PERSON)
        await store.purge(older_than_days=0)
        with pytest.raises(AuditUnavailableError):
            await store.append(make_record(0, time="not a time"))
    text = caplog.text
    for secret in (PERSON, make_record(0).consent_id or "", make_record(0).jti or ""):
        assert secret not in text


async def test_read_records_pages_in_chain_order_with_period_and_subject(
    store_url: tuple[str, str, str | None],
) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        for i in range(7):
            subject = OTHER if i == 3 else PERSON
            await store.append(make_record(i, time=f"2026-11-0{i + 1}T08:00:00Z", subject=subject))
        seen: list[int] = []
        after = 0
        while True:  # pages of 2: the next page starts after the last seq handed back
            page = await store.read_records(
                since="2026-11-02", until="2026-11-07", subject=PERSON, after_seq=after, limit=2
            )
            assert len(page) <= 2
            seen += [seq for seq, _ in page]
            if len(page) < 2:
                break
            after = page[-1][0]
        assert seen == [2, 3, 5, 6]  # Nov 2..6 without record 4 (OTHER); until is exclusive
        everyone = await store.read_records(since="2026-11-01", until="2026-12-01")
        assert [seq for seq, _ in everyone] == [1, 2, 3, 4, 5, 6, 7]
        assert everyone[3][1].subject == OTHER and everyone[0][1].correlation_id == "corr-0"


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 10_001}, {"after_seq": -1}, {"since": "soon"}])
async def test_read_records_refuses_bad_arguments(
    store_url: tuple[str, str, str | None], bad: dict[str, Any]
) -> None:
    _, url, _ = store_url
    async with opened(url) as store:
        with pytest.raises(ValueError):
            await store.read_records(**bad)
