"""``samtykke-gateway audit verify|export|purge`` through the argparse handlers."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import cast

import pytest

from tests.audit_support import BANK, OTHER, PERSON, VENDOR, make_record

from samtykke_gateway.audit import open_store
from samtykke_gateway.audit.memory import MemoryStore
from samtykke_gateway.cli.audit import add_audit_parser, run_audit


def _cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="samtykke-gateway")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    out = io.StringIO()
    return run_audit(parser.parse_args(list(argv)), out=out), out.getvalue()


def _seed(url: str) -> None:
    async def seed() -> None:
        store = open_store(url)
        await store.open()
        try:
            await store.append(make_record(1, time="2026-01-10T10:00:00Z"))
            await store.append(
                make_record(
                    2,
                    time="2026-02-10T10:00:00Z",
                    decision="deny",
                    reason="consent_expired",
                    status=403,
                    released_paths=[],
                    upstream_status=None,
                )
            )
            await store.append(make_record(3, time="2026-03-10T10:00:00Z", subject=OTHER))
            await store.append(make_record(4, time="2026-04-10T10:00:00Z", supplier=None))
        finally:
            await store.close()

    asyncio.run(seed())


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/audit.db"
    _seed(url)
    return url


def test_verify_ok(db: str) -> None:
    code, out = _cli("audit", "verify", "--store", db)
    assert code == 0
    assert "chain OK: 4 records checked" in out


def test_verify_broken_names_the_seq_and_the_problem(db: str) -> None:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute("DELETE FROM disclosure WHERE seq = 2")
    code, out = _cli("audit", "verify", "--store", db)
    assert code == 1
    assert "chain BROKEN at seq 2: deleted" in out


def test_export_json_lists_disclosures_and_denied_attempts_separately(db: str) -> None:
    code, out = _cli("audit", "export", "--store", db, "--subject", PERSON)
    assert code == 0
    doc = json.loads(out)
    assert doc["subject"] == PERSON
    assert [d["time"] for d in doc["disclosures"]] == [
        "2026-01-10T10:00:00Z",
        "2026-04-10T10:00:00Z",
    ]
    first = doc["disclosures"][0]
    assert (first["consumer"], first["supplier"], first["legal_basis"]) == (BANK, VENDOR, "consent")
    assert first["consent_id"] == make_record(1).consent_id
    assert first["resource"] == "ske-inntekt"
    assert first["fields_released"] == ["arbeidsinntektMaaned[].inntekt[].beloep"]
    assert first["rows_withheld"] == {}  # written before rows were counted: none recorded
    assert doc["disclosures"][1]["supplier"] is None
    assert [(d["reason"], d["status"]) for d in doc["denied_attempts"]] == [
        ("consent_expired", 403)
    ]


def test_export_window_and_csv(db: str) -> None:
    code, out = _cli(
        "audit", "export", "--store", db, "--subject", PERSON,
        "--since", "2026-02-01", "--until", "2026-05-01T00:00:00+02:00", "--format", "csv",
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["section"], r["time"]) for r in rows] == [
        ("disclosure", "2026-04-10T10:00:00Z"),
        ("denied_attempt", "2026-02-10T10:00:00Z"),
    ]
    assert rows[0]["legal_basis"] == "consent"
    assert rows[1]["reason"] == "consent_expired"


def test_export_neutralises_spreadsheet_formulas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"

    async def seed() -> None:
        store = open_store(url)
        await store.open()
        await store.append(make_record(1, resource='=HYPERLINK("http://evil")'))
        await store.close()

    asyncio.run(seed())
    code, out = _cli("audit", "export", "--store", url, "--subject", PERSON, "--format", "csv")
    assert code == 0
    assert next(iter(csv.DictReader(io.StringIO(out))))["resource"].startswith("'=")


def test_export_shows_the_rows_a_row_filter_withheld(tmp_path: Path) -> None:
    """Issue 14: `fields_released` alone did not show that rows were withheld; the record now
    counts them per row-filter path, and the export (JSON and CSV) shows the counts. A record
    without counts is stored without the key (old logs still verify)."""
    url = f"sqlite:///{tmp_path}/a.db"
    withheld = {"oppgaveInntektsmottaker[].inntekt[]": 5, "oppgaveInntektsmottaker[]": 1}

    async def seed() -> None:
        store = open_store(url)
        await store.open()
        await store.append(make_record(1, rows_withheld=withheld))
        await store.append(make_record(2))
        await store.close()

    asyncio.run(seed())
    code, out = _cli("audit", "export", "--store", url, "--subject", PERSON)
    assert code == 0
    assert [d["rows_withheld"] for d in json.loads(out)["disclosures"]] == [withheld, {}]
    code, out = _cli("audit", "export", "--store", url, "--subject", PERSON, "--format", "csv")
    assert [r["rows_withheld"] for r in csv.DictReader(io.StringIO(out))] == [
        "oppgaveInntektsmottaker[]=1;oppgaveInntektsmottaker[].inntekt[]=5", ""]
    with sqlite3.connect(f"{tmp_path}/a.db") as conn:
        stored = [json.loads(r) for (r,) in conn.execute("SELECT record FROM disclosure ORDER BY seq")]
    assert stored[0]["rows_withheld"] == withheld and "rows_withheld" not in stored[1]
    assert _cli("audit", "verify", "--store", url)[0] == 0


def test_purge_then_verify(db: str) -> None:
    code, out = _cli("audit", "purge", "--store", db, "--older-than", "1")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "purged 4 records older than 1 days"
    assert lines[1].startswith("checkpoint: 4; head: 4:")  # the head to pin after a purge
    assert _cli("audit", "verify", "--store", db)[0] == 0


@pytest.mark.parametrize("days", ["0", "0.5", "-5", "1e9", "99999999999", "nan", "inf"])
def test_purge_refuses_unusable_ages_without_a_traceback(
    db: str, days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0 would wipe the log that answers Art. 15 requests; 1e9 overflowed timedelta (traceback)
    code, out = _cli("audit", "purge", "--store", db, "--older-than", days)
    err = capsys.readouterr().err
    assert code == 2 and "purged" not in out
    assert "Traceback" not in err
    export_code, export_out = _cli("audit", "export", "--store", db, "--subject", PERSON)
    assert export_code == 0 and json.loads(export_out)["disclosures"]  # nothing was removed


def test_config_with_a_relative_sqlite_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    _seed(f"sqlite:///{conf_dir}/logs.db")
    config = conf_dir / "gateway.toml"
    config.write_text('[gateway]\nprofile = "tt02"\n\n[audit]\nurl = "sqlite:///logs.db"\n\n'
                      '[[routes]]\nname = "r"\npath = "/r/{fnr}"\nscope = "s:r"\nsubject = { path = "fnr" }\n'
                      'altinn3_resources = ["r"]\nunscoped = true\n')
    monkeypatch.chdir(tmp_path)  # resolves against the config's directory, not the cwd
    code, out = _cli("audit", "verify", "--config", str(config))
    assert code == 0 and "4 records" in out, out


def test_missing_sqlite_file_is_an_error_not_an_empty_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("audit", "verify", "--store", f"sqlite:///{tmp_path}/typo.db")[0] == 2
    assert "no disclosure log" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_store_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("audit", "verify", "--store", "mysql://x")[0] == 2
    (tmp_path / "f").write_text("x")
    assert _cli("audit", "verify", "--store", f"sqlite:///{tmp_path}/f/a.db")[0] == 2
    assert _cli("audit", "verify", "--config", f"{tmp_path}/missing.toml")[0] == 2
    _seed(f"sqlite:///{tmp_path}/b.db")
    code, _ = _cli("audit", "export", "--store", f"sqlite:///{tmp_path}/b.db", "--subject", PERSON,
                   "--since", "soon")  # fmt: skip
    assert code == 2
    (tmp_path / "garbage.db").write_bytes(b"not a database at all" * 100)
    assert _cli("audit", "verify", "--store", f"sqlite:///{tmp_path}/garbage.db")[0] == 2
    err = capsys.readouterr().err
    assert "Invalid isoformat" in err
    assert "garbage.db unavailable: disclosure store open failed (SQLITE_NOTADB)" in err


def test_console_entry_point_routes_audit(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("samtykke_gateway.cli.main")
    assert cli.main(["audit", "verify", "--store", db]) == 0
    assert "chain OK: 4 records checked" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subject", "abc"], "--subject must be"),
        (["--subject", ""], "--subject must be"),
        (["--subject", "0102941315"], "--subject must be"),  # 10 digits: a typo
        (["--subject", PERSON, "--since", "9999-12-31T23:59:59-05:00"], "audit:"),  # past year 9999 in UTC
        (["--subject", PERSON, "--until", "0001-01-01T00:00:00+01:00"], "audit:"),
        (["--subject", PERSON, "--since", "2026-05-01", "--until", "2026-04-01"], "--since must be before"),
    ],
)
def test_export_refuses_what_would_answer_nothing(
    db: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a fresh user: a typo'd subject answered an Art. 15 request with "nothing", an
    # out-of-range date raised a traceback
    code, out = _cli("audit", "export", "--store", db, *args)
    err = capsys.readouterr().err
    assert code == 2 and out == "" and message in err and "Traceback" not in err


@pytest.mark.parametrize("anchor", ["0:" + "a" * 64, "\u0661\u0662:" + "a" * 64, "12:" + "g" * 64, "12:" + "a" * 63])
def test_anchor_argument_is_ascii_and_from_one(db: str, anchor: str) -> None:
    value = anchor.encode().decode("unicode_escape")
    assert _cli("audit", "verify", "--store", db, "--anchor", value)[0] == 2


def test_anchor_hash_in_upper_case_is_read(db: str) -> None:
    code, out = _cli("audit", "verify", "--store", db)
    head = next(line.split()[1] for line in out.splitlines() if line.startswith("head: "))
    code, out = _cli("audit", "verify", "--store", db, "--anchor", head.upper())
    assert code == 0 and "held" in out


def test_report_writes_one_html_file_and_the_overview(db: str, tmp_path: Path) -> None:
    target = tmp_path / "innsyn.html"
    code, out = _cli("audit", "report", "--store", db, "--subject", PERSON, "--from", "2026-01-01",
                     "--to", "2026-12-31", "--format", "html", "--output", str(target))
    assert code == 0 and out == ""
    page = target.read_text(encoding="utf-8")
    assert "Utleveringer av opplysninger om" in page and "consent_expired" in page
    assert page.count("<tr><td>2026-") == 3  # records 1 and 4 disclosed, 2 refused; 3 is OTHER's
    assert not list(tmp_path.glob(".*partial"))
    code, out = _cli("audit", "report", "--store", db, "--overview", "--from", "2026-01-01",
                     "--to", "2026-04-30", "--lang", "en")
    assert code == 0 and "Disclosure overview" in out and PERSON not in out and OTHER not in out


def test_report_with_config_shows_one_time_routes(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "config" / "studielan-example.toml"
    config = tmp_path / "gateway.toml"
    config.write_text(source.read_text().replace('rights_package = "studielan-bank"',
                                                 'rights_package = "studielan-bank"\none_time = true'))
    _seed(f"sqlite:///{tmp_path}/studielan-disclosures.db")

    async def more() -> None:
        store = open_store(f"sqlite:///{tmp_path}/studielan-disclosures.db")
        await store.open()
        await store.append(make_record(9, time="2026-05-01T10:00:00Z", route="studielan-saldo",
                                       rights_package="studielan-bank", released_paths=["saldo.beloep"]))
        await store.close()

    asyncio.run(more())
    code, out = _cli("audit", "report", "--config", str(config), "--subject", PERSON,
                     "--from", "2026-01-01", "--to", "2026-12-31", "--lang", "en")
    assert code == 0
    assert out.count("one-time consent – used by this disclosure") == 1
    assert "named by the package, not in the answer: personidentifikator, saldo.valuta" in out
    code, out = _cli("audit", "report", "--config", str(config), "--overview",
                     "--from", "2026-01-01", "--to", "2026-12-31", "--lang", "en")
    assert code == 0 and "<tr><th>One-time consents used</th><td>1</td></tr>" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subject", "123", "--from", "2026-01-01", "--to", "2026-02-01"], "--subject must be"),
        (["--subject", PERSON, "--from", "2026-03-01", "--to", "2026-02-01"], "--from must be before --to"),
        (["--overview", "--from", "soon", "--to", "2026-02-01"], "Invalid isoformat"),
    ],
)
def test_report_refuses_bad_arguments_without_a_traceback(
    db: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("audit", "report", "--store", db, *args)[0] == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_report_on_a_broken_chain_exits_1_and_says_so(db: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE disclosure SET record = replace(record, 'corr-1', 'corr-X') WHERE seq = 1")
    code, out = _cli("audit", "report", "--store", db, "--subject", PERSON, "--from", "2026-01-01",
                     "--to", "2026-12-31")
    assert code == 1 and "BRUTT" in out and "BROKEN" in capsys.readouterr().err


@pytest.mark.anyio
async def test_export_lists_head_and_upstream_405_apart_from_disclosures(dev_issuer, issuer_url: str) -> None:  # type: ignore[no-untyped-def]
    """A FastAPI app answers HEAD on a GET route with 405, and a GET route Starlette also
    serves for HEAD answers headers only: both are allowed and recorded as what they are
    (``upstream_status`` / ``no_data_released``), never as disclosures; the GET that released
    the balance is the one disclosure."""
    import httpx
    from starlette.responses import JSONResponse

    from samtykke_gateway.cli.audit import export_document
    from samtykke_gateway.dev.server import ThreadedServer
    from tests.support import (STUDIELAN_PERSON, consent_middleware, studielan_config, studielan_fastapi,
                               studielan_headers, studielan_path)

    app = studielan_fastapi(config=studielan_config(issuer_url))
    app.router.add_route("/api/v1/studielan/{fnr}/saldo", lambda request: JSONResponse(
        {"personidentifikator": request.path_params["fnr"]}), methods=["HEAD"])  # Starlette serves HEAD itself
    with ThreadedServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            ok = await client.get(studielan_path(), headers=studielan_headers(dev_issuer))
            head = await client.head(studielan_path(), headers=studielan_headers(dev_issuer))
            assert (ok.status_code, head.status_code) == (200, 200) and head.content == b""
    plain = studielan_fastapi(config=studielan_config(issuer_url))  # HEAD: FastAPI's 405
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://app.test") as client:
        refused = await client.head(studielan_path(), headers=studielan_headers(dev_issuer))
        assert refused.status_code == 405
    records = (cast(MemoryStore, consent_middleware(app).gateway.store).records
               + cast(MemoryStore, consent_middleware(plain).gateway.store).records)
    assert [(r.method, r.decision, r.reason, r.status) for r in records] == [
        ("GET", "allow", "ok", 200), ("HEAD", "allow", "no_data_released", 200),
        ("HEAD", "allow", "upstream_status", 405)]
    document = export_document(STUDIELAN_PERSON, records)
    assert [(e["method"], e["fields_released"]) for e in document["disclosures"]] == [
        ("GET", ["lan[].lanetype", "lan[].saldo", "personidentifikator", "saldo.beloep", "saldo.per", "saldo.valuta"])]
    assert [(e["method"], e["reason"], e["status"]) for e in document["allowed_without_data"]] == [
        ("HEAD", "no_data_released", 200), ("HEAD", "upstream_status", 405)]
    assert document["denied_attempts"] == []


def test_export_of_an_old_log_does_not_count_a_scoped_head_as_a_disclosure() -> None:
    """A log written before ``no_data_released`` recorded a scoped HEAD as ``ok``, 0 bytes."""
    from samtykke_gateway.cli.audit import export_document

    old = make_record(decision="allow", reason="ok", status=200, method="HEAD", rights_package="p",
                      released_bytes=0)
    document = export_document(PERSON, [old])
    assert document["disclosures"] == [] and [e["method"] for e in document["allowed_without_data"]] == ["HEAD"]


def test_verify_of_an_empty_log_passes_with_a_warning(tmp_path: Path) -> None:
    async def create() -> None:
        store = open_store(f"sqlite:///{tmp_path}/empty.db")
        await store.open()
        await store.close()

    asyncio.run(create())
    code, out = _cli("audit", "verify", "--store", f"sqlite:///{tmp_path}/empty.db")
    assert code == 0 and "chain OK: 0 records checked" in out
    assert "WARNING: the log holds no records" in out and "head:" not in out


def test_export_says_an_unscoped_disclosure_released_the_whole_answer() -> None:
    from samtykke_gateway.cli.audit import _csv, export_document

    start = make_record(1, released_paths=[], released_bytes=0, released_sha256=None)
    end = make_record(1, reason="stream_end", released_paths=[], released_bytes=293)
    scoped = make_record(2, rights_package="p")
    document = export_document(PERSON, [start, end, scoped])
    whole, fields = document["disclosures"]
    assert (whole["released"], whole["fields_released"], whole["released_bytes"]) == ("whole_answer", None, 293)
    assert (fields["released"], fields["fields_released"]) == ("fields", ["arbeidsinntektMaaned[].inntekt[].beloep"])
    rows = _csv(document).splitlines()
    assert ",whole_answer,," in rows[1] and ",fields,arbeidsinntektMaaned[].inntekt[].beloep," in rows[2]
