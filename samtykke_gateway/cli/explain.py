"""``samtykke-gateway explain``: why a token (or an Altinn 2 pair) is accepted or refused.

What a data source's support desk runs when a bank says "you rejected my token". It runs the
*real* checks (the same :class:`~samtykke_gateway.policy.decide.Gate`, verifier and key sets the
gateway uses); with ``--path`` the verdict is the gateway's own decision
(:meth:`Gate.decide <samtykke_gateway.policy.decide.Gate.decide>`, which the middleware and the
sidecar call) on the request as a client sends it (:func:`explain_request`), without the steps
that have effects (no consent is spent, no record written). It prints each step in
docs/protocol.md §4 order with pass / FAIL / not reached and the reason code; the decoded claims with personal identifiers masked unless
``--show-personal-data``; and, when the request passes, what the rights package would release.

::

    samtykke-gateway explain MASKINPORTEN_TOKEN [--consent A2_CONSENT_TOKEN]
        [--config FILE] [--path '/api/...?fraOgMed=2018-07'] [--method GET] [--root-path PREFIX]
        [--header 'NAV-PersonIdent: 01029413157' ...] [--body FILE] [--show-personal-data]

Without ``--config`` only the structure and the time claims are shown (no keys, no
signature): the result is then always "NOT VERIFIED" (exit 1), never a pass. Tokens may be given as ``-`` to read them from standard input (one per line), so
they do not end up in shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.exceptions import ConfigError, GatewayError, RequestBodyTooLargeError
from samtykke_gateway.policy.binding import delegation_source_accepted
from samtykke_gateway.policy.decide import CONSENT_TOKEN_REASONS, Decision
from samtykke_gateway.policy.intake import RawRequest, app_segments
from samtykke_gateway.tokens.jose import parse_compact
from samtykke_gateway.tokens.model import Consent, MaskinportenToken

if TYPE_CHECKING:
    from samtykke_gateway.config import RouteConfig
    from samtykke_gateway.runtime import Gateway

__all__ = ["ExplainUsageError", "add_explain_parser", "consent_view", "explain", "explain_command",
           "explain_decision", "explain_request", "mask_personal_data", "parse_header_option"]

#: Most bytes ``--body`` reads (the largest ``max_request_body_bytes`` a config may set).
_MAX_BODY_FILE = 16 * 1024 * 1024
_PERSON = re.compile(r"(?<![0-9])([0-9]{6})([0-9]{5})(?![0-9])")
#: ``--header``: most options, bytes of one value, and bytes of all of them (a request head
#: larger than this is refused by servers long before the gateway sees it).
_MAX_HEADERS = 100
_MAX_HEADER_VALUE = 8192
_MAX_HEADER_BYTES = 64 * 1024
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ExplainUsageError(ValueError):
    """A request option ``explain`` cannot model as given (CLI exit 2)."""


def parse_header_option(text: str) -> tuple[str, str]:
    """``--header 'Name: value'`` → (lower-cased name, value as the gateway would see it).

    The value loses surrounding spaces and tabs (RFC 9110 §5.5) and is what a client sending
    it in UTF-8 puts on the wire, read back as Latin-1 as the gateway reads header bytes.

    :raises ExplainUsageError: no ``:``, a name that is not an HTTP token, a control character
        in the value, or a value over 8 KiB.
    """
    name, sep, value = text.partition(":")
    if not sep or _HEADER_NAME.fullmatch(name) is None:
        raise ExplainUsageError("--header must be 'Name: value' with an HTTP header name")
    value = value.strip(" \t")
    if _HEADER_VALUE_FORBIDDEN.search(value):
        raise ExplainUsageError(f"--header {name}: the value has a control character")
    wire = value.encode("utf-8")
    if len(wire) > _MAX_HEADER_VALUE:
        raise ExplainUsageError(f"--header {name}: the value is longer than {_MAX_HEADER_VALUE} bytes")
    return name.lower(), wire.decode("latin-1")

#: (step title, reason codes that fail it), in the order the gateway checks them.
REQUEST_STEPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("query string (UTF-8, at most 100 parameters and 8 KiB)", frozenset({"bad_query", "too_many_parameters"})),
    ("framing (Content-Length / Transfer-Encoding; no GET or HEAD body)",
     frozenset({"ambiguous_framing", "unexpected_body"})),
    ("path normalised once (dot segments, percent-encoding, under the root path)", frozenset({"bad_path"})),
    ("route matches the request", frozenset({"no_route", "method_not_allowed"})),
)
TOKEN_STEPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("strict JWS parse (3 base64url segments, JSON objects, size bounds)", frozenset({"malformed_token"})),
    ("algorithm on the issuer's allow-list", frozenset({"alg_not_allowed"})),
    ("no unknown 'crit' header", frozenset({"crit_not_supported"})),
    ("key found in the issuer's JWKS by kid / x5t / x5c thumbprint", frozenset({"unknown_key", "keys_unavailable"})),
    ("signature", frozenset({"bad_signature"})),
    ("iss exactly the configured issuer", frozenset({"wrong_issuer"})),
    ("aud names this data source (when an audience is configured)", frozenset({"wrong_audience"})),
    ("exp / nbf / iat (with leeway)", frozenset({"token_expired", "token_not_yet_valid", "bad_time_claim"})),
)
#: The same steps for the Altinn 2 consent token: its failures carry ``consent_token_*``
#: reasons (403), never the bearer's (docs/protocol.md §4).
CONSENT_TOKEN_STEPS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (title, frozenset(CONSENT_TOKEN_REASONS.get(r, r) for r in reasons) | ({"consent_token_malformed"}
                                                                          if "malformed_token" in reasons else set()))
    for title, reasons in TOKEN_STEPS
)
BINDING_STEPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("Maskinporten claims (consumer ISO 6523, scope)", frozenset({"bad_maskinporten_claims"})),
    ("Maskinporten token not older than max_token_age_seconds (now - iat)", frozenset({"token_too_old"})),
    ("route scope in the token's scope", frozenset({"scope_missing"})),
    ("a consent present (authorization_details or consent header)", frozenset({"missing_consent_token", "ambiguous_consent", "altinn2_not_accepted"})),
    ("consent claims well formed", frozenset({"bad_consent_claims", "test_token_refused", *CONSENT_TOKEN_REASONS.values(),
                                             "consent_token_invalid"})),
    ("subject named by the request (path, header, query or JSON body field)",
     frozenset({"subject_missing", "subject_malformed", "body_not_json", "duplicate_member", "ambiguous_parameter",
                "duplicate_parameter",
                "ambiguous_header", "unsupported_media_type", "request_body_too_large"})),
    ("consent valid now (ValidToDate / validTo, DelegatedDate)", frozenset({"consent_expired", "consent_not_yet_valid"})),
    ("consent given to the calling consumer (CoveredBy / to; handledBy where the route accepts it)",
     frozenset({"consumer_mismatch", "handled_by_not_accepted"})),
    ("supplier (HandledBy / delegation_source)", frozenset({"supplier_mismatch"})),
    ("consent given by the data subject asked about", frozenset({"subject_mismatch"})),
    ("service code / resource id consented, by a right whose action the route accepts",
     frozenset({"service_not_consented", "resource_not_consented", "consent_action_not_accepted"})),
    ("metadata constraints (income year, period)", frozenset({"metadata_missing", "metadata_out_of_range", "duplicate_parameter", "bad_parameter", "parameter_missing"})),
    ("rights package known and open to the consumer", frozenset({"unknown_rights_package", "rights_package_not_allowed"})),
    ("verified claims fit to forward as headers (printable ASCII)", frozenset({"unforwardable_claim"})),
)


def consent_view(route: RouteConfig, consent: Consent | None, mp: MaskinportenToken,
                 delegation_sources: Sequence[str], *, max_token_age: float | None = None) -> list[str]:
    """Lines comparing what ``route`` wants (resources, actions, consumer/handler rule,
    supplier rule, token age) with what ``consent`` and ``mp`` hold (docs/protocol.md §4 step 6).
    No personal identifiers: resources, actions, metadata keys and org numbers only."""
    lines = []
    if route.altinn2_services:
        lines.append(f"route wants Altinn 2 service {' or '.join(route.altinn2_services)}")
    resources = route.altinn3_resources + route.migrated_resources
    if resources:
        lines.append(f"route wants Altinn 3 resource {' or '.join(resources)} with action "
                     f"{' or '.join(route.accepted_actions)} (any case)")
    lines.append("route accepts a token issued to the consent's handler (handledBy)" if route.accept_handled_by
                 else "route refuses a token issued to the consent's handler (handledBy)")
    if max_token_age is not None:
        age = "no iat" if mp.issued_at is None else "iat given"
        lines.append(f"route honours a Maskinporten token up to {max_token_age:g} s after iat ({age})")
    if mp.supplier is not None:
        trusted = delegation_source_accepted(mp.delegation_source, delegation_sources)
        lines.append(f"token: supplier {mp.supplier}, delegation_source {mp.delegation_source or '(none)'}"
                     f" ({'trusted' if trusted else 'NOT trusted'})")
    if consent is None:
        lines.append("consent holds: (no consent)")
        return lines
    lines.append(f"consent holds ({consent.kind}): given to {consent.consumer}"
                 + (f", handled by {consent.handled_by}" if consent.handled_by else "")
                 + f"; the token was issued to {mp.consumer}")
    if not consent.rights:
        lines.append("  no right lists a resource: the consent covers nothing")
    for right in consent.rights:
        acts = f" action {', '.join(right.actions) or '(none)'}" if consent.kind == "altinn3" else ""
        keys = ", ".join(sorted(right.metadata)) or "-"
        lines.append(f"  {right.resource}{acts}; metadata {keys}")
    return lines


def mask_personal_data(value: Any) -> Any:
    """Mask 11-digit person identifiers (``01029413157`` → ``010294*****``) anywhere in a
    JSON-like value. Organisation numbers (9 digits) are not personal data and stay."""
    if isinstance(value, str):
        return _PERSON.sub(lambda m: m.group(1) + "*****", value)
    if isinstance(value, dict):
        return {k: mask_personal_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_personal_data(v) for v in value]
    return value


@dataclass
class _Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def out(self, text: str = "") -> None:
        self.lines.append(text)

    def steps(self, steps: tuple[tuple[str, frozenset[str]], ...], failed: GatewayError | None,
              *, skip_until: int = 0, not_applicable: Mapping[str, str] | None = None) -> None:
        """One line per step: ``[pass]``, ``[FAIL]``, ``[ -- ]`` (not reached) or ``[ n/a]``
        (``not_applicable``: step title → why the check does not apply here)."""
        reached = True
        for index, (title, reasons) in enumerate(steps):
            if index < skip_until:
                continue
            if not reached:
                self.out(f"  [ -- ] {title}: not reached")
            elif failed is not None and failed.reason in reasons:
                self.out(f"  [FAIL] {title}: {failed.detail} ({failed.status_code} {failed.reason})")
                self.ok = False
                reached = False
            elif not_applicable and title in not_applicable:
                self.out(f"  [ n/a] {title}: does not apply ({not_applicable[title]})")
            else:
                self.out(f"  [pass] {title}")
        if reached and failed is not None:
            self.out(f"  [FAIL] {failed.detail} ({failed.status_code} {failed.reason})")
            self.ok = False


    def section(self, steps: tuple[tuple[str, frozenset[str]], ...], failed: GatewayError | None,
                not_applicable: Mapping[str, str] | None = None) -> bool:
        """Show ``steps`` against the decision's outcome ``failed``: failed at the step that
        names its reason, else all passed. :returns: whether the decision stopped here."""
        if failed is None or not any(failed.reason in reasons for _, reasons in steps):
            self.steps(steps, None, not_applicable=not_applicable)
            return False
        self.steps(steps, failed, not_applicable=not_applicable)
        return True


def _decode(token: str, show: bool) -> dict[str, Any] | None:
    try:
        jws = parse_compact(token, max_bytes=1 << 20)
    except GatewayError:
        return None
    view = {"header": jws.header, "claims": jws.payload}
    return view if show else mask_personal_data(view)


async def explain(
    bearer: str,
    *,
    consent: str | None = None,
    config_path: str | None = None,
    path: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    show_personal_data: bool = False,
    clock: Callable[[], float] = time.time,
    root_path: str = "",
    gateway: Gateway | None = None,
) -> tuple[bool, list[str]]:
    """Run every check; returns (all passed, report lines). Never raises for bad tokens.

    With ``path`` the verdict is the gateway's own: the request goes through
    :meth:`Gate.decide <samtykke_gateway.policy.decide.Gate.decide>` exactly as the middleware
    and the sidecar run it (:func:`explain_decision`), so the two cannot disagree; only the
    steps with effects are left out (consent state, audit guard, the record).

    :param path: the request target, path and query, as a client sends it
        (:func:`explain_request`).
    :param body: the JSON request body, for a route whose subject is a body field.
    :param headers: more request headers, ``(name, value)`` as :func:`parse_header_option`
        makes them (repeats kept), e.g. a route's subject header; never ``Authorization`` or
        the consent header (the tokens are given on their own).
    :param root_path: the ASGI root path the protected app is mounted under (uvicorn
        ``--root-path``); ``path`` then includes it, as on the wire.
    :param gateway: judge with this gateway (its owner closes it) instead of one built from
        ``config_path``; nothing is written to its store or its consent state.

    :raises ConfigError: the ``config_path`` file is invalid.
    :raises ExplainUsageError: too many or too large ``headers``, or one that carries a token.
    """
    if len(headers) > _MAX_HEADERS:
        raise ExplainUsageError(f"at most {_MAX_HEADERS} --header options")
    if sum(len(n) + len(v) + 4 for n, v in headers) > _MAX_HEADER_BYTES:
        raise ExplainUsageError(f"the --header options are larger than {_MAX_HEADER_BYTES} bytes together")
    for name, _ in headers:
        if name == "authorization":
            raise ExplainUsageError("--header Authorization: give the Maskinporten token as the first argument")
    report = _Report()
    for title, token in (("Maskinporten access token", bearer), ("Altinn 2 consent token", consent)):
        if token is None:
            continue
        report.out(f"{title}: decoded ({'personal data shown' if show_personal_data else 'person ids masked'})")
        view = _decode(token, show_personal_data)
        if view is None:
            report.out("  (not a decodable compact JWS)")
        else:
            for line in json.dumps(view, indent=2, ensure_ascii=False).splitlines():
                report.out("    " + line)
    if config_path is None and gateway is None:
        report.out("\nNo --config: NOT VERIFIED. Without the issuers' keys nothing here says the token is")
        report.out("genuine (signature, issuer and key were not checked); only the time claims are shown.")
        if path is not None:
            report.out("--path ignored: binding to a request needs --config (routes and keys).")
        if headers:
            report.out("--header ignored: binding to a request needs --config (routes and keys).")
        for title, token in (("Maskinporten access token", bearer), ("Altinn 2 consent token", consent)):
            if token is None:
                continue
            try:
                claims = parse_compact(token, max_bytes=1 << 20).payload
            except GatewayError as exc:
                report.out(f"  [FAIL] {title}: {exc.detail}")
                continue
            exp = claims.get("exp")
            live = isinstance(exp, int | float) and not isinstance(exp, bool) and exp > clock()
            report.out(f"  [{'pass' if live else 'FAIL'}] {title}: exp {'in the future' if live else 'missing or past'}")
        report.ok = False  # unverified is never a pass
        return report.ok, report.lines

    from samtykke_gateway.runtime import Gateway

    own_gateway = gateway is None
    if gateway is None:
        from samtykke_gateway.audit.memory import MemoryStore
        from samtykke_gateway.config import load_config

        if config_path is None:  # (answered above, unverified)
            raise ExplainUsageError("give --config")
        gateway = Gateway(load_config(config_path), store=MemoryStore(), clock=clock)
    config = gateway.config
    for name, _ in headers:
        if name == config.consent_header:
            raise ExplainUsageError(f"--header {name}: give the consent token with --consent")
    try:
        if path is None:
            await _explain_tokens(report, gateway, bearer, consent)
            return report.ok, report.lines
        await _explain_request(report, gateway, bearer, consent, path=path, method=method, body=body,
                               headers=headers, root_path=root_path, show_personal_data=show_personal_data)
        return report.ok, report.lines
    finally:
        if own_gateway:
            await gateway.close()


async def _explain_tokens(report: _Report, gateway: Gateway, bearer: str, consent: str | None) -> None:
    """No ``--path``: verify the tokens on their own, then list the routes."""
    report.out("\nMaskinporten access token: verification")
    try:
        await gateway.gate.maskinporten(bearer)
        report.steps(TOKEN_STEPS, None)
    except GatewayError as exc:
        report.steps(TOKEN_STEPS, exc)
        return
    if consent is not None:
        report.out("\nAltinn 2 consent token: verification")
        try:
            await gateway.gate.altinn2(consent)
            report.steps(CONSENT_TOKEN_STEPS, None)
        except GatewayError as exc:
            report.steps(CONSENT_TOKEN_STEPS, exc)
            return
    report.out("\nNo --path: binding to a request not checked. Routes in this config:")
    for route in gateway.config.routes:
        report.out(f"  {route.name}: {','.join(sorted(route.methods))} {route.path} (scope {route.scope})")


def explain_request(bearer: str, *, consent: str | None, consent_header: str, path: str, method: str = "GET",
                    body: bytes | None = None, headers: Sequence[tuple[str, str]] = (),
                    root_path: str = "") -> RawRequest:
    """The request ``explain`` judges, as a client would put it on the wire.

    :param path: the request target, path and query (``/api/...?fraOgMed=2018-07``), as sent:
        its bytes are the UTF-8 encoding of the text (a client percent-encodes what it must;
        ``explain`` does not do it for it). A ``#fragment`` is dropped, as clients do; an empty
        path is ``/``.
    :param headers: ``(lower-cased name, value)`` as :func:`parse_header_option` makes them.
    :param body: the request body: sent with ``Content-Length`` (and ``Content-Type:
        application/json`` unless ``headers`` name a content type); ``None``: no body.
    :returns: a :class:`~samtykke_gateway.policy.intake.RawRequest` with ``Authorization:
        Bearer <bearer>``, the consent header when ``consent`` is given, then ``headers``.
    """
    target = path.split("#", 1)[0]
    raw_path, _, query = target.partition("?")
    raw_headers = [(b"authorization", b"Bearer " + bearer.encode("utf-8"))]
    if consent is not None:
        raw_headers.append((consent_header.encode("latin-1"), consent.encode("utf-8")))
    if body is not None:
        if not any(name == "content-type" for name, _ in headers):
            raw_headers.append((b"content-type", b"application/json"))
        raw_headers.append((b"content-length", str(len(body)).encode("ascii")))
    raw_headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
    return RawRequest(method, (raw_path or "/").encode("utf-8"), query.encode("utf-8"), tuple(raw_headers),
                      root_path)


async def explain_decision(gateway: Gateway, request: RawRequest, body: bytes | None) -> tuple[
        Decision | GatewayError, DisclosureRecord]:
    """The gateway's decision on ``request`` (:meth:`~samtykke_gateway.policy.decide.Gate.decide`,
    the one the middleware runs), without the steps that have effects: no audit guard, no
    consent-state hook (a one-time consent is never spent), no record written.

    :param body: the request body ``request`` announces (``None``: none; the body reader then
        gives ``b""``, as a server does for a request without one).
    :returns: the :class:`~samtykke_gateway.policy.decide.Decision`, or the
        :class:`~samtykke_gateway.exceptions.GatewayError` the gateway would answer with; and
        the disclosure record as far as the decision filled it (not written anywhere).
    """
    record = DisclosureRecord(time="", correlation_id="explain", decision="deny", reason="", status=0,
                              method=request.method, path=request.raw_path.decode("latin-1")[:512])

    async def read_body(limit: int) -> bytes:
        data = body or b""
        if len(data) > limit:
            raise RequestBodyTooLargeError("the request body is larger than this route accepts")
        return data

    try:
        return await gateway.gate.decide(request, record, read_body=read_body), record
    except GatewayError as exc:
        return exc, record


def _binding_not_applicable(gateway: Gateway, route: RouteConfig, mp: MaskinportenToken | None,
                            held: Consent | None) -> dict[str, str]:
    """The binding checks that do not apply to ``route`` and these tokens, with why."""
    out: dict[str, str] = {}
    if gateway.gate.max_token_age(route.max_token_age_seconds) is None:
        out[BINDING_STEPS[1][0]] = "no max_token_age_seconds on the issuer or the route"
    if (mp is None or mp.supplier is None) and (held is None or held.supplier is None):
        out[BINDING_STEPS[8][0]] = "no supplier in the token or the consent"
    if route.year is None and route.period is None:
        out[BINDING_STEPS[11][0]] = "the route has no year or period constraint"
    if not route.scoped:
        out[BINDING_STEPS[12][0]] = "unscoped route: the answer streams through"
    return out


def _unmatched_note(gateway: Gateway, request: RawRequest) -> str | None:
    """What the middleware form does with a path no route names when ``gateway.unmatched`` is
    unset (explain decides as the sidecar does: 404); ``None`` outside the root path."""
    try:
        segments = app_segments(request.raw_path, request.root_path)[1]
    except GatewayError:  # outside the application's root path: no form passes it
        return None
    if gateway.router.protects(segments):
        return "  note: under a protected prefix: refused in the middleware form too (404 no_route)"
    return ("  note: outside the protected prefixes: the sidecar refuses it (404 no_route); the middleware"
            " form hands it to the app unchecked (gateway.unmatched unset = 'pass_outside_protected')")


async def _explain_request(report: _Report, gateway: Gateway, bearer: str, consent: str | None, *, path: str,
                           method: str, body: bytes | None, headers: Sequence[tuple[str, str]], root_path: str,
                           show_personal_data: bool) -> None:
    """``--path``: the gateway's own decision on the request, shown step by step in its order
    (request, Maskinporten token, Altinn 2 consent token, binding; docs/protocol.md §4)."""
    config = gateway.config
    request = explain_request(bearer, consent=consent, consent_header=config.consent_header, path=path,
                              method=method, body=body, headers=headers, root_path=root_path)
    outcome, record = await explain_decision(gateway, request, body)
    failed = outcome if isinstance(outcome, GatewayError) else None
    report.out(f"\nRequest {method} {path if show_personal_data else mask_personal_data(path)}")
    for name, value in headers:
        report.out(f"  header {name}: {value if show_personal_data else mask_personal_data(value)}")
    if isinstance(outcome, Decision) and outcome.grant is None:
        report.steps(REQUEST_STEPS[:-1], None)
        report.out(f"  [ -- ] route matches the request: no route; gateway.unmatched = \"{config.unmatched}\""
                   " hands it to the app unchecked, without the tokens")
        report.out("\nDecision: pass through (no consent applies; nothing is recorded)")
        return
    if report.section(REQUEST_STEPS, failed):
        if failed is not None and failed.reason == "no_route" and config.unmatched is None:
            note = _unmatched_note(gateway, request)
            if note is not None:
                report.out(note)
        return
    report.out("\nMaskinporten access token: verification")
    maskinporten_issuer = config.issuers.get("maskinporten")
    no_audience = {TOKEN_STEPS[6][0]: "no audience configured for the issuer"} if (
        maskinporten_issuer is not None and not maskinporten_issuer.audiences) else None
    if report.section(TOKEN_STEPS, failed, no_audience):
        return
    try:  # the token as the gateway verified it (a cache hit), for the view below
        mp: MaskinportenToken | None = await gateway.gate.maskinporten(bearer)
    except GatewayError:
        mp = None
    held: Consent | None = mp.consent if mp is not None else None
    if consent is not None:
        report.out("\nAltinn 2 consent token: verification")
        try:
            held = await gateway.gate.altinn2(consent)
        except GatewayError as exc:  # the decision may have stopped before it (shown below)
            if failed is None or failed.reason != exc.reason:
                report.steps(CONSENT_TOKEN_STEPS, exc)
                report.ok = False
                held = None
        if report.section(CONSENT_TOKEN_STEPS, failed):
            return
    report.out("\nBinding to the request")
    route = gateway.gate.route(record.route)
    if route is not None and mp is not None:
        report.out("  what the route wants and what the consent holds:")
        for line in consent_view(route, held, mp, config.altinn3_delegation_sources,
                                 max_token_age=gateway.gate.max_token_age(route.max_token_age_seconds)):
            report.out("    " + line)
    report.steps(BINDING_STEPS, failed,
                 not_applicable=_binding_not_applicable(gateway, route, mp, held) if route is not None else None)
    if failed is not None or not isinstance(outcome, Decision) or outcome.grant is None:
        return
    grant = outcome.grant
    if record.handled_by is not None:
        report.out(f"Handler {record.handled_by} called for the recipient {record.consumer} (both recorded)")
    report.out(f"\nDecision: allow ({record.token_kind}, consent {record.consent_id}, resource {record.resource})")
    if grant.effective_query:
        report.out(f"Forwarded query: {grant.effective_query}")
    if grant.rights_package is None:
        report.out("Route is unscoped: the upstream body would be released as is.")
    else:
        fields = config.raw.get("rights_packages", {}).get(grant.rights_package_name, {})
        report.out(f"Rights package {grant.rights_package_name} would release:")
        for f in fields.get("fields", []):
            report.out(f"  {f}")
        for row in fields.get("rows", []):
            cond = {k: v for k, v in row.items() if k not in ("path", "where")}
            report.out(f"  rows of {row.get('path')} only where {row.get('where', '(row)')} {cond}")


def _token_arg(value: str | None, stdin_lines: list[str]) -> str | None:
    if value == "-":
        return stdin_lines.pop(0) if stdin_lines else None
    return value


def explain_command(args: argparse.Namespace) -> int:
    """CLI handler: exit 0 when every check passes, 1 when one fails, 2 on a config error."""
    stdin_lines: list[str] = []
    if "-" in (args.token, args.consent):
        stdin_lines = [line.strip() for line in sys.stdin if line.strip()]
    bearer = _token_arg(args.token, stdin_lines)
    consent = _token_arg(args.consent, stdin_lines)
    if not bearer:
        print("no token given", file=sys.stderr)
        return 2
    if bearer.lower().startswith("bearer "):
        bearer = bearer[7:].strip()
    if consent and len(consent) >= 2 and consent[0] == consent[-1] == '"':
        consent = consent[1:-1]
    body = None
    if args.body is not None:
        try:
            with Path(args.body).open("rb") as f:  # bounded: --body /dev/zero must not fill memory
                body = f.read(_MAX_BODY_FILE + 1)
        except OSError as exc:
            print(f"--body: {exc.strerror}", file=sys.stderr)
            return 2
        if len(body) > _MAX_BODY_FILE:
            print(f"--body: larger than {_MAX_BODY_FILE} bytes, more than any route reads", file=sys.stderr)
            return 2
    try:
        headers = [parse_header_option(h) for h in args.header]
        ok, lines = asyncio.run(
            explain(bearer, consent=consent, config_path=args.config, path=args.path, method=args.method.upper(),
                    body=body, headers=headers, show_personal_data=args.show_personal_data,
                    root_path=args.root_path)
        )
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    except ExplainUsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.config is None:
        print("\nResult: NOT VERIFIED (give --config to check keys, signature and the request)")
        return 1
    if not ok:
        print("\nResult: refused")
        return 1
    if args.path is None:
        print("\nResult: tokens verified; NOT bound to a request (give --path to check consumer, subject,"
              " resource and metadata)")
        return 0
    print("\nResult: every check passed (revocation, one-time use and usage limits are live state,"
          " not checked here)")
    return 0


def add_explain_parser(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("explain", help="print every check for a token (pair) and request, in order")
    p.add_argument("token", help="Maskinporten access token ('-' = read from stdin)")
    p.add_argument("--consent", default=None, help="Altinn 2 consent token ('-' = read from stdin)")
    p.add_argument("--config", default=None, help="gateway config (needed for keys and routes)")
    p.add_argument("--path", default=None, help="request path with query, e.g. '/api/...?fraOgMed=2018-07'")
    p.add_argument("--method", default="GET")
    p.add_argument("--root-path", default="", metavar="PREFIX",
                   help="the root path the protected app is mounted under (uvicorn --root-path); --path"
                        " includes it, as on the wire")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header, e.g. a route's subject header (repeatable; person ids masked"
                        " in the report unless --show-personal-data)")
    p.add_argument("--body", default=None, metavar="FILE",
                   help="JSON request body, for a route whose subject is a body field")
    p.add_argument("--show-personal-data", action="store_true", help="do not mask person identifiers")
    p.set_defaults(func=handler)
