"""Binding a verified consent to *this* request (docs/protocol.md §4 steps 5–8, §5).

Pure functions, no I/O: consumer, supplier, subject, resource, validity and the route's
metadata constraints. Each refusal is an :class:`InsufficientConsentError` (403) with a stable
reason code, or a :class:`BadRequestError` (400) when the request itself is malformed.
Identifiers are compared as exact ASCII digit strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from samtykke_gateway.config import RouteConfig
from samtykke_gateway.exceptions import BadRequestError, InsufficientConsentError
from samtykke_gateway.identifiers import Party, party_from_digits
from samtykke_gateway.scoping.package import ScopeContext
from samtykke_gateway.tokens.model import Consent, ConsentRight, MaskinportenToken

__all__ = [
    "Binding",
    "apply_constraints",
    "bind_consent",
    "check_consumer",
    "check_governed_headers",
    "check_governed_params",
    "delegation_source_accepted",
    "request_subject",
]

_YEAR = re.compile(r"[0-9]{4}")
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def _deny(reason: str, detail: str) -> InsufficientConsentError:
    return InsufficientConsentError(detail, reason=reason)


@dataclass(frozen=True, slots=True)
class Binding:
    """The part of a consent that covers this request.

    ``token_kind``: ``"altinn2"``, ``"altinn3"`` or ``"altinn3-migrated"``.
    ``resource``: the route resource that matched. ``rights``: matched consent rights.
    ``handled_by``: the handler's org number when the token was issued to the consent's
    handler (route ``accept_handled_by``), else ``None``.
    """

    token_kind: str
    resource: str
    rights: tuple[ConsentRight, ...]
    handled_by: str | None = None

    @property
    def metadata(self) -> dict[str, list[str]]:
        """Union of the matched rights' metadata (lower-cased key → values)."""
        out: dict[str, list[str]] = {}
        for right in self.rights:
            for key, values in right.metadata.items():
                target = out.setdefault(key, [])
                target.extend(v for v in values if v not in target)
        return out


def request_subject(
    route: RouteConfig,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, list[str]],
    body: bytes | None = None,
) -> str:
    """The data subject as the request names it (raw string, not yet validated).

    :param body: the whole request body, read by the caller, on a route whose subject is in
        the body (:attr:`~samtykke_gateway.config.subject.SubjectSource.needs_body`, read by
        :meth:`~samtykke_gateway.config.subject.BodySubject.read`); ``None`` otherwise.
    :raises BadRequestError: (400) the subject is missing or repeated (``subject_missing``,
        ``duplicate_parameter``, ``ambiguous_header``), or not 11 (person) or 9 (organisation)
        ASCII digits, or not of the route's ``party`` (``subject_malformed``).
    :raises UnsupportedMediaTypeError: (415) a body subject in anything but JSON.
    """
    subject = route.subject
    values = subject.values(path_params, query, headers, body)
    if len(values) > 1:  # the same name twice: which one the data API reads is not ours to guess
        raise BadRequestError(subject.repeated_detail, reason=subject.repeated_reason)
    if len(values) != 1 or not values[0]:
        raise BadRequestError("the request must name exactly one data subject", reason="subject_missing")
    value = values[0]
    party = party_from_digits(value)
    if party is None:
        raise BadRequestError("the data subject is not an 11-digit person id or a 9-digit organisation number",
                              reason="subject_malformed")
    if subject.party is not None and party.kind != subject.party:
        raise BadRequestError(f"this route serves a data subject of kind {subject.party} only",
                              reason="subject_malformed")
    return value


def _without_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


def delegation_source_accepted(value: str | None, delegation_sources: Sequence[str]) -> bool:
    """Whether a supplier token's ``delegation_source`` is one of ``delegation_sources``,
    compared without a trailing ``/`` on either side (Altinn publishes
    ``https://tt02.altinn.no/``, Digdir ``https://www.altinn.no``; docs/protocol.md §3.3)."""
    if value is None:
        return False
    own = _without_slash(value)
    return any(own == _without_slash(source) for source in delegation_sources)


