"""The validated configuration: frozen dataclasses, built by :mod:`samtykke_gateway.config.load`.

Immutable: a reload builds a new :class:`GatewayConfig`. Times are in seconds and sizes in bytes
(the names say so). The TOML keys behind each field are in ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from samtykke_gateway.config.subject import SubjectSource
from samtykke_gateway.scoping.package import RightsPackage

__all__ = [
    "DEFAULT_ACCEPTED_ACTIONS",
    "DEFAULT_DECISION_MEMO_ENTRIES",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "ERROR_CODE_KINDS",
    "FeedAuthConfig",
    "FeedConfig",
    "GatewayConfig",
    "IssuerConfig",
    "PeriodConstraint",
    "Profile",
    "RouteConfig",
    "YearConstraint",
]

Profile = Literal["custom", "tt02", "prod"]

#: ``accepted_actions`` of a route that does not set it: a right covers a read when its
#: actions include one of these (compared case-insensitively; docs/protocol.md §3.3).
DEFAULT_ACCEPTED_ACTIONS = ("consent", "read")
#: ``[routes.error_codes]`` keys: the families of :attr:`GatewayError.code_kind`.
ERROR_CODE_KINDS = ("unauthenticated", "forbidden", "consent")
#: ``gateway.decision_memo_entries`` when not set: an entry is ~5 KB (an Altinn 2 pair), 512
#: cost ~2.7 MB of RSS in the 256-connection row of BENCHMARKS.md; 128 cover a burst's repeats.
DEFAULT_DECISION_MEMO_ENTRIES = 128
#: ``gateway.max_request_body_bytes`` when not set (a body route buffers the body).
DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted token issuer. Times in seconds. Exactly one of ``jwks_url``/``metadata_url``."""

    name: str
    issuer: str
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    metadata_url: str | None = None
    min_ttl_seconds: float = 60.0
    max_ttl_seconds: float = 86400.0
    default_ttl_seconds: float = 3600.0
    refetch_cooldown_seconds: float = 30.0
    fetch_timeout_seconds: float = 5.0
    #: how long cached keys stay in use past their lifetime while refreshing them fails
    max_stale_seconds: float = 86400.0
    #: ``aud`` values (RFC 7519 §4.1.3) of which the token must carry one; empty: not checked
    audiences: tuple[str, ...] = ()
    #: most seconds since the token's ``iat`` (``None``: no bound); Maskinporten only
    max_token_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class YearConstraint:
    """Request year (``source`` path/query parameter ``param``, ``YYYY``) must equal one of the
    consented values of metadata ``metadata`` (lower-cased), e.g. ``inntektsaar`` (docs/protocol.md §5)."""

    source: Literal["path", "query"]
    param: str
    metadata: str


