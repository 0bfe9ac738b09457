"""The disclosure report for one data subject (GDPR Art. 15): one HTML page a person reads.

``audit report --subject ID --from DATE --to DATE --format html`` writes it
(:mod:`samtykke_gateway.cli.audit`). For each disclosure: when, which organisation (consumer,
handler, supplier), on which consent (id, token kind, the metadata that applied), which
resource, the fields released and what was held back, the one-time/limit state of the route;
refusals in a table of their own; the chain verification and its head (docs/protocol.md §7).

Memory: the store is read a page at a time (:func:`.html.iter_records`) in three passes
(counts, disclosures, refusals), each bounded by the head the verification reached; the only
state kept across records is the streamed disclosures still waiting for their end record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from samtykke_gateway.audit.base import DisclosureStore, VerifyResult
from samtykke_gateway.audit.html import iter_records, page_end, page_start, text
from samtykke_gateway.audit.record import DisclosureRecord, released_data

__all__ = ["PackageFacts", "RouteFacts", "SubjectReport", "write_subject_report"]

_STREAM_ENDS = ("stream_end", "stream_cut")


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the gateway's config says about a route (the record holds only its name)."""

    one_time: bool = False
    daily_limit: int | None = None


@dataclass(frozen=True, slots=True)
class PackageFacts:
    """A rights package as configured: the field paths it may release and its description."""

    fields: tuple[str, ...]
    description: str = ""


@dataclass(slots=True)
class SubjectReport:
    """What a report showed: counts and the verification it was made under."""

    disclosures: int = 0
    refusals: int = 0
    verify: VerifyResult | None = None
    #: disclosures on one-time routes (each spent its consent); 0 when made without config
    one_time_spent: int = 0


_NB = {
    "title": "Utleveringer av opplysninger om {subject}",
    "period": "Periode", "generated": "Laget", "store": "Logg",
    "summary": "Sammendrag", "n_disclosures": "Utleveringer", "n_refusals": "Avviste forespørsler",
    "disclosures": "Utleveringer", "refusals": "Avviste forespørsler",
    "chain": "Kontroll av loggen",
    "chain_ok": "Hash-kjeden er hel: {n} poster kontrollert.",
    "chain_broken": "Hash-kjeden er BRUTT ved post {seq}: {problem}. Opplysningene under kan være endret.",
    "head": "Kjedens hode ved kontrollen", "covered": "Postene i rapporten ligger i den kontrollerte kjeden (løpenummer opptil {seq}).",
    "checkpoint": "Poster til og med løpenummer {seq} er slettet etter lagringstiden.",
    "when": "Tidspunkt (UTC)", "who": "Mottaker", "consent": "Samtykke", "resource": "Ressurs",
    "released": "Utlevert", "withheld": "Holdt tilbake", "usage": "Engangs/grense",
    "reason": "Årsak", "status": "Status",
    "consumer": "mottaker", "caller": "spurt av", "handled_by": "behandlet av", "supplier": "leverandør",
    "route": "rute", "token": "samtykketype", "metadata": "vilkår",
    "bytes": "{n} byte", "stream_complete": "strømmet, fullført", "stream_cut": "strømmet, avbrutt ({why})",
    "stream_open": "strømmet, slutten er ikke registrert",
    "no_fields": "ingen felt", "not_scoped": "hele svaret (ingen rettighetspakke)",
    "subtree": "alt under dette feltet, også felt datakilden har lagt til",
    "package": "rettighetspakke {name}: alle felt den ikke nevner",
    "package_absent": "nevnt av pakken, ikke i svaret: {fields}",
    "rows_withheld": "{n} rader av {path} holdt tilbake av radfilteret",
    "rows_withheld_one": "1 rad av {path} holdt tilbake av radfilteret",
    "narrowed": "parameter {name}: spurt {asked}, sendt {sent}",
    "one_time": "engangssamtykke – brukt ved denne utleveringen",
    "daily_limit": "inntil {n} per dag", "no_limit": "ingen", "unknown": "ikke kjent (rapport uten --config)",
    "none_found": "Ingen i perioden.",
    "validity_note": "Samtykkets gyldighetsperiode føres ikke i utleveringsloggen; den står i samtykket i Altinn.",
    "token_note": "[token fjernet]",
    "footer": "Laget av samtykke-gateway fra utleveringsloggen (hash-kjedet, docs/protocol.md §7). "
              "Skriv ut siden for en PDF.",
}

