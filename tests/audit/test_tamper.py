"""Tamper evidence: verify names the first broken link after each kind of tampering.

One test per kind (edit, column edit, deletion, insertion, reordering, tail cases) and per
backend; the tampering is done the way an attacker with database access would do it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit_support import (
    drop_schema,
    make_record,
    postgres_url,
    tamper_for,
    unique_schema,
    with_query,
)

from samtykke_gateway.audit import DisclosureStore, VerifyResult, open_store

pytestmark = pytest.mark.anyio

KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
N = 10


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str | None]]:
    kind = request.param
    if kind == "memory":
        yield kind, "memory://", None
    elif kind == "sqlite":
        yield kind, f"sqlite:///{tmp_path}/audit.db", None
    else:
        url, schema = postgres_url(), unique_schema()
        yield kind, with_query(url, schema=schema), schema
        drop_schema(url, schema)


async def _tampered(target: tuple[str, str, str | None], action: str, *args: int) -> VerifyResult:
    kind, url, schema = target
    store: DisclosureStore = open_store(url)
    await store.open()
    try:
        for i in range(N):
            await store.append(make_record(i))
        assert (await store.verify()).ok
        getattr(tamper_for(store, kind, schema), action)(*args)
        result = await store.verify()
    finally:
        await store.close()
    assert not result.ok
    return result


async def test_edit(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "edit", 4)
    assert result.first_broken_seq == 4
    assert result.problem is not None and result.problem.startswith("edited"), result


async def test_edit_of_an_indexed_column(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "edit_column", 7)
    assert result.first_broken_seq == 7
    assert result.problem is not None and result.problem.startswith("edited"), result


async def test_deletion(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "delete", 5)
    assert result.first_broken_seq == 5
    assert result.problem is not None and result.problem.startswith("deleted"), result
    assert result.checked == N - 1


async def test_deletion_of_the_last_record(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "delete", N)
    assert result.first_broken_seq == N
    assert result.problem is not None and result.problem.startswith("deleted"), result


async def test_insertion(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "insert_forged", 3)
    assert result.first_broken_seq == 4
    assert result.problem is not None and result.problem.startswith("inserted"), result


async def test_reordering(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "swap", 6, 7)
    assert result.first_broken_seq == 6
    assert result.problem is not None and result.problem.startswith("reordered"), result


async def test_reordering_far_apart(target: tuple[str, str, str | None]) -> None:
    result = await _tampered(target, "swap", 2, 9)
    assert result.first_broken_seq == 2
    assert result.problem is not None and result.problem.startswith("reordered"), result
