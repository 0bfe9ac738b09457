"""Properties of the chain: any single tampering is found at the right seq with the right name;
any record (hostile text included) round-trips and verifies in every store."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audit_support import MemoryTamper, make_record

from samtykke_gateway.audit import VerifyResult, open_store
from samtykke_gateway.audit.chain import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    chain_hash_text,
    normalise_time,
    prepare,
    project_column,
)
from samtykke_gateway.audit.memory import MemoryStore


def _filled(n: int) -> MemoryStore:
    store = MemoryStore()

    async def fill() -> None:
        await store.open()
        for i in range(n):
            await store.append(make_record(i))

    asyncio.run(fill())
    return store


def _verify(store: MemoryStore) -> VerifyResult:
    return asyncio.run(store.verify())


def test_hash_is_sha256_of_sorted_compact_ascii_json() -> None:
    record = prepare(make_record(0, path="/api/ærlig/\u0000"))
    body = (
        '{"prev_hash":"' + GENESIS_HASH + '","record":' + record.record_json + ',"seq":1}'
    ).encode("ascii")
    assert chain_hash(record.record_obj, seq=1, prev_hash=GENESIS_HASH) == (
        hashlib.sha256(body).hexdigest()
    )
    assert "\\u00e6rlig/\\u0000" in record.record_json
    assert list(json.loads(record.record_json)) == sorted(json.loads(record.record_json))
    assert canonical_json({"b": [1, {"d": 1, "c": 2}], "a": None}) == (
        '{"a":null,"b":[1,{"c":2,"d":1}]}'
    )


def test_prepared_text_is_the_canonical_form_of_to_dict() -> None:
    record = make_record(3, metadata={"b": ["2", "1"], "a": []}, detail="ø\u0000")
    prepared = prepare(record)
    assert prepared.record_json == canonical_json(record.to_dict())
    assert chain_hash_text(prepared.record_json, seq=7, prev_hash="f" * 64) == chain_hash(
        record.to_dict(), seq=7, prev_hash="f" * 64
    )


def test_time_normalisation() -> None:
    assert normalise_time("2026-11-29T09:04:19Z") == "2026-11-29T09:04:19.000000Z"
    assert normalise_time("2026-11-29T10:04:19.5+01:00") == "2026-11-29T09:04:19.500000Z"
    assert normalise_time("2026-11-29") == "2026-11-29T00:00:00.000000Z"
    with pytest.raises(ValueError):
        normalise_time("29.11.2026")


def test_projected_columns_survive_hostile_text() -> None:
    assert project_column("a\x00b") == "a\\x00b"
    assert project_column("\udc80") == "\\udc80"
    assert project_column(12) == "12"
    assert project_column(None) is None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_any_edit_is_found_at_its_seq(n: int, data: st.DataObject) -> None:
    store = _filled(n)
    seq = data.draw(st.integers(1, n))
    MemoryTamper(store).edit(seq)
    result = _verify(store)
    assert (result.ok, result.first_broken_seq) == (False, seq)
    assert result.problem is not None and result.problem.startswith("edited")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_any_deletion_is_found_at_its_seq(n: int, data: st.DataObject) -> None:
    store = _filled(n)
    seq = data.draw(st.integers(1, n))
    MemoryTamper(store).delete(seq)
    result = _verify(store)
    assert (result.ok, result.first_broken_seq) == (False, seq)
    assert result.problem is not None and result.problem.startswith("deleted")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_any_insertion_is_found_at_its_seq(n: int, data: st.DataObject) -> None:
    store = _filled(n)
    after = data.draw(st.integers(1, n))
    MemoryTamper(store).insert_forged(after)
    result = _verify(store)
    assert (result.ok, result.first_broken_seq) == (False, after + 1)
    assert result.problem is not None and result.problem.startswith("inserted")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_any_swap_is_found_at_the_earlier_seq(n: int, data: st.DataObject) -> None:
    store = _filled(n)
    a = data.draw(st.integers(1, n - 1))
    b = data.draw(st.integers(a + 1, n))
    MemoryTamper(store).swap(a, b)
    result = _verify(store)
    assert (result.ok, result.first_broken_seq) == (False, a)
    assert result.problem is not None and result.problem.startswith("reordered")


def test_deletion_with_renumbering_is_still_a_deletion() -> None:
    store = _filled(8)
    tamper = MemoryTamper(store)
    tamper.delete(3)
    store.rows[2:] = [dataclasses.replace(row, seq=row.seq - 1) for row in store.rows[2:]]
    result = _verify(store)
    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.problem is not None and result.problem.startswith("deleted: 1 record(s)")


hostile = st.text(
    st.characters(codec="utf-8", exclude_categories=()), max_size=20
) | st.sampled_from(["\x00", "\udc80", "'; DROP TABLE disclosure; --", "ø" * 3, "\u202e"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=hostile, path=hostile, meta=st.dictionaries(hostile, st.lists(hostile, max_size=2)))
def test_hostile_text_round_trips_and_verifies(
    subject: str, path: str, meta: dict[str, list[str]]
) -> None:
    record = make_record(1, subject=subject, path=path, metadata=meta, detail=subject)

    async def run(url: str) -> None:
        store = open_store(url)
        await store.open()
        try:
            await store.append(record)
            assert (await store.verify()).ok
            assert await store.export(subject=subject) == [record]
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        for url in ("memory://", f"sqlite:///{tmp}/a.db"):
            asyncio.run(run(url))