@dataclass(frozen=True, slots=True)
class PeriodConstraint:
    """Requested ``from_param..to_param`` (``YYYY-MM`` query parameters) must lie inside the
    consented ``from_metadata..to_metadata``; a missing request bound is set to the consented
    bound before forwarding (docs/protocol.md §5 *Decision*)."""

    from_param: str = "fraOgMed"
    to_param: str = "tilOgMed"
    from_metadata: str = "fraogmed"
    to_metadata: str = "tilogmed"


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One protected route.

    ``path``: template with ``{name}`` segments, e.g. ``/api/x/{personidentifikator}``.
    ``altinn2_services``: ``"{serviceCode}_{editionCode}"`` values; ``altinn3_resources``:
    resource ids incl. migrated ids ``{org}_{serviceCode}_{editionCode}``.
    ``rights_package``: fixed package name, or ``None`` with ``rights_package_param`` naming the
    path parameter whose value selects from ``rights_package_map`` (value → package name).
    A route with no package at all is unscoped (streams through).
    """

    name: str
    methods: frozenset[str]
    path: str
    pattern: re.Pattern[str]
    scope: str
    subject: SubjectSource
    altinn2_services: tuple[str, ...] = ()
    altinn3_resources: tuple[str, ...] = ()
    migrated_resources: tuple[str, ...] = ()
    year: YearConstraint | None = None
    period: PeriodConstraint | None = None
    rights_package: str | None = None
    rights_package_param: str | None = None
    rights_package_map: Mapping[str, str] = field(default_factory=dict)
    one_time: bool = False
    daily_limit: int | None = None
    #: path (rights-package path language) to the data subject in the upstream's JSON answer;
    #: every value found there must equal the request's subject, else 502 and nothing released
    response_subject: tuple[str | None, ...] | None = None
    #: Altinn 3 ``consentRights[].action`` values (lower-cased) of which a right must hold one
    #: to cover this route (docs/protocol.md §3.3)
    accepted_actions: tuple[str, ...] = DEFAULT_ACCEPTED_ACTIONS
    #: accept an Altinn 3 token issued to the consent's handler (Maskinporten ``consumer`` ==
    #: ``handledBy``, ``to`` the recipient); refused (403) when false
    accept_handled_by: bool = False
    #: most seconds since the Maskinporten token's ``iat`` (``None``: no bound of the route's;
    #: the issuer's own bound applies too, the stricter wins)
    max_token_age_seconds: float | None = None
    #: ``error_style = "skatteetaten"``: this API's published ``kode`` per error family
    #: (:data:`ERROR_CODE_KINDS` → code, e.g. ``{"consent": "IM-010"}``)
    error_codes: Mapping[str, str] = field(default_factory=dict)

    @property
    def scoped(self) -> bool:
        return self.rights_package is not None or self.rights_package_param is not None

    @property
    def governed_params(self) -> frozenset[str]:
        """Query parameters a constraint governs (duplicates of these are refused, 400)."""
        names: set[str] = set()
        if self.period:
            names |= {self.period.from_param, self.period.to_param}
        if self.year and self.year.source == "query":
            names.add(self.year.param)
        return frozenset(names) | self.subject.governed_query_names

    @property
    def path_params(self) -> frozenset[str]:
        """Names of the path template's parameters (never accepted in the query: 400)."""
        return frozenset(self.pattern.groupindex)

    @property
    def literal_prefix(self) -> tuple[str, ...]:
        """The template's segments before its first ``{parameter}`` (all of them when it has
        none): ``("api", "v1", "studielan")`` for ``/api/v1/studielan/{fnr}/saldo``."""
        out: list[str] = []
        for segment in self.path.split("/")[1:]:
            if segment.startswith("{"):
                break
            out.append(segment)
        return tuple(out)