_EN = {
    "title": "Disclosures of data about {subject}",
    "period": "Period", "generated": "Generated", "store": "Log",
    "summary": "Summary", "n_disclosures": "Disclosures", "n_refusals": "Refused requests",
    "disclosures": "Disclosures", "refusals": "Refused requests",
    "chain": "Log verification",
    "chain_ok": "The hash chain is intact: {n} records checked.",
    "chain_broken": "The hash chain is BROKEN at record {seq}: {problem}. The entries below may have been altered.",
    "head": "Chain head at verification", "covered": "The report's records lie in the verified chain (sequence numbers up to {seq}).",
    "checkpoint": "Records up to sequence number {seq} were deleted after the retention period.",
    "when": "Time (UTC)", "who": "Recipient", "consent": "Consent", "resource": "Resource",
    "released": "Released", "withheld": "Withheld", "usage": "One-time/limit",
    "reason": "Reason", "status": "Status",
    "consumer": "recipient", "caller": "asked by", "handled_by": "handled by", "supplier": "supplier",
    "route": "route", "token": "consent kind", "metadata": "terms",
    "bytes": "{n} bytes", "stream_complete": "streamed, complete", "stream_cut": "streamed, cut off ({why})",
    "stream_open": "streamed, end not recorded",
    "no_fields": "no fields", "not_scoped": "the whole answer (no rights package)",
    "subtree": "everything under this field, including fields the data source added",
    "package": "rights package {name}: every field it does not name",
    "package_absent": "named by the package, not in the answer: {fields}",
    "rows_withheld": "{n} rows of {path} withheld by the row filter",
    "rows_withheld_one": "1 row of {path} withheld by the row filter",
    "narrowed": "parameter {name}: asked {asked}, sent {sent}",
    "one_time": "one-time consent – used by this disclosure",
    "daily_limit": "up to {n} a day", "no_limit": "none", "unknown": "not known (report made without --config)",
    "none_found": "None in the period.",
    "validity_note": "The consent's validity period is not kept in the disclosure log; it is in the consent in Altinn.",
    "token_note": "[token removed]",
    "footer": "Made by samtykke-gateway from the disclosure log (hash-chained, docs/protocol.md §7). "
              "Print the page for a PDF.",
}

TEXTS: Mapping[str, Mapping[str, str]] = {"nb": _NB, "en": _EN}