def check_consumer(
    consent: Consent,
    mp: MaskinportenToken,
    delegation_sources: Sequence[str],
    *,
    accept_handled_by: bool = False,
) -> str | None:
    """``CoveredBy``/``to`` == Maskinporten ``consumer``; supplier rules (docs/protocol.md §4
    step 6).

    Altinn 2: when ``HandledBy`` is present it must equal the Maskinporten ``supplier``.
    Altinn 3: when the token has a ``supplier``, ``delegation_source`` must be a configured
    Altinn delegation source (trailing ``/`` ignored). A token issued to the consent's handler
    (``consumer`` == ``handledBy`` != ``to``) is accepted only with ``accept_handled_by``.

    :returns: the handler's org number when the handler rule let the request through, else
        ``None``.
    :raises InsufficientConsentError: (403) ``consumer_mismatch`` / ``supplier_mismatch`` /
        ``handled_by_not_accepted``.
    """
    handler = None
    if consent.consumer != mp.consumer:
        if consent.kind != "altinn3" or consent.handled_by is None or consent.handled_by != mp.consumer:
            raise _deny("consumer_mismatch", "the consent was given to another organisation")
        if not accept_handled_by:
            raise _deny(
                "handled_by_not_accepted",
                "the token was issued to the consent's handler (handledBy), which this route does not accept",
            )
        handler = mp.consumer
    if consent.kind == "altinn2":
        if consent.supplier is not None and consent.supplier != mp.supplier:
            raise _deny("supplier_mismatch", "the consent names another supplier (HandledBy)")
    elif mp.supplier is not None and not delegation_source_accepted(mp.delegation_source, delegation_sources):
        raise _deny("supplier_mismatch", "supplier token without a trusted delegation_source")
    return handler


#: Altinn 3 id of a consent migrated from Altinn 2: ``{org}_{serviceCode}_{editionCode}``
#: (``skd_4628_210607``; Altinn's validate-consent guide, docs/protocol.md §3.3).
MIGRATED_RESOURCE = re.compile(r"[a-z0-9]{2,20}_[0-9]{1,10}_[0-9]{1,10}")


def bind_consent(
    route: RouteConfig,
    consent: Consent,
    mp: MaskinportenToken,
    subject: str,
    *,
    now: float,
    leeway_seconds: float,
    delegation_sources: Sequence[str],
) -> Binding:
    """Check that ``consent`` covers ``route`` for ``subject`` at ``now`` (epoch seconds).

    Altinn 3: a right covers the route when its resource is one of the route's
    ``altinn3_resources`` (or migrated ids) and its actions include one of the route's
    ``accepted_actions``; rights of the route's resources with other actions only are
    ``consent_action_not_accepted``. A matched resource id of the migrated form
    ``{org}_{serviceCode}_{editionCode}`` makes the kind ``"altinn3-migrated"``.

    :raises InsufficientConsentError: (403) ``consent_expired``, ``consent_not_yet_valid``,
        ``consumer_mismatch``, ``handled_by_not_accepted``, ``supplier_mismatch``,
        ``subject_mismatch``, ``service_not_consented`` / ``resource_not_consented``,
        ``consent_action_not_accepted``.
    """
    if consent.valid_to <= now:
        raise _deny("consent_expired", "the consent is no longer valid (ValidToDate/validTo)")
    if consent.delegated is not None and consent.delegated > now + leeway_seconds:
        raise _deny("consent_not_yet_valid", "the consent was given in the future")
    handler = check_consumer(consent, mp, delegation_sources, accept_handled_by=route.accept_handled_by)
    party: Party | None = party_from_digits(subject)
    if party is None or party != consent.subject:
        raise _deny("subject_mismatch", "the consent was given by another data subject")
    if consent.kind == "altinn2":
        rights = consent.rights_for(route.altinn2_services)
        if not rights:
            raise _deny("service_not_consented", "the consent does not cover this service")
        return Binding("altinn2", rights[0].resource, rights)
    actions = route.accepted_actions
    held = False
    for resources in (route.altinn3_resources, route.migrated_resources):
        if not resources:
            continue
        rights = consent.rights_for(resources, actions)
        if rights:
            resource = rights[0].resource
            migrated = resource in route.migrated_resources or MIGRATED_RESOURCE.fullmatch(resource) is not None
            kind = "altinn3-migrated" if migrated else "altinn3"
            return Binding(kind, resource, rights, handler)
        held = held or bool(consent.rights_for(resources))
    if held:
        raise _deny(
            "consent_action_not_accepted",
            "the consent covers this resource only for actions this route does not accept",
        )
    raise _deny("resource_not_consented", "the consent does not cover this resource")


