"""Shared pieces of the disclosure reports (:mod:`.report`, :mod:`.overview`): escaping, the
page frame, the two languages and the paged read of a store.

The page is one self-contained HTML file: inline CSS only, no script, no external asset; a
``Content-Security-Policy`` meta tag forbids scripts and every fetch (``default-src 'none'``),
so even a value that escaped escaping could neither run nor call out. ``@media print`` makes
it print (and so turn into a PDF) on A4 with repeated table headers.

Every record value is attacker-influenced (paths, parameters, metadata come from requests):
:func:`text` escapes it and removes anything shaped like a JWT, so a bearer or consent token
that reached a path or a parameter never reaches the page (docs/protocol.md §7).
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

from samtykke_gateway.audit.base import DisclosureStore
from samtykke_gateway.audit.chain import normalise_time
from samtykke_gateway.audit.record import DisclosureRecord

__all__ = ["LANGUAGES", "iter_records", "page_end", "page_start", "period", "text"]

#: Three base64url segments of which the first starts like a JSON header: a JWS/JWT.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")

LANGUAGES = ("nb", "en")

_CSS = """
:root { color-scheme: light; }
body { font: 11pt/1.4 system-ui, "DejaVu Sans", Arial, sans-serif; color: #111; margin: 2em; }
h1 { font-size: 18pt; margin: 0 0 .3em; }
h2 { font-size: 14pt; margin: 1.6em 0 .4em; border-bottom: 2px solid #1f4e79; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; font-size: 9.5pt; }
th, td { border: 1px solid #bbb; padding: .3em .45em; text-align: left; vertical-align: top; }
th { background: #e8eef5; }
tr:nth-child(even) td { background: #f7f7f7; }
td ul { margin: 0; padding-left: 1.1em; }
code, .id { font-family: "DejaVu Sans Mono", monospace; font-size: 9pt; word-break: break-all; }
.ok { color: #145a14; font-weight: bold; }
.broken { color: #a00; font-weight: bold; }
.note { color: #444; font-size: 9.5pt; }
.facts th { width: 14em; }
svg { max-width: 100%; height: auto; }
@media print {
  body { margin: 0; font-size: 9.5pt; }
  @page { size: A4 landscape; margin: 12mm; }
  thead { display: table-header-group; }
  tr, svg { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
  tr:nth-child(even) td { background: none; }
}
"""


def text(value: Any, token_note: str = "[token]") -> str:
    """``value`` as escaped HTML text, JWT-shaped substrings replaced by ``token_note``."""
    if value is None:
        return "–"
    return html.escape(_JWT.sub(token_note, str(value)), quote=True)


def page_start(title: str, lang: str) -> str:
    """``<!doctype html>`` up to the opened ``<body>``, with the CSS and the CSP."""
    return (
        f'<!doctype html>\n<html lang="{text(lang)}">\n<head>\n<meta charset="utf-8">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{text(title)}</h1>\n"
    )


def page_end(footer: str) -> str:
    return f'<p class="note">{footer}</p>\n</body>\n</html>\n'


def period(date_from: str, date_to: str) -> tuple[str, str]:
    """``--from``/``--to`` → (since inclusive, until exclusive), both normalised UTC.

    A bare date ``YYYY-MM-DD`` for ``date_to`` includes that whole day (a person asks "from 1
    January to 31 December"); a time stamp is exclusive.

    :raises ValueError: not ISO 8601, or the period is empty.
    """
    since = normalise_time(date_from)
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date_to.strip()):
        until = normalise_time((date.fromisoformat(date_to.strip()) + timedelta(days=1)).isoformat())
    else:
        until = normalise_time(date_to)
    if since >= until:
        raise ValueError("--from must be before --to")
    return since, until


def day_range(since: str, until: str) -> list[str]:
    """The UTC days (``YYYY-MM-DD``) that [since, until) touches."""
    first = datetime.fromisoformat(since).date()
    last = (datetime.fromisoformat(until) - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


async def iter_records(
    store: DisclosureStore,
    *,
    since: str,
    until: str,
    subject: str | None = None,
    up_to_seq: int | None = None,
    page_size: int = 1000,
) -> AsyncIterator[tuple[int, DisclosureRecord]]:
    """``(seq, record)`` in chain order, read a page at a time (memory: one page).

    ``up_to_seq``: stop after this seq (the head a report verified), so records appended while
    the report is written do not appear in one pass and not in another.
    """
    after = 0
    while True:
        page = await store.read_records(
            since=since, until=until, subject=subject, after_seq=after, limit=page_size
        )
        for seq, record in page:
            if up_to_seq is not None and seq > up_to_seq:
                return
            yield seq, record
        if len(page) < page_size:
            return
        after = page[-1][0]