async def write_subject_report(
    store: DisclosureStore,
    out: TextIO,
    *,
    subject: str,
    since: str,
    until: str,
    lang: str = "nb",
    routes: Mapping[str, RouteFacts] | None = None,
    packages: Mapping[str, PackageFacts] | None = None,
    now: datetime | None = None,
    page_size: int = 1000,
) -> SubjectReport:
    """Write the HTML report about ``subject`` for [``since``, ``until``) to ``out``.

    :param since: inclusive, :param until: exclusive - normalised UTC ISO 8601
        (:func:`.html.period`).
    :param lang: ``"nb"`` (Norwegian bokmål) or ``"en"``.
    :param routes: / :param packages: from the gateway's config, to show one-time/limit state
        and what a rights package withholds; ``None``: shown as not known.
    :returns: the counts and the verification result (the caller exits 1 on a broken chain).
    :raises AuditUnavailableError: store unreachable.
    :raises KeyError: unknown ``lang``.
    """
    t = TEXTS[lang]
    note = t["token_note"]
    result = await store.verify()
    head = result.head_seq if result.ok else None
    report = SubjectReport(verify=result)
    async for _, r in iter_records(store, since=since, until=until, subject=subject,
                                   up_to_seq=head, page_size=page_size):
        if r.decision == "allow":
            report.disclosures += r.reason not in _STREAM_ENDS and released_data(r)
        else:
            report.refusals += 1

    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    out.write(page_start(t["title"].format(subject=subject), lang))
    out.write('<table class="facts">\n')
    for label, value in ((t["period"], f"{since} – {until}"), (t["generated"], stamp),
                         (t["store"], store.url_for_display),
                         (t["n_disclosures"], report.disclosures), (t["n_refusals"], report.refusals)):
        out.write(f"<tr><th>{text(label)}</th><td>{text(value, note)}</td></tr>\n")
    out.write("</table>\n")
    _write_chain(out, t, result)

    out.write(f"<h2>{text(t['disclosures'])}</h2>\n")
    if report.disclosures:
        out.write(f'<p class="note">{text(t["validity_note"])}</p>\n')
        out.write(_head(t, ("when", "who", "consent", "resource", "released", "withheld", "usage")))
        pending: dict[tuple[str, str, str], DisclosureRecord] = {}
        async for _, r in iter_records(store, since=since, until=until, subject=subject,
                                       up_to_seq=head, page_size=page_size):
            if r.decision != "allow" or (r.reason not in _STREAM_ENDS and not released_data(r)):
                continue
            key = (r.correlation_id, r.method, r.path)
            if r.reason in _STREAM_ENDS:
                start = pending.pop(key, None)
                if start is not None:
                    out.write(_disclosure_row(t, start, r, routes, packages, report))
                    continue
                if r.released_bytes == 0:  # the end of an answer that released nothing (HEAD)
                    continue
                out.write(_disclosure_row(t, r, r, routes, packages, report))
            elif r.rights_package is None:
                pending[key] = r  # streamed: its end record says what left
            else:
                out.write(_disclosure_row(t, r, None, routes, packages, report))
        for r in pending.values():
            out.write(_disclosure_row(t, r, None, routes, packages, report, open_stream=True))
        out.write("</tbody></table>\n")
    else:
        out.write(f"<p>{text(t['none_found'])}</p>\n")

    out.write(f"<h2>{text(t['refusals'])}</h2>\n")
    if report.refusals:
        out.write(_head(t, ("when", "who", "consent", "resource", "reason", "status")))
        async for _, r in iter_records(store, since=since, until=until, subject=subject,
                                       up_to_seq=head, page_size=page_size):
            if r.decision == "allow":
                continue
            cells = (_td(r.time, note), _who(t, r, refused=True), _consent(t, r), _resource(t, r),
                     f"<td><code>{text(r.reason, note)}</code></td>", _td(r.status, note))
            out.write(f"<tr>{''.join(cells)}</tr>\n")
        out.write("</tbody></table>\n")
    else:
        out.write(f"<p>{text(t['none_found'])}</p>\n")
    out.write(page_end(text(t["footer"])))
    return report


def _write_chain(out: TextIO, t: Mapping[str, str], result: VerifyResult) -> None:
    out.write(f"<h2>{text(t['chain'])}</h2>\n")
    if result.ok:
        out.write(f'<p class="ok">{text(t["chain_ok"].format(n=result.checked))}</p>\n')
        if result.head_seq:
            out.write(f"<p>{text(t['head'])}: <code>{result.head_seq}:{text(result.head_hash)}</code><br>"
                      f"{text(t['covered'].format(seq=result.head_seq))}</p>\n")
        if result.checkpoint_seq:
            out.write(f'<p class="note">{text(t["checkpoint"].format(seq=result.checkpoint_seq))}</p>\n')
    else:
        message = t["chain_broken"].format(seq=result.first_broken_seq, problem=result.problem)
        out.write(f'<p class="broken">{text(message)}</p>\n')


def _head(t: Mapping[str, str], keys: tuple[str, ...]) -> str:
    cells = "".join(f'<th scope="col">{text(t[k])}</th>' for k in keys)
    return f"<table>\n<thead><tr>{cells}</tr></thead>\n<tbody>\n"


def _td(value: object, note: str) -> str:
    return f"<td>{text(value, note)}</td>"