_ARRAY_SUFFIX = re.compile(r"\[[^\]]*\]")


def _name_parts(name: str) -> set[str]:
    """How frameworks may read a query parameter name: case-folded, array syntax removed, and
    each dotted component (ASP.NET model binding reads ``model.fnr`` as ``fnr``)."""
    base = _ARRAY_SUFFIX.sub("", name).strip().lower()
    return {base, *base.split(".")}


_BRACKET = re.compile(r"\[([^\]]*)\]")


def _nested_name_parts(name: str) -> set[str]:
    """A query parameter name as a nested path, for the body field check: bracket syntax as
    Rails, PHP and ``qs`` read it (``person[ident]`` is ``person.ident``), each component and
    each leading path (``person``, ``person.ident``): a query value merged over the body can
    replace the field or any object holding it."""
    components = [c for c in _BRACKET.sub(r".\1", name.strip().lower()).split(".") if c]
    return {*components, *(".".join(components[:i]) for i in range(1, len(components) + 1))}


def check_governed_params(route: RouteConfig, query: Sequence[tuple[str, str]]) -> None:
    """Refuse query parameters an upstream could read as a governed one (subject, period,
    year) or as a path parameter: a governed name repeated; a variant that differs only in
    case, array syntax or a dotted prefix/suffix (``FNR``, ``fnr[]``, ``tilOgMed[0]``,
    ``model.fnr``); any query parameter naming a path parameter (``?personidentifikator=``,
    ``?inntektsaar=``: frameworks that merge route and query values could let it win); names
    with control characters; on a route whose subject is a JSON body field, a query parameter
    naming that field (its dotted path, last name or a leading path, in any case, dotted or
    bracket syntax such as ``person[ident]``: frameworks merge query and body values). Forwarding such names could let the request name another person, year or
    rights package than the one checked.

    :raises BadRequestError: (400, ``duplicate_parameter`` / ``ambiguous_parameter`` /
        ``bad_query``).
    """
    if not query:
        return
    governed = {name.lower(): name for name in route.governed_params}
    path_params = {name.lower() for name in route.path_params} - set(governed)
    body_names = route.subject.shadows  # empty unless the subject is in the JSON body
    seen: set[str] = set()
    for name, _ in query:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise BadRequestError("a query parameter name has control characters", reason="bad_query")
        parts = _name_parts(name)
        if parts & path_params:
            raise BadRequestError(
                "a query parameter names a path parameter of this route", reason="ambiguous_parameter"
            )
        if body_names and (parts | _nested_name_parts(name)) & body_names:
            raise BadRequestError(
                "a query parameter names the body field that carries the subject", reason="ambiguous_parameter"
            )
        hits = [governed[p] for p in parts if p in governed]
        if not hits:
            continue
        if len(hits) > 1 or name != hits[0]:
            raise BadRequestError(
                "a query parameter differs from a governed parameter only in case, array syntax"
                " or a dotted prefix",
                reason="ambiguous_parameter",
            )
        if name in seen:
            raise BadRequestError(f"query parameter {name} is repeated", reason="duplicate_parameter")
        seen.add(name)


