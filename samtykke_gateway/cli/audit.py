"""``samtykke-gateway audit verify|export|purge``: the disclosure log's operator commands.

::

    audit verify  (--store URL | --config FILE)
    audit export  (--store URL | --config FILE) --subject ID [--since ISO] [--until ISO]
                  [--format json|csv]
    audit purge   (--store URL | --config FILE) --older-than DAYS
    audit report  (--store URL | --config FILE) (--subject ID | --overview)
                  --from DATE --to DATE --format html [--lang nb|en] [--output FILE]

``export`` answers a GDPR Art. 15 request: every disclosure about the person/organisation
(who received it - consumer and supplier -, when, on which consent, which resource, legal
basis, which fields), and, separately, the refused attempts; ``report`` answers it as one
HTML page a person reads (:mod:`samtykke_gateway.audit.report`), ``report --overview`` gives
the privacy office counts without personal data (:mod:`samtykke_gateway.audit.overview`).
With ``--config`` a report also shows each route's one-time/limit state and what its rights
package withholds. Exit codes: 0 ok, 1 the chain
is broken, 2 usage or store error.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
import re
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from samtykke_gateway.exceptions import AuditUnavailableError, ConfigError
from samtykke_gateway.identifiers import is_org_number, is_person_id
from samtykke_gateway.audit import open_store
from samtykke_gateway.audit.base import DisclosureStore
from samtykke_gateway.audit.chain import MAX_PURGE_DAYS, normalise_time
from samtykke_gateway.audit.record import DisclosureRecord, released_data

__all__ = ["add_audit_parser", "export_document", "run_audit"]

LEGAL_BASIS = "consent"

_CSV_COLUMNS = (
    "section",
    "time",
    "consumer",
    "supplier",
    "consent_id",
    "resource",
    "legal_basis",
    "released",
    "fields_released",
    "rows_withheld",
    "decision",
    "reason",
    "status",
    "rights_package",
    "metadata",
    "token_kind",
    "route",
    "method",
    "path",
    "correlation_id",
    "released_bytes",
    "released_sha256",
    "stream_end",
    "stream_cut_reason",
)


def add_audit_parser(subparsers: Any) -> None:
    """Add ``audit`` with ``verify``, ``export`` and ``purge`` to an argparse sub-parser set."""
    audit = subparsers.add_parser("audit", help="verify, export or purge the disclosure log")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--store", metavar="URL", help="sqlite:///PATH or postgresql://...")
        where.add_argument("--config", metavar="FILE", help="gateway config; uses [audit] url")
        return p

    p = common("verify", "walk the hash chain; exit 1 when a link is broken")
    p.add_argument(
        "--anchor", metavar="SEQ:HASH", action="append", default=[],
        help="a head printed by an earlier verify and kept outside the database: the chain must "
             "still hold that record with that hash (detects a rewound or replaced log)",
    )
    p = common("export", "every disclosure about one subject (GDPR Art. 15)")
    p.add_argument("--subject", required=True, help="person id or organisation number")
    p.add_argument("--since", metavar="ISO", help="from this time (inclusive, UTC if no offset)")
    p.add_argument("--until", metavar="ISO", help="up to this time (exclusive)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p = common("report", "an HTML report: one subject's disclosures, or an --overview of counts")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="person id or organisation number")
    who.add_argument("--overview", action="store_true",
                     help="disclosures per consumer per day, refusals by reason (no personal data)")
    p.add_argument("--from", dest="date_from", metavar="DATE", required=True,
                   help="from this date or time (inclusive, UTC if no offset)")
    p.add_argument("--to", dest="date_to", metavar="DATE", required=True,
                   help="up to this date (inclusive) or time (exclusive)")
    p.add_argument("--format", choices=("html",), default="html")
    p.add_argument("--lang", choices=("nb", "en"), default="nb",
                   help="nb: Norwegian bokmål (default), en: English")
    p.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    p = common("purge", "remove records older than DAYS, keeping the chain verifiable")
    p.add_argument("--older-than", metavar="DAYS", type=float, required=True,
                   help="1 to 36500; records younger than a day are never purged")


def run_audit(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run one ``audit`` sub-command; returns the exit code (0 ok, 1 broken, 2 error)."""
    stdout = out or sys.stdout
    try:
        url = store_url(args)
        store = open_store(url)
    except (ConfigError, ValueError, ImportError, OSError) as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    path = getattr(store, "path", None)
    if isinstance(path, str) and not os.path.exists(path):
        # open() would create an empty log and "verify" a typo as a clean chain.
        print(f"audit: no disclosure log at {path}", file=sys.stderr)
        return 2
    command: Callable[[DisclosureStore, argparse.Namespace, TextIO], Coroutine[Any, Any, int]]
    commands = {"verify": _verify, "export": _export, "purge": _purge, "report": _report}
    command = commands[args.audit_command]

    async def run() -> int:
        await store.open()
        try:
            return await command(store, args, stdout)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except AuditUnavailableError as exc:
        print(f"audit: store {store.url_for_display} unavailable: {exc.detail}", file=sys.stderr)
        return 2
    except (ValueError, OverflowError, ConfigError, OSError) as exc:  # e.g. a --since the calendar cannot shift to UTC
        print(f"audit: {exc}", file=sys.stderr)
        return 2


