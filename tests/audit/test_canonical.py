"""The canonical encoding stays byte-identical to the stdlib encoder every log was written with.

``canonical_json`` / ``prepare`` take orjson's output where it is provably the same bytes; these
properties pin that against the reference definitions (copied here as they were written, so a
change to the module cannot move both sides), and a log written by the previous code (rows
captured from commit ``7f774a2``) must still verify, in memory and in SQLite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from samtykke_gateway.audit.chain import (
    PROJECTED,
    ChainRow,
    canonical_json,
    chain_hash_text,
    load_record,
    normalise_time,
    prepare,
    project_column,
)
from samtykke_gateway.audit.memory import MemoryStore
from samtykke_gateway.audit.record import OMITTED_WHEN_NONE, DisclosureRecord
from samtykke_gateway.audit.sqlite import SqliteStore
from samtykke_gateway.exceptions import AuditUnavailableError
from datetime import timedelta
from samtykke_gateway.audit import chain

# -- the reference definitions (as in commit 7f774a2) ------------------------------------------


def ref_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def ref_hash(record_json: str, seq: int, prev_hash: str) -> str:
    body = f'{{"prev_hash":{ref_json(prev_hash)},"record":{record_json},"seq":{ref_json(seq)}}}'
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def ref_time(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    normalised: str = parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return normalised


def ref_column(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else ref_json(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError) as exc:
        return "error", "ValueError" if isinstance(exc, ValueError) else "TypeError"


# -- strategies ---------------------------------------------------------------------------------

# Every code point, lone surrogates included; plus the characters where encoders disagree.
TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
    st.text(st.sampled_from('\x00\x1f\x7f\x80"\\/\n\t\b\f\r é\u2028\ud800\udfff\U0001f600aZ0'),
            max_size=8),
)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64,
                                                                 -(2**63), -(2**63) - 1, 0]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


class Odd:
    pass


ODD = st.sampled_from([Odd(), datetime(2026, 1, 1), b"x", 1 + 2j, frozenset()])
SCALARS = st.one_of(st.none(), st.booleans(), INTS, TEXT, FLOATS)
KEYS = st.one_of(TEXT, TEXT, st.integers(-5, 5), st.none(), st.booleans())
JSONISH = st.recursive(
    st.one_of(SCALARS, ODD),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(KEYS, inner, max_size=4),
    ),
    max_leaves=16,
)
PARAMS = st.one_of(st.dictionaries(TEXT, st.lists(TEXT, max_size=3), max_size=3), JSONISH)
FIELD_VALUES = {
    "time": st.one_of(st.datetimes().map(lambda d: d.isoformat(timespec="microseconds") + "Z"),
                      st.datetimes().map(lambda d: d.isoformat()), TEXT),
    "metadata": PARAMS,
    "requested_params": PARAMS,
    "effective_params": PARAMS,
    "released_paths": st.one_of(st.lists(TEXT, max_size=3), JSONISH),
    "status": st.one_of(INTS, JSONISH),
    "released_bytes": st.one_of(INTS, JSONISH),
    "upstream_status": st.one_of(st.none(), INTS, JSONISH),
}


def _stored_fields(record: DisclosureRecord) -> dict[str, Any]:
    """Every field, except a field added later (``OMITTED_WHEN_NONE``) while it is ``None``."""
    obj = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return {k: v for k, v in obj.items() if not (k in OMITTED_WHEN_NONE and v is None)}


@st.composite
def records(draw: st.DrawFn) -> DisclosureRecord:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(DisclosureRecord):
        strategy = FIELD_VALUES.get(f.name, st.one_of(st.none(), TEXT, TEXT, JSONISH))
        kwargs[f.name] = draw(strategy)
    return DisclosureRecord(**kwargs)


# -- properties ---------------------------------------------------------------------------------

#: ``SAMTYKKE_HYPOTHESIS_SCALE=20`` multiplies every example count (a long one-off run).
SCALE = int(os.environ.get("SAMTYKKE_HYPOTHESIS_SCALE", "1"))


@settings(max_examples=1500 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH)
@example({"a": "\x7f"})
@example({"a": ["é"], "b": 2**64})
@example({"n": float("nan")})
@example({"f": 1e16, "g": 1e-7})
@example({1: "a", "1": "b"})
def test_canonical_json_is_the_stdlib_encoding(obj: Any) -> None:
    assert outcome(canonical_json, obj) == outcome(ref_json, obj)


@settings(max_examples=800 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(TEXT, st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                                       st.dictionaries(TEXT, st.lists(TEXT, max_size=3), max_size=3)),
                       max_size=8))
def test_canonical_json_of_record_shaped_objects(obj: dict[str, Any]) -> None:
    assert outcome(canonical_json, obj) == outcome(ref_json, obj)


@settings(max_examples=250 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_prepare_matches_the_reference(record: DisclosureRecord) -> None:
    obj = _stored_fields(record)
    try:
        want = (ref_json(obj), ref_time(record.time), {k: ref_column(obj.get(k)) for k in PROJECTED})
    except (TypeError, ValueError, AttributeError):
        with pytest.raises(AuditUnavailableError):
            prepare(record)
        return
    got = prepare(record)
    assert (got.record_json, got.at, got.columns) == want


@settings(max_examples=600 * SCALE, deadline=None)
@given(st.one_of(st.text(st.sampled_from("0123456789abcdef"), min_size=64, max_size=64), TEXT),
       st.one_of(st.integers(0, 2**64), INTS))
def test_chain_hash_matches_the_reference(prev_hash: str, seq: int) -> None:
    record_json = '{"a":1}'
    assert outcome(lambda: chain_hash_text(record_json, seq=seq, prev_hash=prev_hash)) == outcome(
        lambda: ref_hash(record_json, seq, prev_hash))


@settings(max_examples=1500 * SCALE, deadline=None)
@given(st.one_of(
    st.datetimes().map(lambda d: d.isoformat(timespec="microseconds") + "Z"),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z"),
    TEXT,
))
@example("2026-02-30T10:00:00.000000Z")
@example("2026-02-28T24:00:00.000000Z")
@example("2026-12-31T23:59:60.000000Z")
@example("0999-01-01T00:00:00.000000Z")
@example("2026-11-29T09:04:19.123456Z")
def test_normalise_time_matches_the_reference(value: str) -> None:
    # twice: the second call may take the per-second fast path the first one primed
    assert outcome(normalise_time, value) == outcome(ref_time, value)
    assert outcome(normalise_time, value) == outcome(ref_time, value)


@given(st.one_of(TEXT, JSONISH))
@settings(max_examples=500 * SCALE, deadline=None)
def test_project_column_matches_the_reference(value: Any) -> None:
    assert outcome(project_column, value) == outcome(ref_column, value)


# -- a log written by the previous code ---------------------------------------------------------

# (seq, prev_hash, hash, record, at, columns) as MemoryStore at 7f774a2 stored three records:
# a typical allow, a deny full of escapes (non-ASCII, DEL, NUL, astral, lone surrogate, an offset
# time) and one with a bare date and a >64-bit int.
OLD_ROWS: list[tuple[int, str, str, str, str, dict[str, str | None]]] = [
    (
        1,
        '0000000000000000000000000000000000000000000000000000000000000000',
        '1f92c0fc264b2f5d7e59899f944dc5bb8c8618adaf32f5d3a1b60e0d88665370',
        ('{"client_id":"client-1","consent_id":"3f2504e0-4f89-11d3-9a0c-0305e82c3301","con'
         'sent_issuer":"https://platform.tt02.altinn.no/","consent_key_id":"kid-2","consum'
         'er":"310000001","correlation_id":"kgpahjmnobcdefgh-1f","decision":"allow","detai'
         'l":null,"effective_params":{"fraOgMed":["2022-01"]},"issuer":"https://test.maski'
         'nporten.no/","jti":"6f1c1d7e","key_id":"kid-1","metadata":{"inntektsaar":["2022"'
         ']},"method":"GET","path":"/api/formueinntekt/spesifisertsummertskattegrunnlag/sb'
         'l/2022/01817899701","reason":"ok","released_bytes":3512,"released_paths":["skatt'
         'epliktig.personidentifikator","grunnlag[].beloep"],"released_sha256":"ababababab'
         'ababababababababababababababababababababababababababab","requested_params":{"a":'
         '[],"fraOgMed":["2022-01"]},"resource":"ske-spesifisertsummertskattegrunnlag","ri'
         'ghts_package":"sbl","route":"spesifisertsummertskattegrunnlag","status":200,"sub'
         'ject":"01817899701","supplier":"310000002","time":"2026-11-29T09:04:19.123456Z",'
         '"token_kind":"altinn3","upstream_status":200}'),
        '2026-11-29T09:04:19.123456Z',
        {'subject': '01817899701', 'consumer': '310000001', 'supplier': '310000002', 'consent_id': '3f2504e0-4f89-11d3-9a0c-0305e82c3301', 'decision': 'allow'},
    ),
    (
        2,
        '1f92c0fc264b2f5d7e59899f944dc5bb8c8618adaf32f5d3a1b60e0d88665370',
        '0d27a703e80cf5c44060949e3d50aa247530d7c0ad275429dee59bd259f1f549',
        ('{"client_id":null,"consent_id":null,"consent_issuer":null,"consent_key_id":null,'
         '"consumer":null,"correlation_id":"c-\\u007f-\\u00e6\\u00f8\\u00e5","decision":"deny"'
         ',"detail":"tab\\there","effective_params":{},"issuer":null,"jti":null,"key_id":nu'
         'll,"metadata":{"A":["x\\ny"],"z":["\\u00e5"]},"method":"GET","path":"/api/\\u00f8l/'
         '\\ud83d\\ude00/\\"q\\"\\\\\\u0000\\u001f","reason":"consent_revoked","released_bytes":0,'
         '"released_paths":[],"released_sha256":null,"requested_params":{"\\u00e6":["\\ud800'
         '"]},"resource":null,"rights_package":null,"route":null,"status":403,"subject":"0'
         '1817899701","supplier":null,"time":"2026-11-29T10:04:19+01:00","token_kind":null'
         ',"upstream_status":null}'),
        '2026-11-29T09:04:19.000000Z',
        {'subject': '01817899701', 'consumer': None, 'supplier': None, 'consent_id': None, 'decision': 'deny'},
    ),
    (
        3,
        '0d27a703e80cf5c44060949e3d50aa247530d7c0ad275429dee59bd259f1f549',
        'c6530a8ab37b630dd3d30bbe8550fc6da42329e6faa2a692cc2fb7ab8eca254a',
        ('{"client_id":null,"consent_id":null,"consent_issuer":null,"consent_key_id":null,'
         '"consumer":"\\u0000310000001","correlation_id":"n","decision":"deny","detail":nul'
         'l,"effective_params":{},"issuer":null,"jti":null,"key_id":null,"metadata":{},"me'
         'thod":"POST","path":"/","reason":"bad_request","released_bytes":1180591620717411'
         '303424,"released_paths":[],"released_sha256":null,"requested_params":{},"resourc'
         'e":null,"rights_package":null,"route":null,"status":400,"subject":null,"supplier'
         '":null,"time":"2026-11-29","token_kind":null,"upstream_status":-1}'),
        '2026-11-29T00:00:00.000000Z',
        {'subject': None, 'consumer': '\\x00310000001', 'supplier': None, 'consent_id': None, 'decision': 'deny'},
    ),
]

# The records behind OLD_ROWS, rebuilt with today's code: same bytes, same hashes.
OLD_RECORDS = [
    DisclosureRecord(
        time="2026-11-29T09:04:19.123456Z", correlation_id="kgpahjmnobcdefgh-1f", decision="allow",
        reason="ok", status=200, method="GET",
        path="/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/01817899701",
        route="spesifisertsummertskattegrunnlag", token_kind="altinn3",
        consent_id="3f2504e0-4f89-11d3-9a0c-0305e82c3301", jti="6f1c1d7e",
        issuer="https://test.maskinporten.no/", key_id="kid-1",
        consent_issuer="https://platform.tt02.altinn.no/", consent_key_id="kid-2",
        subject="01817899701", consumer="310000001", supplier="310000002", client_id="client-1",
        resource="ske-spesifisertsummertskattegrunnlag", rights_package="sbl",
        metadata={"inntektsaar": ["2022"]}, requested_params={"fraOgMed": ["2022-01"], "a": []},
        effective_params={"fraOgMed": ["2022-01"]}, upstream_status=200,
        released_paths=["skattepliktig.personidentifikator", "grunnlag[].beloep"],
        released_bytes=3512, released_sha256="ab" * 32,
    ),
    DisclosureRecord(
        time="2026-11-29T10:04:19+01:00", correlation_id="c-\x7f-\u00e6\u00f8\u00e5", decision="deny",
        reason="consent_revoked", status=403, method="GET",
        path="/api/\u00f8l/\U0001f600/\"q\"\\\x00\x1f", subject="01817899701",
        metadata={"z": ["\u00e5"], "A": ["x\ny"]}, requested_params={"\u00e6": ["\ud800"]},
        detail="tab\there",
    ),
    DisclosureRecord(
        time="2026-11-29", correlation_id="n", decision="deny", reason="bad_request", status=400,
        method="POST", path="/", released_bytes=2**70, upstream_status=-1, consumer="\x00310000001",
    ),
]


async def _memory_with_old_rows() -> MemoryStore:
    store = MemoryStore()
    await store.open()
    store.rows = [ChainRow(seq, prev, digest, text, at, cols) for seq, prev, digest, text, at, cols in OLD_ROWS]
    store.head = (OLD_ROWS[-1][0], OLD_ROWS[-1][2])
    return store


@pytest.mark.anyio
async def test_a_log_written_by_the_previous_code_verifies_in_memory() -> None:
    store = await _memory_with_old_rows()
    result = await store.verify()
    assert result.ok and result.checked == 3
    await store.append(OLD_RECORDS[0])  # and the chain goes on from it
    assert (await store.verify()).ok


@pytest.mark.anyio
async def test_a_log_written_by_the_previous_code_verifies_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for seq, prev, digest, text, at, cols in OLD_ROWS:
                conn.execute(
                    "INSERT INTO disclosure (seq, prev_hash, hash, at, subject, consumer, supplier,"
                    " consent_id, decision, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, prev, digest, at, *(cols[k] for k in PROJECTED), text),
                )
            conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (OLD_ROWS[-1][0], OLD_ROWS[-1][2]))
        finally:
            conn.close()
        result = await store.verify()
        assert result.ok and result.checked == 3
        await store.append(OLD_RECORDS[0])
        result = await store.verify()
        assert result.ok and result.checked == 4
        assert [r.correlation_id for r in await store.export(subject="01817899701")] == [
            "c-\x7f-\u00e6\u00f8\u00e5", "kgpahjmnobcdefgh-1f", "kgpahjmnobcdefgh-1f"]  # by time
    finally:
        await store.close()


def test_todays_code_writes_the_same_rows_as_the_previous_code() -> None:
    prev = "0" * 64
    for record, (seq, prev_hash, digest, text, at, cols) in zip(OLD_RECORDS, OLD_ROWS, strict=True):
        prepared = prepare(record)
        assert prepared.record_json == text
        assert prepared.at == at
        assert prepared.columns == cols
        assert prev_hash == prev
        assert chain_hash_text(prepared.record_json, seq=seq, prev_hash=prev) == digest
        prev = digest


def test_a_record_naming_a_handler_is_stored_with_it_and_reads_back() -> None:
    """``handled_by`` (issue 11) is stored when set, and only then: a record without it is
    byte-for-byte the record the previous code wrote (above), so old logs still verify."""
    named = dataclasses.replace(OLD_RECORDS[0], handled_by="312345678")
    prepared = prepare(named)
    assert '"handled_by":"312345678"' in prepared.record_json
    assert load_record(prepared.record_json).handled_by == "312345678"
    assert load_record(OLD_ROWS[0][3]).handled_by is None
    assert "handled_by" not in prepare(OLD_RECORDS[0]).record_json


def test_unserialisable_records_still_fail_closed() -> None:
    base = dataclasses.replace(OLD_RECORDS[0])
    for change in ({"status": math.nan}, {"metadata": {"k": [datetime(2026, 1, 1)]}},
                   {"released_paths": [b"x"]}, {"metadata": {1: ["x"], "1": ["y"]}},
                   {"time": "not a time"}, {"time": "2026-02-30T00:00:00.000000Z"}):
        with pytest.raises(AuditUnavailableError):
            prepare(dataclasses.replace(base, **change))


def test_the_fast_path_is_taken_for_a_typical_record() -> None:
    from samtykke_gateway.audit import chain

    obj = _stored_fields(OLD_RECORDS[0])
    assert chain._plain_values(obj.values()) and chain._plain_dict(obj, 0)
    assert chain._fast_json(obj) == OLD_ROWS[0][3]


class _Midnight24(datetime):
    """``datetime`` whose ``fromisoformat`` reads ``T24:00:00`` as the next day's midnight
    (ISO 8601's end of day) when minutes, seconds and fraction are zero, as newer CPython
    parsers do; 3.11's refuses hour 24 outright."""

    @classmethod
    def fromisoformat(cls, text: str) -> Any:  # type: ignore[override]
        if len(text) >= 19 and text[10] == "T" and text[11:13] == "24":
            tail = text[13:]
            zero = tail.rstrip("Z")
            if zero.strip(":.0") or not zero.startswith(":00:00"):
                raise ValueError("hour must be in 0..23")
            day = datetime.fromisoformat(text[:10] + "T00" + tail)
            return day + timedelta(days=1)
        return datetime.fromisoformat(text)


def _reference_normalise(value: str) -> str:
    """7f774a2's ``normalise_time`` (the reference), with the patched parser."""
    parsed = _Midnight24.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    normalised: str = parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return normalised


def _outcome(function: Any, value: str) -> Any:
    try:
        return function(value)
    except ValueError:
        return ValueError


@pytest.mark.parametrize(
    "value",
    ["2026-02-28T24:00:00.000000Z", "2026-02-28T24:00:00.500000Z", "2026-12-31T24:00:00.000001Z"],
)
def test_normalise_time_hour_24_takes_the_reference_path(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fast path validated only the first 19 characters: with a parser that reads
    # "T24:00:00" as the next midnight it returned "...T24:00:00.500000Z" unchanged, where
    # the reference refuses it (non-zero fraction) or normalises it to the next day.
    monkeypatch.setattr(chain, "datetime", _Midnight24)
    monkeypatch.setattr(chain, "_valid_second", "")
    assert _outcome(chain.normalise_time, value) == _outcome(_reference_normalise, value)
    assert _outcome(chain.normalise_time, value) == _outcome(_reference_normalise, value)
