"""The per-subject disclosure report (samtykke_gateway/audit/report.py, audit/html.py):
content, escaping, no tokens, paging, both durable stores, and a real headless browser."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.audit.test_store import KINDS, _store_url, opened
from tests.audit_support import BANK, OTHER, PERSON, VENDOR, make_record
from tests.browser_support import png_colours, render

from samtykke_gateway.audit.base import DisclosureStore
from samtykke_gateway.audit.html import iter_records, period, text
from samtykke_gateway.audit.report import PackageFacts, RouteFacts, write_subject_report

pytestmark = pytest.mark.anyio

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMTgxNzg5OTcwMSJ9.c2lnbmF0dXJl"
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from (url for _, url, _ in _store_url(request.param, tmp_path))


async def _seed(store: DisclosureStore) -> None:
    await store.append(make_record(1, time="2026-11-02T08:00:00Z", rights_package="studielan-bank",
                                   route="studielan-saldo", released_paths=["saldo.beloep"],
                                   requested_params={}, effective_params={"tilOgMed": ["2024-12"]}))
    await store.append(make_record(2, time="2026-11-03T08:00:00Z", consumer="310000009",
                                   handled_by="310000007", rights_package="studielan-bank",
                                   route="studielan-saldo", released_paths=["saldo.beloep"]))
    # a streamed disclosure: the decision, then its end with the bytes that left
    await store.append(make_record(3, time="2026-11-04T08:00:00Z", route="raw", released_paths=[],
                                   released_bytes=0, released_sha256=None))
    await store.append(make_record(4, time="2026-11-04T08:00:01Z", correlation_id="corr-3",
                                   route="raw", reason="stream_end", released_paths=[],
                                   released_bytes=4321))
    await store.append(make_record(5, time="2026-11-05T08:00:00Z", decision="deny",
                                   reason="consent_spent", status=403, released_paths=[]))
    await store.append(make_record(6, time="2026-11-05T09:00:00Z", subject=OTHER))
    await store.append(make_record(7, time="2026-12-05T09:00:00Z"))  # after the period


async def _report(store: DisclosureStore, **kwargs: Any) -> tuple[str, Any]:
    out = io.StringIO()
    report = await write_subject_report(store, out, subject=PERSON, since="2026-11-01T00:00:00Z",
                                        until="2026-12-01T00:00:00Z", now=NOW, **kwargs)
    return out.getvalue(), report


async def test_report_lists_each_disclosure_and_the_refusals_apart(store_url: str) -> None:
    async with opened(store_url) as store:
        await _seed(store)
        page, report = await _report(store)
    assert (report.disclosures, report.refusals) == (3, 1)
    assert page.startswith("<!doctype html>") and '<html lang="nb">' in page
    for heading in ("Utleveringer av opplysninger om 01817899701", "Kontroll av loggen",
                    "<h2>Utleveringer</h2>", "<h2>Avviste forespørsler</h2>"):
        assert heading in page
    disclosures, refusals = page.split("<h2>Avviste forespørsler</h2>")
    assert disclosures.count("<tr><td>2026-11-0") == 3 and refusals.count("<tr><td>2026-11-0") == 1
    assert "consent_spent" in refusals and "consent_spent" not in disclosures
    assert "behandlet av" in disclosures and "310000007" in disclosures and VENDOR in disclosures
    assert "strømmet, fullført" in disclosures and "4321 byte" in disclosures
    assert "parameter tilOgMed: spurt –, sendt 2024-12" in disclosures
    assert "Hash-kjeden er hel: 7 poster kontrollert." in page
    assert "ikke kjent (rapport uten --config)" in page
    assert "2026-12-05" not in page and "corr-6" not in page  # other period, other subject
    assert "<script" not in page and "http" not in page.split("</head>")[1].replace("https://test.maskinporten.no/", "")


async def test_report_in_english_with_the_route_and_package_facts(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await _seed(store)
        page, report = await _report(
            store, lang="en",
            routes={"studielan-saldo": RouteFacts(one_time=True), "raw": RouteFacts(daily_limit=5)},
            packages={"studielan-bank": PackageFacts(fields=("saldo.beloep", "saldo.valuta"),
                                                     description="balance only")})
    assert '<html lang="en">' in page and "Disclosures of data about 01817899701" in page
    assert page.count("one-time consent – used by this disclosure") == 2 and report.one_time_spent == 2
    assert "up to 5 a day" in page
    assert "rights package studielan-bank: every field it does not name" in page
    assert "named by the package, not in the answer: saldo.valuta" in page and "balance only" in page


async def test_a_whole_subtree_release_is_explained_in_both_languages(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await store.append(make_record(1, time="2026-11-02T08:00:00Z", rights_package="p",
                                       released_paths=["beholdning.*", "navn"]))
        nb, _ = await _report(store)
        en, _ = await _report(store, lang="en")
    assert "<code>beholdning.*</code> (alt under dette feltet, også felt datakilden har lagt til)" in nb
    assert "<code>beholdning.*</code> (everything under this field, including fields the data source added)" in en
    assert "<code>navn</code> (" not in en


async def test_a_refusal_names_who_asked_and_one_withheld_row_is_singular(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await store.append(make_record(1, time="2026-11-02T08:00:00Z", rights_package="p",
                                       rows_withheld={"r[]": 1}))
        await store.append(make_record(2, time="2026-11-02T09:00:00Z", decision="deny", reason="consumer_mismatch",
                                       status=403, released_paths=[]))
        en, _ = await _report(store, lang="en")
        nb, _ = await _report(store)
    disclosures, refusals = en.split("<h2>Refused requests</h2>")
    assert "1 row of r[] withheld by the row filter" in en and "1 rad av r[]" in nb
    assert "asked by:" in refusals and "recipient:" not in refusals and "recipient:" in disclosures
    assert "spurt av:" in nb


async def test_hostile_record_values_are_escaped_and_tokens_never_shown(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await store.append(make_record(
            1, time="2026-11-02T08:00:00Z", consumer=HOSTILE, supplier=HOSTILE, path=f"/x/{JWT}",
            resource=HOSTILE, metadata={HOSTILE: [HOSTILE]}, released_paths=[HOSTILE],
            requested_params={"token": [JWT]}, effective_params={}, rights_package=HOSTILE,
            route=HOSTILE, consent_id=HOSTILE))
        await store.append(make_record(2, time="2026-11-02T09:00:00Z", decision="deny",
                                       reason=HOSTILE, status=403, path=f"/y?access_token={JWT}"))
        page, _ = await _report(store)
    body = page.split("</head>")[1]
    assert "<script" not in body and "<img" not in body and "onerror=alert(2)>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&quot;&gt;" in body
    assert JWT not in page and JWT.split(".")[0] not in page and "[token fjernet]" in page


def test_text_escapes_and_removes_jwt_shaped_values() -> None:
    assert text("<a href='x'>&") == "&lt;a href=&#x27;x&#x27;&gt;&amp;"
    assert text(f"Bearer {JWT}!", "[gone]") == "Bearer [gone]!"
    assert text(None) == "–"


def test_period_takes_a_whole_last_day_or_an_exclusive_time() -> None:
    assert period("2026-01-01", "2026-12-31") == ("2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z")
    assert period("2026-01-01", "2026-01-02T06:00:00+01:00")[1] == "2026-01-02T05:00:00.000000Z"
    with pytest.raises(ValueError):
        period("2026-02-01", "2026-01-31")
    with pytest.raises(ValueError):
        period("yesterday", "2026-01-31")


async def test_records_are_read_a_page_at_a_time_and_stop_at_the_verified_head(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        for i in range(25):
            await store.append(make_record(i, time=f"2026-11-02T08:00:{i:02d}Z"))
        pages: list[int] = []
        read = store.read_records

        async def spy(**kwargs: Any) -> Any:
            page = await read(**kwargs)
            pages.append(len(page))
            return page

        store.read_records = spy  # type: ignore[method-assign]
        seqs = [seq async for seq, _ in iter_records(store, since="2026-11-01T00:00:00Z",
                                                     until="2026-12-01T00:00:00Z", page_size=4)]
        assert seqs == list(range(1, 26)) and max(pages) == 4 and len(pages) == 7
        capped = [seq async for seq, _ in iter_records(store, since="2026-11-01T00:00:00Z",
                                                       until="2026-12-01T00:00:00Z", up_to_seq=9,
                                                       page_size=4)]
        assert capped == list(range(1, 10))
        small, _ = await _report(store, page_size=3)
        large, _ = await _report(store, page_size=1000)
    assert small == large and small.count("<tr><td>2026-11-02") == 25


async def test_a_broken_chain_is_shown_and_reported(tmp_path: Path) -> None:
    from tests.audit_support import tamper_for

    url = f"sqlite:///{tmp_path}/a.db"
    async with opened(url) as store:
        await _seed(store)
        tamper_for(store, "sqlite").edit(3)
        page, report = await _report(store)
    assert report.verify is not None and not report.verify.ok
    assert "Hash-kjeden er BRUTT ved post 3" in page and 'class="broken"' in page


async def test_subject_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await _seed(store)
        await store.append(make_record(9, time="2026-11-06T08:00:00Z", path=HOSTILE, consumer=BANK))
        page, _ = await _report(store)
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    shown = render(path)
    assert shown.errors == [] and shown.requests == []
    assert "<h2>Utleveringer</h2>" in shown.dom and "<h2>Avviste forespørsler</h2>" in shown.dom
    assert shown.dom.count("<tr><td>2026-11-0") == 5  # 4 disclosures + 1 refusal, parsed as rows
    assert "<script" not in shown.dom.split("</head>")[1]
    assert png_colours(shown.png) > 20  # text, table shading, headings: not a blank page
    assert shown.pdf.startswith(b"%PDF-") and shown.pdf.count(b"/Type /Page") >= 1