def store_url(args: argparse.Namespace) -> str:
    """``--store``, or ``[audit] url`` of ``--config`` (a relative SQLite path resolved against
    the config file's directory, as the gateway does).

    :raises ConfigError: unreadable or invalid config.
    """
    if getattr(args, "store", None):
        return str(args.store)
    from samtykke_gateway.config import load_config

    return load_config(Path(args.config)).audit_url


def _anchors(values: list[str]) -> dict[int, str]:
    anchors: dict[int, str] = {}
    for value in values:
        seq, sep, digest = value.strip().partition(":")
        digest = digest.lower()  # hex in either case; seq in ASCII digits only (not "١٢")
        if not sep or not re.fullmatch(r"[0-9]{1,18}", seq) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"--anchor wants SEQ:HASH (64 hex digits), got {value!r}")
        if int(seq) < 1:
            raise ValueError("--anchor: records are numbered from 1")
        anchors[int(seq)] = digest
    return anchors


async def _verify(store: DisclosureStore, args: argparse.Namespace, out: TextIO) -> int:
    anchors = _anchors(getattr(args, "anchor", []) or [])
    result = await store.verify(watch=anchors.keys())
    if not result.ok:
        print(
            f"chain BROKEN at seq {result.first_broken_seq}: {result.problem}"
            f" ({result.checked} records read, {store.url_for_display})",
            file=out,
        )
        return 1
    failed = 0
    for seq, digest in sorted(anchors.items()):
        seen = result.watched.get(seq)
        if seen == digest:
            print(f"anchor {seq}: held", file=out)
        elif seen is not None:
            print(f"anchor {seq}: BROKEN: the record now has another hash (the log was rewritten)", file=out)
            failed += 1
        elif result.head_seq is not None and result.head_seq < seq:
            print(f"anchor {seq}: BROKEN: the chain ends at {result.head_seq}, before the anchor"
                  " (records deleted and the head rewound, or the log replaced)", file=out)
            failed += 1
        else:
            # Purged, so the log can no longer show it held this record: not a pass. A purge
            # (or a log emptied and given a forged checkpoint) must not silence an anchor.
            print(f"anchor {seq}: NOT CONFIRMED: records up to {result.checkpoint_seq} were purged;"
                  " pin the head printed after each purge and check against that", file=out)
            failed += 1
    if failed:
        return 1
    print(f"chain OK: {result.checked} records checked ({store.url_for_display})", file=out)
    if not result.head_seq:
        print("WARNING: the log holds no records: a new log, or not the one the gateway writes (another path or"
              " database; an SQLite copy made without its -wal file). Checked against a head pinned earlier"
              " (--anchor), a lost log fails.", file=out)
    if result.head_seq:
        print(f"head: {result.head_seq}:{result.head_hash}  (keep outside the database; pass as --anchor)",
              file=out)
    return 0