@dataclass(frozen=True, slots=True)
class FeedAuthConfig:
    """Maskinporten JWT-grant credentials for the consent feed (RFC 7523; Digdir
    ``maskinporten_protocol_token``). ``key_file``: PEM RSA private key; ``audience``: the
    Maskinporten issuer (``https://maskinporten.no/``)."""

    token_url: str
    audience: str
    client_id: str
    scope: str
    key_file: str
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """``[state.feed]``: the Altinn 2 service-owner consent-list poller (docs/protocol.md §8;
    legacy: the endpoint closed with Altinn 2 on 19 June 2026).

    ``kind``: ``altinn2`` (``GET /api/serviceowner/consents``), the only kind: Altinn 3 has no
    data-source consent feed. ``services``: ``"{serviceCode}_{editionCode}"`` to poll
    (default: every route's ``altinn2_service``); a stale feed refuses only Altinn 2 consents
    for these services. ``api_key_env``: name of the environment
    variable holding the Altinn ``ApiKey`` (never the key itself in the file). Times in seconds;
    ``max_staleness_seconds`` = 0 never treats the feed as stale.
    """

    kind: Literal["altinn2"]
    url: str
    services: tuple[str, ...]
    interval_seconds: float = 60.0
    timeout_seconds: float = 10.0
    max_pages_per_poll: int = 100
    max_staleness_seconds: float = 900.0
    api_key_env: str | None = None
    maskinporten: FeedAuthConfig | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole validated configuration (immutable; a reload builds a new one)."""

    profile: Profile
    issuers: Mapping[str, IssuerConfig]
    routes: tuple[RouteConfig, ...]
    rights_packages: Mapping[str, RightsPackage]
    upstream_url: str | None
    audit_url: str
    #: package name → the consumers (org numbers) that may use it; a package not named here
    #: is open to every consumer whose consent and route reach it
    package_consumers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    consent_header: str = "AltinnSamtykke"
    error_style: Literal["problem", "skatteetaten"] = "problem"
    leeway_seconds: float = 30.0
    max_token_bytes: int = 16384
    token_cache_entries: int = 4096
    #: granted decisions remembered by request inputs (``policy/decide.py``, the decision memo); 0: off
    decision_memo_entries: int = DEFAULT_DECISION_MEMO_ENTRIES
    altinn3_delegation_sources: tuple[str, ...] = ()
    #: requests no route names: ``"deny"`` (404 ``no_route``), ``"pass"`` (the app answers),
    #: ``"pass_outside_protected"`` (the app answers paths outside :attr:`protected_prefixes`,
    #: 404 under them); ``None`` (not set): the form decides — the middleware
    #: ``"pass_outside_protected"``, the sidecar ``"deny"`` (it refuses the other two)
    unmatched: Literal["deny", "pass", "pass_outside_protected"] | None = None
    upstream_timeout_seconds: float = 10.0
    upstream_connect_timeout_seconds: float = 3.0
    #: most seconds for one whole upstream exchange, body included (504 / stream cut beyond)
    upstream_deadline_seconds: float = 60.0
    max_body_bytes: int = 10 * 1024 * 1024
    #: most request-body bytes read on a route whose subject is in the JSON body (413 beyond)
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    #: seconds the whole body of a body-subject request may take to arrive (408 beyond)
    request_body_timeout_seconds: float = 10.0
    release_headers: frozenset[bytes] = frozenset()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    health_path: str = "/healthz"
    ready_path: str = "/readyz"
    metrics_path: str = "/metrics"
    state_url: str = "memory://"
    revocation_file: str | None = None
    jti_replay: Literal["off", "log", "refuse"] = "log"
    state_key_prefix: str = "samtykke:"
    check_revocation: bool = True
    state_feed: FeedConfig | None = None
    source_path: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def allow_test_tokens(self) -> bool:
        """``False`` under ``prod``: Altinn test-generator tokens (``actual_iss``) are refused."""
        return self.profile != "prod"

    @property
    def protected_prefixes(self) -> tuple[tuple[str, ...], ...]:
        """The path prefixes the routes protect, as decoded literal segments, in route order
        without repeats: each route's template up to its first ``{parameter}`` (the whole
        template when it has none), e.g. ``("api", "v1", "studielan")`` for
        ``/api/v1/studielan/{fnr}/saldo``. A path whose first segments are a prefix's is
        *under* it; under ``unmatched = "pass_outside_protected"`` such a path that no route
        names is refused (404 ``no_route``), every other unmatched path passes to the app."""
        out: list[tuple[str, ...]] = []
        for route in self.routes:
            prefix = route.literal_prefix
            if prefix not in out:
                out.append(prefix)
        return tuple(out)

    @property
    def issuers_in_use(self) -> frozenset[str]:
        """Names of the ``[issuers.*]`` some route needs: ``maskinporten`` always (every request
        carries a Maskinporten bearer), ``altinn`` when a route accepts Altinn 2 consents
        (legacy, docs/protocol.md §2). Only these are loaded at start and checked by readiness."""
        used = {"maskinporten"}
        if any(route.altinn2_services for route in self.routes):
            used.add("altinn")
        return frozenset(used)

