"""The disclosure overview (samtykke_gateway/audit/overview.py): counts only, no personal data,
inline SVG charts, both durable stores, and a real headless browser."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.audit.test_store import KINDS, _store_url, opened
from tests.audit_support import BANK, OTHER, PERSON, make_record
from tests.browser_support import png_colours, render

from samtykke_gateway.audit.base import DisclosureStore
from samtykke_gateway.audit.overview import collect_overview, write_overview_report
from samtykke_gateway.audit.report import RouteFacts

pytestmark = pytest.mark.anyio

SINCE, UNTIL = "2026-11-01T00:00:00Z", "2026-11-08T00:00:00Z"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOSTILE = '"><script>alert(1)</script>'


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from (url for _, url, _ in _store_url(request.param, tmp_path))


async def _seed(store: DisclosureStore) -> None:
    n = 0
    for day, consumer, count in ((2, BANK, 3), (2, "310000003", 1), (4, BANK, 2)):
        for _ in range(count):
            n += 1
            await store.append(make_record(n, time=f"2026-11-0{day}T08:00:{n:02d}Z", consumer=consumer,
                                           subject=PERSON if n % 2 else OTHER, route="once"))
    await store.append(make_record(50, time="2026-11-04T09:00:00Z", consumer=BANK, reason="stream_end"))
    await store.append(make_record(51, time="2026-11-05T09:00:00Z", consumer=PERSON))  # not an org
    for i, reason in enumerate(("consent_spent", "consent_spent", "consent_revoked", HOSTILE)):
        await store.append(make_record(60 + i, time="2026-11-06T09:00:00Z", decision="deny",
                                       reason=reason, status=403, route="other"))
    await store.append(make_record(70, time="2026-11-09T09:00:00Z"))  # outside the period


async def test_overview_counts_per_consumer_per_day_reasons_and_spent_one_time(store_url: str) -> None:
    async with opened(store_url) as store:
        await _seed(store)
        o = await collect_overview(store, since=SINCE, until=UNTIL,
                                   routes={"once": RouteFacts(one_time=True), "other": RouteFacts()},
                                   page_size=3)
    assert dict(o.per_day) == {("2026-11-02", BANK): 3, ("2026-11-02", "310000003"): 1,
                               ("2026-11-04", BANK): 2, ("2026-11-05", "other"): 1}
    assert dict(o.refusals) == {"consent_spent": 2, "consent_revoked": 1, HOSTILE: 1}
    assert o.one_time_spent == 6 and o.records == 12


async def test_overview_page_has_charts_and_no_personal_data(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await _seed(store)
        out = io.StringIO()
        await write_overview_report(store, out, since=SINCE, until=UNTIL, now=NOW)
    page = out.getvalue()
    assert "Oversikt over utleveringer" in page and page.count("<svg") == 2
    assert "ikke kjent (rapport uten --config)" in page  # one-time routes unknown without config
    assert not re.search(r"(?<![0-9])[0-9]{11}(?![0-9])", page)  # no person id anywhere
    assert PERSON not in page and OTHER not in page and "corr-" not in page and "/api/" not in page
    assert "00000000-0000-4000-8000" not in page  # no consent ids
    assert "<script" not in page.split("</head>")[1] and "&lt;script&gt;" in page
    assert f">{BANK}</span></td><td>5<" in page and ">andre</span></td><td>1<" in page


async def test_overview_renders_in_headless_chromium(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path}/a.db") as store:
        await _seed(store)
        out = io.StringIO()
        await write_overview_report(store, out, since=SINCE, until=UNTIL, lang="en", now=NOW)
    path = tmp_path / "overview.html"
    path.write_text(out.getvalue(), encoding="utf-8")
    shown = render(path)
    assert shown.errors == [] and shown.requests == []
    assert "Disclosures per recipient per day" in shown.dom and "Refused requests by reason" in shown.dom
    assert shown.dom.count("<svg") == 2 and shown.dom.count("<rect") == 4 + 3  # 4 day segments + 3 reasons
    assert png_colours(shown.png) > 20
    assert shown.pdf.startswith(b"%PDF-")
