"""One decision: raw request facts → :class:`Decision` or a :class:`GatewayError` (framework-free).

:meth:`Gate.decide` is the only place a request is judged; the ASGI middleware (and so the
sidecar, which is the middleware around a proxy) and ``samtykke-gateway explain`` all call it,
so they cannot disagree. The order is docs/protocol.md §4: request intake (query, framing, a
``GET``/``HEAD`` body, path, root path; :mod:`samtykke_gateway.policy.intake`), route match,
on a body-subject route the Maskinporten token and then the body, then tokens (parse,
algorithm, key, signature, issuer, times), Maskinporten scope and consumer, consent (validity,
consumer, supplier, resource), subject, metadata constraints, rights package, and the claims
the upstream will see. The :class:`DisclosureRecord` passed in is filled as facts become known,
so a refusal is logged with everything learnt before it.

**The decision memo.** A granted decision is a pure function of the request's bytes that the
decision reads (method, raw path, root path, query string, the header names, the values of the
headers it reads), of the verified tokens, of the configuration (fixed per :class:`Gate`: a
reload builds a new one) and of the clock. :class:`Gate` remembers granted decisions under
exactly those request inputs (bounded, LRU); on a repeat it still runs the token checks (the
verifier's, with its cache: signatures, ``exp``/``nbf``, key rotation, exactly as without the
memo) and reuses the rest only when they give equal tokens, and when the time bounds that
depend on the clock (token age, consent ``validTo``, consent date) still hold on *this*
request's clock reading. Anything else falls back to the full decision, which then decides
(and fills the record) exactly as without a memo. Refusals are never remembered.

Not here, because they have effects: the audit guard's probe and the consent-state hook
(revocation, one-time consents, usage limits: ``state.before_forward`` spends a one-time
consent) run in the adapter after :meth:`Gate.decide` allowed the request, and records are
written by the adapter. ``explain`` runs :meth:`Gate.decide` only: it never spends a consent
and never writes a record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.policy.credentials import CONSENT_TOKEN_REASONS, bearer_token, consent_header_token
from samtykke_gateway.policy.issuers import build_issuer_policies, key_set
from samtykke_gateway.policy.binding import (
    Binding,
    apply_constraints,
    bind_consent,
    check_governed_headers,
    check_governed_params,
    request_subject,
)
from samtykke_gateway.config import GatewayConfig, RouteConfig
from samtykke_gateway.config.model import DEFAULT_DECISION_MEMO_ENTRIES
from samtykke_gateway.config.subject import HeaderSubject, PathSubject, QuerySubject
from samtykke_gateway.exceptions import (
    RequestBodyTimeoutError,
    RequestBodyTooLargeError,
    BadRequestError,
    ForbiddenError,
    InsufficientConsentError,
    InvalidConsentError,
    InvalidTokenError,
    NotFoundError,
)
from samtykke_gateway.policy.intake import (
    RawRequest,
    app_segments,
    check_no_unexpected_body,
    check_request_framing,
    claim_header_value,
    declared_body_length,
    parse_query,
)
from samtykke_gateway.policy.routing import RouteMatch, Router
from samtykke_gateway.scoping.package import RightsPackage, ScopeContext
from samtykke_gateway.tokens.altinn2 import consent_from_altinn2_claims
from samtykke_gateway.tokens.maskinporten import maskinporten_from_claims
from samtykke_gateway.tokens.model import Consent, MaskinportenToken
from samtykke_gateway.tokens.typed import decode_maskinporten, maskinporten_from_typed
from samtykke_gateway.tokens.verify import IssuerPolicy, TokenVerifier

__all__ = [
    "CONSENT_TOKEN_REASONS",
    "DEFAULT_MEMO_ENTRIES",
    "BodyReader",
    "Decision",
    "Gate",
    "Grant",
    "RawRequest",
    "RequestFacts",
    "bearer_token",
    "build_issuer_policies",
    "key_set",
    "params_as_dict",
]

@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the gate needs from an HTTP request.

    ``headers``: lower-cased name → list of values (repeats kept). ``query``: decoded
    ``(name, value)`` pairs in order. ``body``: the whole request body, read only on a route
    whose subject is a JSON body field (``None`` elsewhere: bodies stream through).
    """

    method: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, list[str]]
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """An allowed request: what to forward and what may be released.

    Public API: the protected app finds it at ``scope["samtykke.consent"]``
    (``request.scope["samtykke.consent"]`` in Starlette/FastAPI). Read-only; attributes:

    - ``subject`` (str): the data subject the request is about — 11-digit person id or
      9-digit org number, already bound to the consent (docs/protocol.md §4);
    - ``maskinporten`` (:class:`~samtykke_gateway.tokens.model.MaskinportenToken`): the
      verified access token — ``consumer`` (the calling organisation), ``supplier``,
      ``scopes``, ``client_id``, ``expires_at``/``issued_at`` (epoch seconds);
    - ``consent`` (:class:`~samtykke_gateway.tokens.model.Consent`): the verified consent —
      ``kind``, ``consent_id``, ``consumer`` (recipient), ``supplier``, ``handled_by``,
      ``valid_to`` (epoch seconds), ``rights`` (resource, actions, metadata);
    - ``binding`` (:class:`~samtykke_gateway.policy.binding.Binding`): the part of the consent
      that covers this request — ``token_kind`` (``altinn3``, ``altinn3-migrated``,
      ``altinn2``), ``resource``, ``rights``, ``metadata`` (income year, period, ...),
      ``handled_by``;
    - ``match`` (:class:`~samtykke_gateway.policy.routing.RouteMatch`): ``route`` (the
      :class:`~samtykke_gateway.config.RouteConfig`, ``route.name``), ``params`` (decoded path
      parameters), ``path`` (canonical path);
    - ``effective_query`` (list of (name, value)): the query the app receives, constraints
      applied (e.g. a missing ``tilOgMed`` set to the consented bound);
    - ``rights_package`` / ``rights_package_name``: what the answer is scoped to; ``None`` on
      an unscoped route (the body streams through);
    - ``scope_context``: the values row filters compare with (internal to scoping).
    """

    match: RouteMatch
    maskinporten: MaskinportenToken
    consent: Consent
    binding: Binding
    subject: str
    effective_query: list[tuple[str, str]]
    scope_context: ScopeContext
    rights_package: RightsPackage | None
    rights_package_name: str | None


