"""The disclosure overview: counts for a period, no personal data (``audit report --overview``).

Disclosures per data consumer per day, refusals by reason code and one-time consents spent,
as inline SVG charts drawn here (no script) with the numbers in tables beside them. Only
counts are kept while the store is read a page at a time (memory: days × consumers + reasons),
and nothing about a data subject is read into the page: no person id, no consent id, no path.
A consumer is shown by its organisation number; any other value (a record is
attacker-influenced) is counted as "other" (docs/protocol.md §7).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from samtykke_gateway.audit.record import released_data
from samtykke_gateway.audit.base import DisclosureStore
from samtykke_gateway.audit.html import day_range, iter_records, page_end, page_start, text
from samtykke_gateway.audit.report import RouteFacts
from samtykke_gateway.identifiers import is_org_number

__all__ = ["Overview", "collect_overview", "write_overview_report"]

_STREAM_ENDS = ("stream_end", "stream_cut")
#: Consumers drawn in their own colour; the rest share one.
_MAX_SERIES = 8
_COLOURS = ("#1f4e79", "#c55a11", "#548235", "#7030a0", "#bf9000", "#2e75b6", "#a50021", "#3b8686")
_OTHER_COLOUR = "#999999"


@dataclass(slots=True)
class Overview:
    """Counts for [since, until)."""

    since: str
    until: str
    #: (day ``YYYY-MM-DD``, consumer org number or ``"other"``) → allowed disclosures
    per_day: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    #: disclosures on one-time routes; ``None`` when made without the config (routes unknown)
    one_time_spent: int | None = None
    records: int = 0

    @property
    def per_consumer(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (_, consumer), n in self.per_day.items():
            totals[consumer] += n
        return totals


_NB = {
    "title": "Oversikt over utleveringer", "period": "Periode", "generated": "Laget",
    "store": "Logg", "records": "Poster lest", "disclosures": "Utleveringer",
    "per_day": "Utleveringer per mottaker per dag", "per_consumer": "Utleveringer per mottaker",
    "consumer": "Mottaker (org.nr.)", "count": "Antall", "other": "andre",
    "refusals": "Avviste forespørsler etter årsak", "reason": "Årsak",
    "one_time": "Engangssamtykker brukt", "unknown": "ikke kjent (rapport uten --config)",
    "consent_spent": "Avvist fordi engangssamtykket alt var brukt (consent_spent)",
    "none": "Ingen i perioden.", "chart": "Stolpediagram",
    "footer": "Laget av samtykke-gateway fra utleveringsloggen. Oversikten har ingen "
              "personopplysninger: bare antall per virksomhet, dag og årsak.",
}
_EN = {
    "title": "Disclosure overview", "period": "Period", "generated": "Generated",
    "store": "Log", "records": "Records read", "disclosures": "Disclosures",
    "per_day": "Disclosures per recipient per day", "per_consumer": "Disclosures per recipient",
    "consumer": "Recipient (org. no.)", "count": "Count", "other": "others",
    "refusals": "Refused requests by reason", "reason": "Reason",
    "one_time": "One-time consents used", "unknown": "not known (report made without --config)",
    "consent_spent": "Refused because the one-time consent was already used (consent_spent)",
    "none": "None in the period.", "chart": "Bar chart",
    "footer": "Made by samtykke-gateway from the disclosure log. The overview holds no personal "
              "data: only counts per organisation, day and reason.",
}
TEXTS: Mapping[str, Mapping[str, str]] = {"nb": _NB, "en": _EN}


async def collect_overview(
    store: DisclosureStore,
    *,
    since: str,
    until: str,
    routes: Mapping[str, RouteFacts] | None = None,
    page_size: int = 1000,
) -> Overview:
    """Count the records of [``since``, ``until``) (streamed, counts only).

    :raises AuditUnavailableError: store unreachable.
    """
    one_time = {name for name, facts in (routes or {}).items() if facts.one_time}
    overview = Overview(since=since, until=until, one_time_spent=0 if routes is not None else None)
    async for _, r in iter_records(store, since=since, until=until, page_size=page_size):
        overview.records += 1
        if r.decision == "allow":
            if r.reason in _STREAM_ENDS or not released_data(r):  # no disclosure, no refusal
                continue
            consumer = r.consumer if is_org_number(r.consumer) else "other"
            overview.per_day[(str(r.time)[:10], str(consumer))] += 1
            if overview.one_time_spent is not None and r.route in one_time:
                overview.one_time_spent += 1
        else:
            overview.refusals[str(r.reason)] += 1
    return overview


async def write_overview_report(
    store: DisclosureStore,
    out: TextIO,
    *,
    since: str,
    until: str,
    lang: str = "nb",
    routes: Mapping[str, RouteFacts] | None = None,
    now: datetime | None = None,
    page_size: int = 1000,
) -> Overview:
    """Write the overview page for [``since``, ``until``) to ``out``; returns the counts.

    :raises AuditUnavailableError: store unreachable. :raises KeyError: unknown ``lang``.
    """
    t = TEXTS[lang]
    overview = await collect_overview(store, since=since, until=until, routes=routes,
                                      page_size=page_size)
    out.write(render_overview(overview, t, lang, store.url_for_display, now or datetime.now(UTC)))
    return overview


def render_overview(
    o: Overview, t: Mapping[str, str], lang: str, store: str, now: datetime
) -> str:
    """The whole page (its size is bounded by days × consumers, not by records)."""
    totals = o.per_consumer
    series = [c for c, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    named = [c for c in series if c != "other"][:_MAX_SERIES]
    colour = {c: _COLOURS[i] for i, c in enumerate(named)}
    label = {c: (c if c in colour else t["other"]) for c in series}
    parts = [page_start(t["title"], lang), '<table class="facts">\n']
    one_time = t["unknown"] if o.one_time_spent is None else o.one_time_spent
    for name, value in ((t["period"], f"{o.since} – {o.until}"),
                        (t["generated"], now.strftime("%Y-%m-%d %H:%M UTC")), (t["store"], store),
                        (t["records"], o.records), (t["disclosures"], sum(totals.values())),
                        (t["one_time"], one_time), (t["consent_spent"], o.refusals.get("consent_spent", 0))):
        parts.append(f"<tr><th>{text(name)}</th><td>{text(value)}</td></tr>\n")
    parts.append("</table>\n")

    parts.append(f"<h2>{text(t['per_day'])}</h2>\n")
    if totals:
        parts.append(_day_chart(o, colour, t))
        parts.append(f"<h2>{text(t['per_consumer'])}</h2>\n")
        parts.append(f"<table><thead><tr><th>{text(t['consumer'])}</th><th>{text(t['count'])}</th>"
                     "</tr></thead><tbody>\n")
        for c in series:
            swatch = colour.get(c, _OTHER_COLOUR)
            parts.append(f'<tr><td><span style="color:{swatch}">■</span> '
                         f'<span class="id">{text(label[c])}</span></td><td>{totals[c]}</td></tr>\n')
        parts.append("</tbody></table>\n")
    else:
        parts.append(f"<p>{text(t['none'])}</p>\n")

    parts.append(f"<h2>{text(t['refusals'])}</h2>\n")
    if o.refusals:
        reasons = sorted(o.refusals.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(_reason_chart(reasons, t))
        parts.append(f"<table><thead><tr><th>{text(t['reason'])}</th><th>{text(t['count'])}</th>"
                     "</tr></thead><tbody>\n")
        for reason, n in reasons:
            parts.append(f"<tr><td><code>{text(reason)}</code></td><td>{n}</td></tr>\n")
        parts.append("</tbody></table>\n")
    else:
        parts.append(f"<p>{text(t['none'])}</p>\n")
    parts.append(page_end(text(t["footer"])))
    return "".join(parts)


def _day_chart(o: Overview, colour: Mapping[str, str], t: Mapping[str, str]) -> str:
    """Stacked bars: one per day, one segment per consumer (the unnamed ones as one grey)."""
    days = day_range(o.since, o.until)
    stacks: dict[str, list[tuple[str, int]]] = {}
    for (day, consumer), n in sorted(o.per_day.items()):
        stacks.setdefault(day, []).append((colour.get(consumer, _OTHER_COLOUR), n))
    peak = max((sum(n for _, n in s) for s in stacks.values()), default=1)
    left, top, height, bar = 48, 10, 200, max(2.0, min(24.0, 900 / max(1, len(days))))
    width = left + bar * len(days) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width:.0f} {top + height + 40}" '
           f'width="{width:.0f}" height="{top + height + 40}"><title>{text(t["chart"])}: '
           f'{text(t["per_day"])}</title>',
           f'<line x1="{left}" y1="{top + height}" x2="{width - 10:.0f}" y2="{top + height}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + height}" stroke="#333"/>',
           f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{peak}</text>',
           f'<text x="{left - 6}" y="{top + height}" text-anchor="end" font-size="11">0</text>']
    for i, day in enumerate(days):
        x = left + i * bar
        y: float = top + height
        for fill, n in stacks.get(day, []):
            h = height * n / peak
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(1.0, bar - 1):.1f}" height="{h:.1f}" '
                       f'fill="{fill}"><title>{day}: {n}</title></rect>')
        if i == 0 or i == len(days) - 1 or (len(days) > 14 and day.endswith("-01")):
            anchor = "end" if i == len(days) - 1 and i else "start"  # the last label ends at its bar
            at = x + bar if anchor == "end" else x
            out.append(f'<text x="{at:.1f}" y="{top + height + 16}" font-size="10" '
                       f'text-anchor="{anchor}">{day}</text>')
    out.append("</svg>\n")
    return "".join(out)


def _reason_chart(reasons: list[tuple[str, int]], t: Mapping[str, str]) -> str:
    """Horizontal bars, one per reason code, longest first."""
    peak = reasons[0][1]
    row, label_width, bar_width = 22, 260, 420
    height = row * len(reasons) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {label_width + bar_width + 60} '
           f'{height}" width="{label_width + bar_width + 60}" height="{height}"><title>{text(t["chart"])}: '
           f'{text(t["refusals"])}</title>']
    for i, (reason, n) in enumerate(reasons):
        y = 5 + i * row
        w = max(1.0, bar_width * n / peak)
        out.append(f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                   f'{text(reason)}</text>'
                   f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="#a50021"/>'
                   f'<text x="{label_width + w + 4:.1f}" y="{y + 15}" font-size="12">{n}</text>')
    out.append("</svg>\n")
    return "".join(out)