def _lines(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>" if items else ""


def _who(t: Mapping[str, str], r: DisclosureRecord, *, refused: bool = False) -> str:
    """The organisations: the recipient of a disclosure, or who asked for a refused request
    (nothing was received)."""
    note = t["token_note"]
    label = t["caller"] if refused else t["consumer"]
    parts = [f"{text(label)}: <span class=\"id\">{text(r.consumer, note)}</span>"]
    if r.handled_by:
        parts.append(f"{text(t['handled_by'])}: <span class=\"id\">{text(r.handled_by, note)}</span>")
    if r.supplier and r.supplier != r.consumer:
        parts.append(f"{text(t['supplier'])}: <span class=\"id\">{text(r.supplier, note)}</span>")
    return f"<td>{_lines(parts)}</td>"


def _consent(t: Mapping[str, str], r: DisclosureRecord) -> str:
    note = t["token_note"]
    parts = [f'<span class="id">{text(r.consent_id, note)}</span>']
    if r.token_kind:
        parts.append(f"{text(t['token'])}: {text(r.token_kind, note)}")
    for name, values in sorted(r.metadata.items()):
        parts.append(f"{text(t['metadata'])}: {text(name, note)} = {text(', '.join(map(str, values)), note)}")
    return f"<td>{_lines(parts)}</td>"


def _resource(t: Mapping[str, str], r: DisclosureRecord) -> str:
    note = t["token_note"]
    parts = [text(r.resource, note)]
    if r.route:
        parts.append(f"{text(t['route'])}: {text(r.route, note)}")
    parts.append(f"<code>{text(r.method, note)} {text(r.path, note)}</code>")
    return f"<td>{_lines(parts)}</td>"


def _disclosure_row(
    t: Mapping[str, str],
    r: DisclosureRecord,
    end: DisclosureRecord | None,
    routes: Mapping[str, RouteFacts] | None,
    packages: Mapping[str, PackageFacts] | None,
    report: SubjectReport,
    *,
    open_stream: bool = False,
) -> str:
    note = t["token_note"]
    released = [f"<code>{text(p, note)}</code>" + (f" ({text(t['subtree'])})" if p.endswith(".*") else "")
                for p in r.released_paths]
    if r.rights_package is None and not released:
        released.append(text(t["not_scoped"]))
    elif not released:
        released.append(text(t["no_fields"]))
    if end is not None and end.reason in _STREAM_ENDS:
        state = (t["stream_complete"] if end.reason == "stream_end"
                 else t["stream_cut"].format(why=end.detail or "–"))
        released.append(text(state, note))
        released.append(text(t["bytes"].format(n=end.released_bytes)))
    elif open_stream:
        released.append(text(t["stream_open"]))
    else:
        released.append(text(t["bytes"].format(n=r.released_bytes)))

    withheld: list[str] = []
    if r.rights_package is not None:
        withheld.append(text(t["package"].format(name=r.rights_package), note))
        facts = (packages or {}).get(r.rights_package)
        if facts is not None:
            absent = [p for p in facts.fields if p not in set(r.released_paths)]
            if absent:
                withheld.append(text(t["package_absent"].format(fields=", ".join(absent)), note))
            if facts.description:
                withheld.append(f'<span class="note">{text(facts.description, note)}</span>')
    for rows_path, count in sorted((r.rows_withheld or {}).items()):
        wording = t["rows_withheld_one"] if count == 1 else t["rows_withheld"]
        withheld.append(text(wording.format(n=count, path=rows_path), note))
    for name in sorted(set(r.requested_params) | set(r.effective_params)):
        asked, sent = r.requested_params.get(name), r.effective_params.get(name)
        if asked != sent:
            withheld.append(text(t["narrowed"].format(
                name=name, asked=", ".join(asked or ["–"]), sent=", ".join(sent or ["–"])), note))

    facts_route = (routes or {}).get(r.route or "") if routes is not None else None
    if routes is None:
        usage = t["unknown"]
    elif facts_route is None:
        usage = t["no_limit"]
    elif facts_route.one_time:
        usage = t["one_time"]
        report.one_time_spent += 1
    elif facts_route.daily_limit is not None:
        usage = t["daily_limit"].format(n=facts_route.daily_limit)
    else:
        usage = t["no_limit"]
    cells = (_td(r.time, note), _who(t, r), _consent(t, r), _resource(t, r),
             f"<td>{_lines(released)}</td>", f"<td>{_lines(withheld)}</td>", _td(usage, note))
    return f"<tr>{''.join(cells)}</tr>\n"