#: Reads the whole request body for :meth:`Gate.decide`, given the most bytes it may take:
#: returns the bytes; raises :class:`RequestBodyTooLargeError` (413) past the limit (reading
#: no further), :class:`~samtykke_gateway.exceptions.ClientDisconnectedError` when the client
#: leaves, :class:`BadRequestError` (400, ``bad_request_body``) on anything but body messages.
#: Called only on a route whose subject is a JSON body field, after the Maskinporten token.
BodyReader = Callable[[int], Awaitable[bytes]]

#: Granted decisions :class:`Gate` remembers by default (``gateway.decision_memo_entries``).
DEFAULT_MEMO_ENTRIES = DEFAULT_DECISION_MEMO_ENTRIES

#: The verified claims sent upstream (``X-Samtykke-*``), in this order.
_CLAIM_HEADERS = (b"x-samtykke-consumer", b"x-samtykke-supplier", b"x-samtykke-consent-id",
                  b"x-samtykke-token-kind", b"x-samtykke-resource")


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Gate.decide` allowed.

    ``grant`` is ``None`` when no route names the path and ``gateway.unmatched`` passes it
    (:meth:`Gate.passes_unmatched`, middleware form): the app answers it unchecked, without
    the tokens.
    ``root_segments`` / ``app_segments``: the normalised path (decoded segments) under the
    mount prefix, and the app-relative part that was matched. ``body``: the checked request
    body (read only on a body-subject route, else ``None``). ``claim_headers``: the verified
    claims as upstream headers, ``(name, value)`` bytes, already checked fit for a header.
    """

    grant: Grant | None
    root_segments: tuple[str, ...]
    app_segments: tuple[str, ...]
    body: bytes | None = None
    claim_headers: tuple[tuple[bytes, bytes], ...] = ()


def claim_headers(grant: Grant) -> tuple[tuple[bytes, bytes], ...]:
    """The verified claims the upstream sees (consumer, supplier, consent id, token kind,
    resource), as ``X-Samtykke-*`` header pairs; absent claims are left out.

    :raises InvalidTokenError: (401, ``unforwardable_claim``) a claim is not printable ASCII
        (:func:`~samtykke_gateway.policy.intake.claim_header_value`).
    """
    claims = (grant.maskinporten.consumer, grant.maskinporten.supplier, grant.consent.consent_id,
              grant.binding.token_kind, grant.binding.resource)
    return tuple((name, claim_header_value(claim)) for name, claim in zip(_CLAIM_HEADERS, claims, strict=True)
                 if claim is not None)


class Gate:
    """Decides one request. Holds no per-request state.

    :param config: validated configuration.
    :param issuers: ``{"altinn": IssuerPolicy, "maskinporten": IssuerPolicy}``.
    :param verifier: signature/time verification with its bounded cache.
    :param clock: epoch seconds (UTC), injectable for tests.
    :param router: the route table (built from ``config.routes`` if omitted).
    :param memo_entries: most granted decisions remembered (the decision memo, LRU; see the
        module docstring); ``0`` turns the memo off.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        issuers: Mapping[str, IssuerPolicy],
        verifier: TokenVerifier,
        clock: Callable[[], float] = time.time,
        router: Router | None = None,
        memo_entries: int = DEFAULT_MEMO_ENTRIES,
    ) -> None:
        self.config = config
        self.issuers = issuers
        self.verifier = verifier
        self.clock = clock
        self.router = router or Router(config.routes)
        self._routes_by_name = {route.name: route for route in config.routes}
        if memo_entries < 0:
            raise ValueError("memo_entries must not be negative")
        self._memo: LRUCache[Hashable, _Granted] | None = LRUCache(maxsize=memo_entries) if memo_entries else None
        # the header values a memoised decision reads (names of all headers are in the key)
        reads = {"authorization", config.consent_header, "connection", "content-length", "transfer-encoding"}
        for route in config.routes:
            if _memoisable(route):
                reads |= route.subject.read_headers
        self._memo_reads = tuple(sorted(reads))
        #: decisions served from the memo (a plain count, for tests and benchmarks)
        self.memo_hits = 0

    def error_codes(self, route_name: str | None) -> Mapping[str, str]:
        """The named route's own error codes (``[routes.error_codes]``; empty for none or an
        unknown name): after a refusal, ``record.route`` says which route had matched."""
        route = self._routes_by_name.get(route_name) if route_name else None
        return route.error_codes if route is not None else {}

    def route(self, route_name: str | None) -> RouteConfig | None:
        """The configured route called ``route_name`` (``record.route`` after a decision)."""
        return self._routes_by_name.get(route_name) if route_name else None

    def passes_unmatched(self, segments: Sequence[str]) -> bool:
        """Whether a path no route names goes to the app unchecked: ``gateway.unmatched =
        "pass"``, or ``"pass_outside_protected"`` and the path is under no route's literal
        prefix (:meth:`Router.protects`); ``"deny"`` and unset (``None``) never."""
        mode = self.config.unmatched
        return mode == "pass" or (mode == "pass_outside_protected" and not self.router.protects(segments))

    async def decide(self, request: RawRequest, record: DisclosureRecord, *, read_body: BodyReader) -> Decision:
        """The one decision for one request, from the raw request facts (docs/protocol.md §4).

        In order: the query (:func:`~samtykke_gateway.policy.intake.parse_query`), framing
        (RFC 9112 §6), no ``GET``/``HEAD`` body, the path normalised once and taken relative to
        ``request.root_path``, the route match (unmatched: 404, or a pass-through
        :class:`Decision` with ``grant=None`` when :meth:`passes_unmatched`); on a route
        whose subject is a JSON body field, the Maskinporten token first (an unauthenticated
        caller never makes the gateway read a body), then the body through ``read_body``
        (bounded by ``max_request_body_bytes``, also by a declared ``Content-Length``, and by
        ``request_body_timeout_seconds``); then :meth:`authorize`, and the claims forwarded
        upstream (:func:`claim_headers`).

        Pure apart from ``read_body`` and the key sets' fetches: the audit guard and the
        consent-state hook (``state.before_forward``, which spends one-time consents) are the
        caller's next step, after an allow; ``explain`` does not take it.

        :param request: the raw request (:class:`~samtykke_gateway.policy.intake.RawRequest`).
        :param record: filled as facts become known (``requested_params``, ``path`` and
            ``route`` once matched, the token and consent facts); never written here.
        :param read_body: see :data:`BodyReader`.
        :raises GatewayError: the first failing check: 400 (``bad_query``,
            ``too_many_parameters``, ``ambiguous_framing``, ``unexpected_body``, ``bad_path``,
            ...), 404 ``no_route``, 405, 408, 413, 415, 401, 403, 503; never anything else for
            bad input.
        """
        memo = self._memo
        if memo is None:
            return await self._decide(request, record, read_body)
        key = self._memo_key(request)
        granted = memo.get(key)
        if granted is not None:
            decision = await self._replay(granted, request.headers, record)
            if decision is not None:
                self.memo_hits += 1
                return decision
            memo.pop(key, None)  # past a time bound, or other tokens: decide afresh
        before = _RECORD_VALUES(record)
        decision = await self._decide(request, record, read_body)
        grant = decision.grant
        if grant is not None and _memoisable(grant.match.route):
            # also any field the decision set that _RECORD_FIELDS does not name (a new one)
            changed = tuple(name for name, old, new in zip(_ALL_FIELDS, before, _RECORD_VALUES(record), strict=True)
                            if new is not old)
            memo[key] = _Granted(decision, *_record_facts(record, grant, changed))
        return decision

    def _memo_key(self, request: RawRequest) -> Hashable:
        """Every request input the decision reads (on a memoisable route): the request line,
        the root path, every header *name* (the ``_``-variant and ``Connection`` checks read
        them all) and the values of the headers it reads (:attr:`_memo_reads`)."""
        headers = request.headers
        return (request.method, request.raw_path, request.root_path, request.query_string, tuple(headers),
                tuple([tuple(v) if (v := headers.get(name)) else None for name in self._memo_reads]))

    async def _replay(self, granted: _Granted, headers: Mapping[str, list[str]],
                      record: DisclosureRecord) -> Decision | None:
        """A remembered grant for request inputs identical to its own, or ``None`` (decide
        afresh) unless the tokens verify now (the verifier runs as on every request) to equal
        tokens, the token-age bound holds and the consent is valid at this clock reading."""
        before = granted.decision
        grant = before.grant
        assert grant is not None
        route = grant.match.route
        try:
            mp = await self.maskinporten(bearer_token(headers))
            if mp is not grant.maskinporten and mp != grant.maskinporten:
                return None
            self.check_token_age(mp, route.max_token_age_seconds)
            consent = mp.consent
            if consent is None:
                token = consent_header_token(headers, self.config.consent_header)
                if token is None:
                    return None
                consent = await self.altinn2(token)
                if consent is not grant.consent and consent != grant.consent:
                    return None
        except Exception:  # the full decision raises it again, with the record filled as it goes
            return None
        now = self.clock()
        if consent.valid_to <= now or (
            consent.delegated is not None and consent.delegated > now + self.config.leeway_seconds
        ):
            return None
        for name, value in granted.record:
            setattr(record, name, value)
        for name, value in granted.record_dicts:  # the record's own copies, as the full decision makes
            setattr(record, name, {k: list(v) for k, v in value.items()})
        match = grant.match
        fresh = Grant(RouteMatch(match.route, dict(match.params), match.path), mp, consent, grant.binding,
                      grant.subject, list(grant.effective_query), grant.scope_context, grant.rights_package,
                      grant.rights_package_name)
        return Decision(fresh, before.root_segments, before.app_segments, None, before.claim_headers)

    async def _decide(self, request: RawRequest, record: DisclosureRecord, read_body: BodyReader) -> Decision:
        """:meth:`decide` without the memo."""
        query = parse_query(request.query_string)
        record.requested_params = params_as_dict(query)
        headers = request.headers
        check_request_framing(request.raw_headers)
        check_no_unexpected_body(request.method, headers)
        root, segments = app_segments(request.raw_path, request.root_path)
        match = self.router.match(request.method, segments)
        if match is None:
            if self.passes_unmatched(segments):
                return Decision(None, root, segments)
            raise NotFoundError("no such route", reason="no_route")
        record.path = match.path
        record.route = match.route.name
        body = None
        if match.route.subject.needs_body:
            # the access token first: an unauthenticated caller must not make the gateway read
            # (or, with Expect: 100-continue, ask for) a body; authorize's own check is then a
            # cache hit
            await self.maskinporten(bearer_token(headers))
            body = await self._read_body(headers, read_body)
        grant = await self.authorize(RequestFacts(request.method, query, headers, body), match, record)
        return Decision(grant, root, segments, body, claim_headers(grant))

    async def _read_body(self, headers: Mapping[str, list[str]], read_body: BodyReader) -> bytes:
        """The whole request body, for a route whose subject is in it.

        :raises RequestBodyTooLargeError: (413) ``Content-Length`` or the bytes received exceed
            ``max_request_body_bytes`` (nothing more is read).
        :raises BadRequestError: (400, ``ambiguous_framing``) fewer or more bytes than
            ``Content-Length`` said.
        :raises ClientDisconnectedError: the client disconnected before the body ended.
        :raises RequestBodyTimeoutError: (408) the body took longer than
            ``request_body_timeout_seconds``.
        """
        limit = self.config.max_request_body_bytes
        declared = declared_body_length(headers)  # framing checked: one 1-15 digit value
        if declared is not None and declared > limit:
            raise RequestBodyTooLargeError("the request body is larger than this route accepts")
        try:
            async with asyncio.timeout(self.config.request_body_timeout_seconds):
                body = await read_body(limit)
        except TimeoutError:
            raise RequestBodyTimeoutError("the request body did not arrive in time") from None
        if declared is not None and len(body) != declared:
            raise BadRequestError("the request body does not match Content-Length", reason="ambiguous_framing")
        return body

    async def maskinporten(self, token: str) -> MaskinportenToken:
        """Verify a Maskinporten access token (docs/protocol.md §4 steps 1–5, without the scope check)."""
        if len(token) > self.config.max_token_bytes:
            raise InvalidTokenError("token is too large", reason="malformed_token")
        policy = self.issuers["maskinporten"]
        # The usual token in one synchronous pass; None leaves it to the strict path below.
        fast = self.verifier.verify_typed(
            token, policy, decode_maskinporten, maskinporten_from_typed, "maskinporten"
        )
        if fast is not None:
            return fast
        verified = await self.verifier.verify(token, policy)
        return maskinporten_from_claims(
            verified.claims,
            issuer=verified.issuer,
            key_id=verified.key_id,
            expires_at=verified.expires_at,
        )

    async def altinn2(self, token: str) -> Consent:
        """Verify an Altinn 2 consent token and parse its claims (docs/protocol.md §3.1).

        :raises InvalidConsentError: (403) the consent token is malformed, wrongly signed,
            expired, ...: reason ``consent_token_*`` (:data:`CONSENT_TOKEN_REASONS`), or
            ``bad_consent_claims`` / ``test_token_refused``.
        :raises InsufficientConsentError: (403, ``altinn2_not_accepted``) no Altinn 2 issuer.
        :raises KeysUnavailableError: (503) Altinn's keys cannot be loaded.
        """
        policy = self.issuers.get("altinn")
        if policy is None:
            raise InsufficientConsentError("Altinn 2 consents are not accepted here", reason="altinn2_not_accepted")
        if len(token) > self.config.max_token_bytes:
            raise InvalidConsentError("the consent token is too large", reason="consent_token_malformed")
        try:
            verified = await self.verifier.verify(token, policy)
        except InvalidTokenError as exc:
            reason = CONSENT_TOKEN_REASONS.get(exc.reason, "consent_token_invalid")
            raise InvalidConsentError(f"consent token: {exc.detail}", reason=reason) from None
        return consent_from_altinn2_claims(
            verified.claims,
            issuer=verified.issuer,
            key_id=verified.key_id,
            allow_test_tokens=self.config.allow_test_tokens,
        )

    def max_token_age(self, route_bound: float | None) -> float | None:
        """The stricter of the Maskinporten issuer's and the route's ``max_token_age_seconds``
        (``None``: no bound)."""
        issuer = self.config.issuers.get("maskinporten")
        bounds = [b for b in (issuer.max_token_age_seconds if issuer else None, route_bound) if b is not None]
        return min(bounds) if bounds else None

    def check_token_age(self, mp: MaskinportenToken, route_bound: float | None) -> None:
        """Refuse a Maskinporten token older than the bound: ``now - iat`` in seconds, on the
        gate's clock (a revocation takes effect only when Maskinporten issues the next token,
        so a data source may bound how long an issued token is honoured; docs/protocol.md §4).

        :raises InvalidTokenError: (401, ``token_too_old``) over the bound, or no ``iat`` to
            measure it by: the client's remedy is a new Maskinporten token.
        """
        bound = self.max_token_age(route_bound)
        if bound is None:
            return
        if mp.issued_at is None:
            raise InvalidTokenError("the token has no iat, and its age is bounded here", reason="token_too_old")
        if self.clock() - mp.issued_at > bound:
            raise InvalidTokenError(
                f"the token is older than {bound:g} s (iat); fetch a new one", reason="token_too_old"
            )

    async def authorize(self, facts: RequestFacts, match: RouteMatch, record: DisclosureRecord) -> Grant:
        """Run every check for ``facts`` on the matched route; fill ``record`` as it goes.

        :raises GatewayError: the first failing check (401/403/400/404/415/503), never anything else
            for bad input.
        """
        route = match.route
        record.route = route.name
        mp = await self.maskinporten(bearer_token(facts.headers))
        record.issuer, record.key_id = mp.issuer, mp.key_id
        record.consumer, record.supplier = mp.consumer, mp.supplier
        record.client_id, record.jti = mp.client_id, mp.jti
        self.check_token_age(mp, route.max_token_age_seconds)
        if route.scope not in mp.scopes:
            raise ForbiddenError("the access token lacks the route's scope", reason="scope_missing")

        consent_token = consent_header_token(facts.headers, self.config.consent_header)
        if mp.consent is not None:
            if consent_token is not None:
                raise BadRequestError(
                    "send either an Altinn 3 token or an Altinn 2 consent header, not both",
                    reason="ambiguous_consent",
                )
            consent = mp.consent
            record.token_kind = "altinn3"
        else:
            if consent_token is None:
                legacy = f" nor the {self.config.consent_header} header (Altinn 2)" if route.altinn2_services else ""
                raise InvalidConsentError(
                    f"no consent: the Maskinporten token carries no Altinn 3 consent "
                    f"(authorization_details of type urn:altinn:consent){legacy}",
                    reason="missing_consent_token",
                )
            consent = await self.altinn2(consent_token)
            record.token_kind = "altinn2"
            record.consent_issuer, record.consent_key_id = consent.issuer, consent.key_id
        record.consent_id = consent.consent_id

        check_governed_params(route, facts.query)
        check_governed_headers(route, facts.headers, self.config.consent_header)
        subject = request_subject(route, match.params, facts.query, facts.headers, facts.body)
        record.subject = subject
        binding = bind_consent(
            route,
            consent,
            mp,
            subject,
            now=self.clock(),
            leeway_seconds=self.config.leeway_seconds,
            delegation_sources=self.config.altinn3_delegation_sources,
        )
        if consent.kind == "altinn2":
            record.supplier = consent.supplier or mp.supplier
        if binding.handled_by is not None:  # the handler called for the recipient
            record.consumer, record.handled_by = consent.consumer, binding.handled_by
        record.token_kind = binding.token_kind
        record.resource = binding.resource
        record.metadata = binding.metadata
        effective, context = apply_constraints(route, binding, match.params, facts.query)
        if route.response_subject is not None:
            context = dataclasses.replace(context, subject=subject, subject_path=route.response_subject)
        record.effective_params = params_as_dict(effective)

        package_name = route.rights_package
        if route.rights_package_param is not None:
            package_name = route.rights_package_map.get(match.params.get(route.rights_package_param, ""))
            if package_name is None:
                raise NotFoundError("unknown rights package", reason="unknown_rights_package")
        record.rights_package = package_name
        allowed = self.config.package_consumers.get(package_name) if package_name else None
        # the data consumer is the consent's recipient (== the caller, unless a handler called)
        if allowed is not None and consent.consumer not in allowed:
            raise ForbiddenError(
                "the consumer has no agreement for this rights package", reason="rights_package_not_allowed"
            )
        package = self.config.rights_packages[package_name] if package_name else None
        return Grant(
            match=match,
            maskinporten=mp,
            consent=consent,
            binding=binding,
            subject=subject,
            effective_query=effective,
            scope_context=context,
            rights_package=package,
            rights_package_name=package_name,
        )


#: Subject locations read only from the memo key's inputs (path, query, the header they
#: name): a route with another (a JSON body field, an extension location) is never memoised.
_MEMO_SUBJECTS = (PathSubject, QuerySubject, HeaderSubject)

#: Record fields a granted decision always sets: scalars, and the dict-valued ones (copied per use).
_RECORD_FIELDS = ("path", "route", "issuer", "key_id", "consumer", "supplier", "client_id", "jti", "token_kind",
                  "consent_id", "subject", "resource", "rights_package")
_DICT_FIELDS = ("requested_params", "metadata", "effective_params")
_ALL_FIELDS = tuple(f.name for f in dataclasses.fields(DisclosureRecord))
_RECORD_VALUES = operator.attrgetter(*_ALL_FIELDS)


def _memoisable(route: RouteConfig) -> bool:
    return type(route.subject) in _MEMO_SUBJECTS and not route.subject.needs_body


@dataclass(frozen=True, slots=True)
class _Granted:
    """One memo entry: the granted decision and the record fields it set (``record_dicts``:
    the dict-valued ones, copied for each use)."""

    decision: Decision
    record: tuple[tuple[str, Any], ...]
    record_dicts: tuple[tuple[str, dict[str, list[str]]], ...]


def _record_facts(record: DisclosureRecord, grant: Grant, changed: tuple[str, ...]
                  ) -> tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, dict[str, list[str]]], ...]]:
    """The fields :meth:`Gate.decide` set on ``record`` for ``grant``, as it set them: the
    Altinn 2 consent token's issuer and key only for an Altinn 2 consent, ``handled_by`` only
    when a handler called (:meth:`Gate.authorize`), and any other field in ``changed`` (set to
    another object than it held before); the dict-valued ones apart (copied)."""
    names: tuple[str, ...] = _RECORD_FIELDS
    if grant.maskinporten.consent is None:
        names += ("consent_issuer", "consent_key_id")
    if grant.binding.handled_by is not None:
        names += ("handled_by",)
    names += tuple(name for name in changed if name not in names and name not in _DICT_FIELDS)
    return (tuple((name, getattr(record, name)) for name in names),
            tuple((name, {k: list(v) for k, v in getattr(record, name).items()}) for name in _DICT_FIELDS))


def params_as_dict(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Query pairs → ``name → [values]`` (order kept), the disclosure record's form."""
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out