def check_governed_headers(route: RouteConfig, headers: Mapping[str, list[str]], consent_header: str) -> None:
    """Refuse requests where headers the gateway reads could differ from what the upstream sees:
    ``Connection`` nominating the subject, ``Authorization`` or consent header (it would be
    dropped before the upstream, RFC 9110 §7.6.1; on a body-subject route also
    ``Content-Type``/``Content-Encoding``, under which the body was checked), or a header whose
    name differs from the
    subject header only by ``_``/``-`` (CGI, PHP and nginx with ``underscores_in_headers`` read
    ``NAV_PersonIdent`` as ``NAV-PersonIdent``), and likewise ``Content_Length`` /
    ``Transfer_Encoding`` on any route and ``Content_Type`` / ``Content_Encoding`` on a
    body-subject route.

    :param headers: lower-cased name → values. :raises BadRequestError: (400).
    """
    read = {"authorization", consent_header}
    # framing, and on a body route the headers the body was checked under: a "_" variant
    # (Content_Type, Transfer_Encoding) is the real header to a CGI-style upstream
    underscored = {"content-length", "transfer-encoding"}
    subject = route.subject
    read |= subject.read_headers
    underscored |= subject.underscored_headers
    for name in headers:
        if "_" in name and name.replace("_", "-") in underscored:
            raise BadRequestError("a header differs from a framing or content header only by '_'/'-'",
                                  reason="ambiguous_header")
    subject.check_headers(headers)
    for value in headers.get("connection", []):
        nominated = {t.strip().lower() for t in value.split(",")}
        if nominated & read:
            raise BadRequestError("Connection nominates a header the gateway checks", reason="ambiguous_header")


def _single(query: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise BadRequestError(f"query parameter {name} is repeated", reason="duplicate_parameter")
    return values[0] if values else None


def apply_constraints(
    route: RouteConfig,
    binding: Binding,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
) -> tuple[list[tuple[str, str]], ScopeContext]:
    """Enforce the route's metadata constraints (docs/protocol.md §5).

    Call after :func:`check_governed_params` (``Gate.authorize`` does, before the consent is
    bound): a governed parameter here is present at most once.

    :returns: (effective query parameters to forward, scope context with the effective period).
    :raises BadRequestError: (400) a governed parameter is malformed.
    :raises InsufficientConsentError: (403) ``metadata_missing`` (no parsable consented value)
        or ``metadata_out_of_range`` (the request asks for more than the consent covers).
    """
    effective = list(query)
    context = ScopeContext()
    if route.year is not None:
        yc = route.year
        requested = path_params.get(yc.param) if yc.source == "path" else _single(query, yc.param)
        allowed = {
            v for r in binding.rights for v in r.metadata.get(yc.metadata, ()) if _YEAR.fullmatch(v)
        }
        if not allowed:
            raise _deny("metadata_missing", f"the consent has no valid {yc.metadata}")
        if requested is None:
            raise BadRequestError(f"the request must name {yc.param}", reason="parameter_missing")
        if requested not in allowed:
            raise _deny("metadata_out_of_range", f"{yc.param} is not a consented year")
    if route.period is not None:
        pc = route.period
        candidates = []
        for right in binding.rights:
            # Each right is one consented period; several values for one bound are ambiguous
            # and yield no period (fail closed).
            froms = right.metadata.get(pc.from_metadata, ())
            tos = right.metadata.get(pc.to_metadata, ())
            if (
                len(froms) == 1
                and len(tos) == 1
                and _MONTH.fullmatch(froms[0])
                and _MONTH.fullmatch(tos[0])
                and froms[0] <= tos[0]
            ):
                candidates.append((froms[0], tos[0]))
        if not candidates:
            raise _deny("metadata_missing", "the consent has no valid period")
        req_from = _single(query, pc.from_param)
        req_to = _single(query, pc.to_param)
        for value, name in ((req_from, pc.from_param), (req_to, pc.to_param)):
            if value is not None and not _MONTH.fullmatch(value):
                raise BadRequestError(f"{name} must be YYYY-MM", reason="bad_parameter")
        chosen = None
        for c_from, c_to in candidates:
            eff_from = req_from if req_from is not None else c_from
            eff_to = req_to if req_to is not None else c_to
            if c_from <= eff_from <= eff_to <= c_to:
                chosen = (eff_from, eff_to)
                break
        if chosen is None:
            if req_from is not None and req_to is not None and req_from > req_to:
                raise BadRequestError("the requested period is empty", reason="bad_parameter")
            raise _deny("metadata_out_of_range", "the requested period is outside the consented period")
        effective = [(k, v) for k, v in effective if k not in (pc.from_param, pc.to_param)]
        effective += [(pc.from_param, chosen[0]), (pc.to_param, chosen[1])]
        context = ScopeContext(period_from=chosen[0], period_to=chosen[1])
    return effective, context
