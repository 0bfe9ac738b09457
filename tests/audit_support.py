"""Shared helpers for the audit tests: record builder, PostgreSQL URL, raw tampering.

PostgreSQL tests read ``SAMTYKKE_TEST_POSTGRES_URL``; without it they skip, unless
``SAMTYKKE_REQUIRE_SERVICES=1`` makes them fail. Each test gets its own schema (dropped after).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from samtykke_gateway.audit import DisclosureRecord, DisclosureStore
from samtykke_gateway.audit.chain import ChainRow, chain_hash, prepare
from samtykke_gateway.audit.memory import MemoryStore

PERSON = "01817899701"  # synthetic (Tenor-style) person
OTHER = "24917698573"
BANK = "310000001"
VENDOR = "310000002"


def make_record(i: int = 0, **overrides: Any) -> DisclosureRecord:
    fields: dict[str, Any] = {
        "time": f"2026-11-29T09:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1_000_000:06d}Z",
        "correlation_id": f"corr-{i}",
        "decision": "allow",
        "reason": "ok",
        "status": 200,
        "method": "GET",
        "path": f"/api/inntekt/{PERSON}",
        "route": "inntekt",
        "token_kind": "altinn3",
        "consent_id": f"00000000-0000-4000-8000-{i:012d}",
        "jti": f"jti-{i}",
        "issuer": "https://test.maskinporten.no/",
        "key_id": "kid-1",
        "subject": PERSON,
        "consumer": BANK,
        "supplier": VENDOR,
        "client_id": "client-1",
        "resource": "ske-inntekt",
        "metadata": {"inntektsaar": ["2024"]},
        "requested_params": {"fraOgMed": ["2024-01"]},
        "effective_params": {"fraOgMed": ["2024-01"]},
        "upstream_status": 200,
        "released_paths": ["arbeidsinntektMaaned[].inntekt[].beloep"],
        "released_bytes": 123,
        "released_sha256": "ab" * 32,
    }
    fields.update(overrides)
    return DisclosureRecord(**fields)


def postgres_url() -> str:
    """The test server URL, or skip (fail under ``SAMTYKKE_REQUIRE_SERVICES=1``)."""
    url = os.environ.get("SAMTYKKE_TEST_POSTGRES_URL")
    if not url:
        reason = "SAMTYKKE_TEST_POSTGRES_URL is not set (PostgreSQL tests need a server)"
        if os.environ.get("SAMTYKKE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and SAMTYKKE_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return url


def with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def unique_schema() -> str:
    return f"t_audit_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(base URL, fresh schema name); the schema is dropped afterwards."""
    url = postgres_url()
    schema = unique_schema()
    yield url, schema
    drop_schema(url, schema)


# -- raw tampering, the way an attacker with database access would do it --------------------