async def _export(store: DisclosureStore, args: argparse.Namespace, out: TextIO) -> int:
    if not (is_person_id(args.subject) or is_org_number(args.subject)):
        # a typo would answer an Art. 15 request with "nothing disclosed"
        print("audit export: --subject must be a person id (11 digits) or an organisation number (9)",
              file=sys.stderr)
        return 2
    since = normalise_time(args.since) if args.since else None
    until = normalise_time(args.until) if args.until else None
    if since is not None and until is not None and since >= until:
        print("audit export: --since must be before --until", file=sys.stderr)
        return 2
    records = await store.export(subject=args.subject, since=args.since, until=args.until)
    document = export_document(args.subject, records, since=args.since, until=args.until)
    if args.format == "json":
        json.dump(document, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(_csv(document))
    return 0


async def _report(store: DisclosureStore, args: argparse.Namespace, out: TextIO) -> int:
    from samtykke_gateway.audit.html import period
    from samtykke_gateway.audit.overview import write_overview_report
    from samtykke_gateway.audit.report import write_subject_report

    subject = args.subject
    if subject is not None and not (is_person_id(subject) or is_org_number(subject)):
        print("audit report: --subject must be a person id (11 digits) or an organisation number (9)",
              file=sys.stderr)
        return 2
    since, until = period(args.date_from, args.date_to)
    routes, packages = _report_facts(args)
    target = Path(args.output) if args.output else None
    partial = target.with_name(f".{target.name}.partial") if target else None
    sink = partial.open("w", encoding="utf-8") if partial else out
    try:
        if subject is None:
            await write_overview_report(store, sink, since=since, until=until, lang=args.lang,
                                        routes=routes)
            code = 0
        else:
            report = await write_subject_report(store, sink, subject=subject, since=since,
                                                until=until, lang=args.lang, routes=routes,
                                                packages=packages)
            code = 0 if report.verify is not None and report.verify.ok else 1
    except BaseException:
        if partial is not None:
            sink.close()
            partial.unlink(missing_ok=True)
        raise
    if partial is not None and target is not None:
        sink.close()
        partial.replace(target)
    if code:
        print("audit report: the hash chain is BROKEN (see the report)", file=sys.stderr)
    return code


def _report_facts(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Route one-time/limit facts and rights packages from ``--config`` (``None`` without)."""
    if not getattr(args, "config", None):
        return None, None
    from samtykke_gateway.audit.report import PackageFacts, RouteFacts
    from samtykke_gateway.config import load_config

    config = load_config(Path(args.config))
    routes = {r.name: RouteFacts(one_time=r.one_time, daily_limit=r.daily_limit) for r in config.routes}
    packages = {name: PackageFacts(fields=tuple(p.fields), description=p.description)
                for name, p in config.rights_packages.items()}
    return routes, packages


async def _purge(store: DisclosureStore, args: argparse.Namespace, out: TextIO) -> int:
    days = args.older_than
    if not (math.isfinite(days) and 1 <= days <= MAX_PURGE_DAYS):
        # the log answers Art. 15 requests: a typo must not wipe it (--older-than 0 would)
        print(f"audit purge: --older-than must be within 1..{MAX_PURGE_DAYS} days", file=sys.stderr)
        return 2
    removed = await store.purge(older_than_days=days)
    print(f"purged {removed} records older than {days:g} days", file=out)
    result = await store.verify()
    if result.ok and result.head_seq is not None:
        print(f"checkpoint: {result.checkpoint_seq}; head: {result.head_seq}:{result.head_hash}"
              "  (anchors at or before the checkpoint can no longer be confirmed: pin this head)",
              file=out)
    return 0


def export_document(
    subject: str,
    records: list[DisclosureRecord],
    *,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """The Art. 15 answer, oldest first: ``disclosures`` (allowed, data from the source left),
    ``allowed_without_data`` (allowed, but nothing of the source left: ``HEAD``, 204/304, an
    upstream 4xx/5xx — reasons ``no_data_released`` / ``upstream_status``,
    :func:`~samtykke_gateway.audit.record.released_data`) and ``denied_attempts``.

    A disclosure's ``released`` is ``"fields"`` (a rights package applied: ``fields_released``
    lists the field paths present in what left) or ``"whole_answer"`` (an unscoped route: the
    answer left as the upstream sent it; ``fields_released`` is ``None``, not "nothing").

    A streamed (unscoped) disclosure has two records (:mod:`samtykke_gateway.asgi.stream`): the
    decision, written before the first byte left, and its end (``stream_end`` / ``stream_cut``)
    with the bytes and SHA-256 of what left. They are shown as one disclosure whose
    ``stream_end`` is ``"complete"``, ``"cut"`` (``stream_cut_reason`` says why) or ``None``
    (no end record: a gateway stopped mid-stream or its store failed, or the end falls outside
    the period — then ``released_bytes``/``released_sha256`` are ``None``, unknown, not 0); an
    end record without its start in ``records`` is shown on its own. Bytes count what the
    gateway handed to its server: an upper bound of what the client received.
    """
    disclosures: list[dict[str, Any]] = []
    denied: list[dict[str, Any]] = []
    without_data: list[dict[str, Any]] = []
    no_data_streams: dict[tuple[str, str, str], dict[str, Any]] = {}
    open_streams: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        if r.decision == "allow" and r.reason in ("stream_end", "stream_cut"):
            quiet = no_data_streams.pop((r.correlation_id, r.method, r.path), None)
            if quiet is not None:  # the end of an answer that released nothing: not a disclosure
                quiet |= {"released_bytes": r.released_bytes, "stream_end": "complete" if r.reason == "stream_end"
                          else "cut"}
                continue
            start = open_streams.pop((r.correlation_id, r.method, r.path), None)
            if start is not None:
                start |= {
                    "released_bytes": r.released_bytes,
                    "released_sha256": r.released_sha256,
                    "stream_end": "complete" if r.reason == "stream_end" else "cut",
                    "stream_cut_reason": r.detail if r.reason == "stream_cut" else None,
                }
                continue
        entry: dict[str, Any] = {
            "time": r.time,
            "consumer": r.consumer,
            "supplier": r.supplier,
            "consent_id": r.consent_id,
            "resource": r.resource,
            "rights_package": r.rights_package,
            "metadata": r.metadata,
            "token_kind": r.token_kind,
            "route": r.route,
            "method": r.method,
            "path": r.path,
            "correlation_id": r.correlation_id,
        }
        if r.decision == "allow" and not released_data(r):  # HEAD, 204/304, upstream 4xx/5xx
            entry |= {"decision": r.decision, "reason": r.reason, "status": r.status,
                      "upstream_status": r.upstream_status}
            without_data.append(entry)
            if r.rights_package is None:
                no_data_streams[(r.correlation_id, r.method, r.path)] = entry
        elif r.decision == "allow":
            # unscoped route: the answer left as the upstream sent it (as audit report reads it)
            whole = r.rights_package is None and not r.released_paths
            entry |= {
                "legal_basis": LEGAL_BASIS,
                "released": "whole_answer" if whole else "fields",
                "fields_released": None if whole else list(r.released_paths),
                "rows_withheld": dict(r.rows_withheld or {}),
                "status": r.status,
                "upstream_status": r.upstream_status,
                "released_bytes": r.released_bytes,
                "released_sha256": r.released_sha256,
            }
            if r.reason in ("stream_end", "stream_cut"):  # an end whose start is not in `records`
                entry |= {"stream_end": "complete" if r.reason == "stream_end" else "cut",
                          "stream_cut_reason": r.detail if r.reason == "stream_cut" else None}
            elif r.rights_package is None:  # streamed: the end record fills in what left
                entry |= {"stream_end": None, "stream_cut_reason": None}
                open_streams[(r.correlation_id, r.method, r.path)] = entry
            disclosures.append(entry)
        else:
            entry |= {"decision": r.decision, "reason": r.reason, "status": r.status}
            denied.append(entry)
    for entry in open_streams.values():  # no end record: what left is not known
        entry["released_bytes"] = None
        entry["released_sha256"] = None
    # a streamed answer whose end says nothing left (a log from before no_data_released: HEAD)
    nothing = [e for e in disclosures if e.get("stream_end") == "complete" and e["released_bytes"] == 0]
    for entry in nothing:
        disclosures.remove(entry)
        without_data.append(entry | {"decision": "allow", "reason": "no_data_released"})
    without_data.sort(key=lambda e: e["time"])
    return {
        "subject": subject,
        "since": since,
        "until": until,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "disclosures": disclosures,
        "allowed_without_data": without_data,
        "denied_attempts": denied,
    }


def _csv(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for section, key in (("disclosure", "disclosures"), ("allowed_without_data", "allowed_without_data"),
                         ("denied_attempt", "denied_attempts")):
        for entry in document[key]:
            row = dict(entry)
            row["section"] = section
            row["fields_released"] = ";".join(entry.get("fields_released") or [])
            row["rows_withheld"] = ";".join(f"{p}={n}" for p, n in sorted(entry.get("rows_withheld", {}).items()))
            row["metadata"] = json.dumps(entry["metadata"], ensure_ascii=False, sort_keys=True)
            row["decision"] = entry.get("decision", "allow")
            writer.writerow({k: _csv_safe(v) for k, v in row.items()})
    return buffer.getvalue()


def _csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas (values starting ``= + - @``) in exported text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