class SqlTamper:
    """Tamper with a SQL store's table directly (``?`` placeholders, translated for psycopg)."""

    def __init__(self, kind: str, target: str, schema: str | None = None) -> None:
        self.kind, self.target, self.schema = kind, target, schema

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        out: list[Any] = []
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    out.append(conn.execute(sql, params).fetchall())
                conn.execute("COMMIT")
            finally:
                conn.close()
            return out
        import psycopg

        with psycopg.connect(self.target) as pg:
            pg.execute(f'SET search_path TO "{self.schema}"')
            for sql, params in statements:
                cur = pg.execute(sql.replace("?", "%s"), params)
                out.append(cur.fetchall() if cur.description else [])
        return out

    def row(self, seq: int) -> tuple[str, str]:
        (rows,) = self._run([("SELECT record, hash FROM disclosure WHERE seq = ?", (seq,))])
        return rows[0][0], rows[0][1]

    def edit(self, seq: int) -> None:
        record, _ = self.row(seq)
        edited = record.replace(f'"consumer":"{BANK}"', '"consumer":"310000099"')
        assert edited != record
        self._run([("UPDATE disclosure SET record = ? WHERE seq = ?", (edited, seq))])

    def edit_column(self, seq: int) -> None:
        self._run([("UPDATE disclosure SET subject = ? WHERE seq = ?", (OTHER, seq))])

    def corrupt(self, seq: int) -> None:
        self._run([("UPDATE disclosure SET record = ? WHERE seq = ?", ('{"time": ', seq))])

    def delete(self, seq: int) -> None:
        self._run([("DELETE FROM disclosure WHERE seq = ?", (seq,))])

    def swap(self, a: int, b: int) -> None:
        self._run(
            [
                ("UPDATE disclosure SET seq = -1 WHERE seq = ?", (a,)),
                ("UPDATE disclosure SET seq = ? WHERE seq = ?", (a, b)),
                ("UPDATE disclosure SET seq = ? WHERE seq = -1", (b,)),
            ]
        )

    def insert_forged(self, after: int) -> None:
        """Shift later rows up by one and insert a correctly hashed fake at ``after + 1``."""
        _, prev_hash = self.row(after)
        fake = prepare(make_record(999, subject=OTHER, consumer="310000666"))
        seq = after + 1
        digest = chain_hash(fake.record_obj, seq=seq, prev_hash=prev_hash)
        self._run(
            [
                ("UPDATE disclosure SET seq = -seq WHERE seq > ?", (after,)),
                ("UPDATE disclosure SET seq = -seq + 1 WHERE seq < 0", ()),
                (
                    _INSERT_FAKE,
                    (
                        seq,
                        prev_hash,
                        digest,
                        _at(fake.at, self.kind),
                        fake.columns["subject"],
                        fake.columns["consumer"],
                        fake.columns["supplier"],
                        fake.columns["consent_id"],
                        fake.columns["decision"],
                        fake.record_json,
                    ),
                ),
            ]
        )


_INSERT_FAKE = (
    "INSERT INTO disclosure (seq, prev_hash, hash, at, subject, consumer, supplier,"
    " consent_id, decision, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _at(at: str, kind: str) -> Any:
    if kind == "sqlite":
        return at
    from datetime import datetime

    return datetime.fromisoformat(at)


class MemoryTamper:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def _index(self, seq: int) -> int:
        return next(i for i, r in enumerate(self.store.rows) if r.seq == seq)

    def edit(self, seq: int) -> None:
        i = self._index(seq)
        row = self.store.rows[i]
        self.store.rows[i] = replace(row, record_json=row.record_json.replace(BANK, "310000099", 1))

    def corrupt(self, seq: int) -> None:
        i = self._index(seq)
        self.store.rows[i] = replace(self.store.rows[i], record_json='{"time": ')

    def edit_column(self, seq: int) -> None:
        i = self._index(seq)
        row = self.store.rows[i]
        self.store.rows[i] = replace(row, columns={**row.columns, "subject": OTHER})

    def delete(self, seq: int) -> None:
        del self.store.rows[self._index(seq)]

    def swap(self, a: int, b: int) -> None:
        i, j = self._index(a), self._index(b)
        rows = self.store.rows
        rows[i], rows[j] = replace(rows[j], seq=a), replace(rows[i], seq=b)

    def insert_forged(self, after: int) -> None:
        i = self._index(after)
        prev = self.store.rows[i]
        fake = prepare(make_record(999, subject=OTHER, consumer="310000666"))
        seq = after + 1
        digest = chain_hash(fake.record_obj, seq=seq, prev_hash=prev.hash)
        rows = self.store.rows
        rows[i + 1 :] = [replace(r, seq=r.seq + 1) for r in rows[i + 1 :]]
        rows.insert(
            i + 1,
            ChainRow(seq, prev.hash, digest, fake.record_json, fake.at, fake.columns),
        )


def tamper_for(store: DisclosureStore, kind: str, schema: str | None = None) -> Any:
    if kind == "memory":
        assert isinstance(store, MemoryStore)
        return MemoryTamper(store)
    if kind == "sqlite":
        return SqlTamper("sqlite", store.path)  # type: ignore[attr-defined]
    url = postgres_url()
    return SqlTamper("postgres", url, schema)


def record_json(record: DisclosureRecord) -> dict[str, Any]:
    return json.loads(prepare(record).record_json)  # type: ignore[no-any-return]
