"""Gateway configuration: TOML → frozen dataclasses.

Every error is a :class:`~samtykke_gateway.exceptions.ConfigError` naming the key path
(``routes[2].subject``). Unknown keys are errors: a typo must not silently disable a check.
The format is documented in ``config/README.md``; the tables are ``[gateway]``, ``[upstream]``,
``[audit]``, ``[issuers.altinn]``, ``[issuers.maskinporten]``, ``[[routes]]`` and
``[rights_packages.<name>]``.

Profiles (docs/protocol.md §3): ``tt02`` and ``prod`` preset Maskinporten's issuer and JWKS
(the Altinn 3 consent travels inside that token). Altinn 2 is legacy: its issuer is configured
only by an ``[issuers.altinn]`` table, which under ``tt02``/``prod`` starts from the profile's
Altinn JWKS (discovered through ``/.well-known/oauth-authorization-server``). A profile never
trusts the other environment's keys, and ``prod`` refuses Altinn test-generator tokens
(``actual_iss``). ``custom`` (default) takes issuers as written.
"""

from __future__ import annotations

import ipaddress
import math
import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.config_text import read_config_text
from samtykke_gateway.identifiers import is_org_number
from samtykke_gateway.scoping.package import RightsPackage
from samtykke_gateway.scoping.paths import parse_path

__all__ = [
    "FeedAuthConfig",
    "FeedConfig",
    "GatewayConfig",
    "IssuerConfig",
    "PeriodConstraint",
    "RouteConfig",
    "SubjectSource",
    "YearConstraint",
    "load_config",
    "memory_state_warning",
    "parse_config",
]

Profile = Literal["custom", "tt02", "prod"]

#: Issuers a profile presets: Maskinporten only. Every live consent arrives as an Altinn 3
#: consent inside the Maskinporten token (docs/protocol.md §2), so nothing of Altinn 2 is
#: preloaded.
PROFILE_ISSUERS: dict[str, dict[str, dict[str, Any]]] = {
    "tt02": {
        "maskinporten": {
            "issuer": "https://test.maskinporten.no/",
            "jwks_url": "https://test.maskinporten.no/jwk",
            "algorithms": ["RS256", "RS384", "RS512"],
        },
    },
    "prod": {
        "maskinporten": {
            "issuer": "https://maskinporten.no/",
            "jwks_url": "https://maskinporten.no/jwk",
            "algorithms": ["RS256", "RS384", "RS512"],
        },
    },
}
#: Altinn 2 consent-token issuer per profile (legacy, docs/protocol.md §3.1): filled in only when
#: the config has an ``[issuers.altinn]`` table (an empty one takes these values as they are).
PROFILE_ALTINN2_ISSUERS: dict[str, dict[str, Any]] = {
    "tt02": {
        "issuer": "altinn.no",
        "metadata_url": "https://tt02.altinn.no/.well-known/oauth-authorization-server",
        "algorithms": ["RS256"],
    },
    "prod": {
        "issuer": "altinn.no",
        "metadata_url": "https://www.altinn.no/.well-known/oauth-authorization-server",
        "algorithms": ["RS256"],
    },
}
#: ``delegation_source`` of Altinn 3 supplier tokens, per profile: the published values
#: (Altinn's retrieve-token guide for TT02, Digdir's token reference for production;
#: docs/protocol.md §3.3). Compared without a trailing ``/`` on either side.
PROFILE_DELEGATION_SOURCE = {
    "tt02": "https://tt02.altinn.no/",
    "prod": "https://www.altinn.no",
}
#: ``accepted_actions`` of a route that does not set it: a right covers a read when its
#: actions include one of these (compared case-insensitively; docs/protocol.md §3.3).
DEFAULT_ACCEPTED_ACTIONS = ("consent", "read")
#: ``[routes.error_codes]`` keys: the families of :attr:`GatewayError.code_kind`.
ERROR_CODE_KINDS = ("unauthenticated", "forbidden", "consent")
_ERROR_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_ACTION_NAME = re.compile(r"[!-~]{1,64}")
_TEST_MARKERS = (
    "tt02.",
    "test.maskinporten",
    "altinn-test",
    "dev.altinn.local",
    "dev.maskinporten",
)

_ALLOWED_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEGMENT_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_SERVICE = re.compile(r"[0-9]{1,10}_[0-9]{1,10}")
_RESOURCE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,127}")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
#: Methods whose request body a body subject can be read from.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODY_MEMBER = re.compile(r"[\w$@-]{1,128}")
_MAX_BODY_FIELD_DEPTH = 8
#: ``gateway.max_request_body_bytes``: default and upper bound (a body route buffers the body).
DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 1024
_MAX_REQUEST_BODY_LIMIT = 16 * 1024 * 1024


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
class SubjectSource:
    """Where the request names its data subject: ``source`` is path, header, query or body.

    ``body``: ``name`` is a member name or a dotted path into nested objects
    (``person.ident``) of the JSON request body; ``field_path`` holds its components and
    ``shadows`` the lower-cased names a query parameter must not carry (the last component and
    every leading path, ``person`` and ``person.ident``: frameworks merge query and body
    values, some shallowly, so a query ``person`` replaces the whole object).
    """

    source: Literal["path", "header", "query", "body"]
    name: str
    field_path: tuple[str, ...] = ()
    shadows: frozenset[str] = frozenset()


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
        if self.subject.source == "query":
            names.add(self.subject.name)
        return frozenset(names)

    @property
    def path_params(self) -> frozenset[str]:
        """Names of the path template's parameters (never accepted in the query: 400)."""
        return frozenset(self.pattern.groupindex)


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
    altinn3_delegation_sources: tuple[str, ...] = ()
    unmatched: Literal["deny", "pass"] = "deny"
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
    def issuers_in_use(self) -> frozenset[str]:
        """Names of the ``[issuers.*]`` some route needs: ``maskinporten`` always (every request
        carries a Maskinporten bearer), ``altinn`` when a route accepts Altinn 2 consents
        (legacy, docs/protocol.md §2). Only these are loaded at start and checked by readiness."""
        used = {"maskinporten"}
        if any(route.altinn2_services for route in self.routes):
            used.add("altinn")
        return frozenset(used)


# ----------------------------------------------------------------------------- helpers


#: Largest number a setting may hold (seconds, bytes, counts): ~3 years in seconds, 1 GB.
_MAX_NUMBER = 1e9


class _Table:
    """Read keys from one TOML table, remembering its key path and refusing unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
    ) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                near = difflib.get_close_matches(name, [k for k in self.data if isinstance(k, str)], n=1)
                hint = f" (the table has {near[0]!r}: a typo?)" if near else ""
                raise ConfigError(self.key(name), "is required" + hint)
            return default
        value = self.data[name]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(self.key(name), "must be a number")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(self.key(name), f"must be {want}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = float(self.get(name, (int, float), default))
        if not math.isfinite(value) or value > _MAX_NUMBER:  # nan passed every check, inf broke timers
            raise ConfigError(self.key(name), f"must be a finite number up to {_MAX_NUMBER:g}")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be >= {minimum}")
        return value

    def str_list(self, name: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self.get(name, (list, str), [])
        items = [value] if isinstance(value, str) else value
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or (pattern is not None and not pattern.fullmatch(item)):
                raise ConfigError(f"{self.key(name)}[{i}]", "is not a valid value")
            out.append(item)
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _compile_path(template: str, key: str) -> tuple[re.Pattern[str], set[str]]:
    if not template.startswith("/") or "//" in template or "?" in template or "#" in template:
        raise ConfigError(key, "must be an absolute path without query, '//' or fragment")
    names: set[str] = set()
    parts = []
    for seg in template.split("/")[1:]:
        m = _PARAM.fullmatch(seg)
        if m:
            if m.group(1) in names:
                raise ConfigError(key, f"parameter {{{m.group(1)}}} appears twice")
            names.add(m.group(1))
            parts.append(f"(?P<{m.group(1)}>[^/]+)")
        elif seg in ("", ".", ".."):
            raise ConfigError(key, "empty and dot segments are not allowed")
        elif _SEGMENT_LITERAL.fullmatch(seg):
            parts.append(re.escape(seg))
        else:
            raise ConfigError(key, f"segment {seg!r} is not allowed")
    return re.compile("/" + "/".join(parts)), names


def _issuer(name: str, data: Mapping[str, Any], path: str) -> IssuerConfig:
    t = _Table(dict(data), path)
    issuer = t.get("issuer", str, required=True)
    jwks_url = t.get("jwks_url", str)
    metadata_url = t.get("metadata_url", str)
    if (jwks_url is None) == (metadata_url is None):
        raise ConfigError(t.key("jwks_url"), "give exactly one of jwks_url and metadata_url")
    for k, url in (("jwks_url", jwks_url), ("metadata_url", metadata_url)):
        if url is not None and not url.startswith(("https://", "http://")):
            raise ConfigError(t.key(k), "must be an http(s) URL")
    if "algorithms" in t.data and not t.data["algorithms"]:
        raise ConfigError(t.key("algorithms"), "must name at least one algorithm")
    algs = t.str_list("algorithms") or ("RS256",)
    for i, alg in enumerate(algs):
        if alg not in _ALLOWED_ALGS:
            raise ConfigError(f"{t.key('algorithms')}[{i}]", f"{alg!r} is not an allowed algorithm")
    cfg = IssuerConfig(
        name=name,
        issuer=issuer,
        algorithms=algs,
        jwks_url=jwks_url,
        metadata_url=metadata_url,
        min_ttl_seconds=t.number("min_ttl_seconds", 60.0),
        max_ttl_seconds=t.number("max_ttl_seconds", 86400.0),
        default_ttl_seconds=t.number("default_ttl_seconds", 3600.0),
        refetch_cooldown_seconds=t.number("refetch_cooldown_seconds", 30.0),
        fetch_timeout_seconds=t.number("fetch_timeout_seconds", 5.0, minimum=0.01),
        max_stale_seconds=t.number("max_stale_seconds", 86400.0),
        audiences=_audiences(t),
        max_token_age_seconds=_max_token_age(t),
    )
    t.finish()
    if name != "maskinporten" and cfg.max_token_age_seconds is not None:
        raise ConfigError(t.key("max_token_age_seconds"), "applies to the Maskinporten issuer only")
    if cfg.min_ttl_seconds > cfg.max_ttl_seconds:
        raise ConfigError(t.key("min_ttl_seconds"), "must not exceed max_ttl_seconds")
    return cfg


def _max_token_age(t: _Table) -> float | None:
    """``max_token_age_seconds``: a bound on ``now - iat`` (a revocation takes effect only
    when Maskinporten issues the next token); absent: no bound."""
    if "max_token_age_seconds" not in t.data:
        t.used.add("max_token_age_seconds")
        return None
    return t.number("max_token_age_seconds", 0.0, minimum=1.0)


def _accepted_actions(t: _Table) -> tuple[str, ...]:
    """``accepted_actions``: non-empty list of Altinn 3 action names, stored lower-cased."""
    if "accepted_actions" not in t.data:
        t.used.add("accepted_actions")
        return DEFAULT_ACCEPTED_ACTIONS
    values = t.str_list("accepted_actions", _ACTION_NAME)
    if not values:
        raise ConfigError(t.key("accepted_actions"), "name at least one action, or leave the key out")
    return tuple(dict.fromkeys(v.lower() for v in values))


def _error_codes(t: _Table) -> dict[str, str]:
    """``[routes.error_codes]``: ``unauthenticated`` / ``forbidden`` / ``consent`` → code."""
    raw = t.get("error_codes", dict, {})
    et = _Table(raw, t.key("error_codes"))
    out = {}
    for kind in ERROR_CODE_KINDS:
        value = et.get(kind, str)
        if value is None:
            continue
        if _ERROR_CODE.fullmatch(value) is None:
            raise ConfigError(et.key(kind), "must be a short code like 'IM-010'")
        out[kind] = value
    et.finish()
    return out


def _package_consumers(value: Any, key: str) -> frozenset[str]:
    """``consumers``: the organisation numbers (9 ASCII digits) whose requests may use the
    package — the data source's agreements; an empty list is refused (it would lock everyone
    out, and not listing the key means "any consumer")."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of organisation numbers")
    for i, item in enumerate(value):
        if not is_org_number(item):
            raise ConfigError(f"{key}[{i}]", "is not an organisation number (9 digits)")
    return frozenset(value)


def _audiences(t: _Table) -> tuple[str, ...]:
    """``audience``: one string or a list (the data source's audience URIs, e.g. the resource
    indicator a Maskinporten client asks for); an empty list is refused rather than read as
    "no check"."""
    if "audience" in t.data and not t.data["audience"]:
        raise ConfigError(t.key("audience"), "give at least one audience, or leave the key out")
    values = t.str_list("audience")
    for i, value in enumerate(values):
        if not value.strip() or value != value.strip() or len(value) > 512 or value == "unspecified":
            raise ConfigError(f"{t.key('audience')}[{i}]", "is not a usable audience")
    return values


def _subject(value: Any, key: str, path_params: set[str]) -> SubjectSource:
    t = _Table(value, key)
    given = [(s, t.get(s, str)) for s in ("path", "header", "query", "body")]
    given = [(s, v) for s, v in given if v is not None]
    t.finish()
    if len(given) != 1:
        raise ConfigError(key, "give exactly one of path, header, query or body")
    source, name = given[0]
    if source == "body":
        return _body_subject(name, f"{key}.body", path_params)
    if source == "path" and name not in path_params:
        raise ConfigError(f"{key}.path", f"{{{name}}} is not a parameter of the route path")
    if source == "header" and not _HEADER_NAME.fullmatch(name):
        raise ConfigError(f"{key}.header", "is not a valid header name")
    return SubjectSource(source, name.lower() if source == "header" else name)  # type: ignore[arg-type]


def _body_subject(name: str, key: str, path_params: set[str]) -> SubjectSource:
    """``subject = { body = "fnr" }`` or ``{ body = "person.ident" }``."""
    parts = tuple(name.split("."))
    if len(parts) > _MAX_BODY_FIELD_DEPTH or not all(_BODY_MEMBER.fullmatch(p) for p in parts):
        raise ConfigError(key, f"must be a member name or a dotted path of at most {_MAX_BODY_FIELD_DEPTH}"
                               " names (letters, digits, _ $ @ -)")
    leaf = parts[-1].lower()
    # the leaf and every leading path (person, person.ident): a merged query or route value
    # with one of these names can replace the field or an object holding it
    lowered = [p.lower() for p in parts]
    shadows = frozenset({leaf, *(".".join(lowered[:i]) for i in range(1, len(lowered) + 1))})
    for param in path_params:
        if param.lower() in shadows:
            raise ConfigError(key, f"{{{param}}} is also a path parameter: frameworks that merge route and"
                                   " body values could read the other one")
    return SubjectSource("body", name, parts, shadows)


def _route(index: int, data: Any, packages: Mapping[str, RightsPackage]) -> RouteConfig:
    key = f"routes[{index}]"
    t = _Table(data, key)
    name = t.get("name", str, required=True)
    path = t.get("path", str, required=True)
    pattern, params = _compile_path(path, t.key("path"))
    methods = t.str_list("method") or ("GET",)
    for i, m in enumerate(methods):
        if m.upper() not in _METHODS:
            raise ConfigError(f"{t.key('method')}[{i}]", f"{m!r} is not an HTTP method")
    methods_set = frozenset(m.upper() for m in methods)
    if "GET" in methods_set:
        methods_set |= {"HEAD"}
    scope = t.get("scope", str, required=True)
    if not scope or " " in scope:
        raise ConfigError(t.key("scope"), "must be one Maskinporten scope")
    subject = _subject(t.get("subject", dict, required=True), t.key("subject"), params)
    if subject.source == "body" and not methods_set <= _BODY_METHODS:
        raise ConfigError(t.key("method"), "a body subject needs POST, PUT or PATCH only"
                                           " (GET, HEAD, DELETE and OPTIONS carry no body the gateway reads)")
    services = t.str_list("altinn2_service", _SERVICE)
    resources = t.str_list("altinn3_resources", _RESOURCE)
    migrated_org = t.get("altinn3_migrated_org", str)
    migrated = tuple(f"{migrated_org}_{s}" for s in services) if migrated_org else ()
    if migrated_org is not None and not re.fullmatch(r"[a-z0-9]{2,20}", migrated_org):
        raise ConfigError(t.key("altinn3_migrated_org"), "must be an Altinn org code like 'skd'")
    if not services and not resources and not migrated:
        raise ConfigError(key, "needs altinn2_service or altinn3_resources")

    year = None
    if "year" in t.data:
        yt = _Table(t.get("year", dict), t.key("year"))
        source = yt.get("source", str, "path")
        param = yt.get("param", str, required=True)
        metadata = yt.get("metadata", str, param)
        yt.finish()
        if source not in ("path", "query"):
            raise ConfigError(yt.key("source"), "must be 'path' or 'query'")
        if source == "path" and param not in params:
            raise ConfigError(yt.key("param"), f"{{{param}}} is not a parameter of the route path")
        year = YearConstraint(source, param, metadata.lower())  # type: ignore[arg-type]
    period = None
    if "period" in t.data:
        pt = _Table(t.get("period", dict), t.key("period"))
        period = PeriodConstraint(
            from_param=pt.get("from_param", str, "fraOgMed"),
            to_param=pt.get("to_param", str, "tilOgMed"),
            from_metadata=pt.get("from_metadata", str, "fraOgMed").lower(),
            to_metadata=pt.get("to_metadata", str, "tilOgMed").lower(),
        )
        pt.finish()

    if subject.source == "body":
        governed = {period.from_param.lower(), period.to_param.lower()} if period is not None else set()
        if year is not None and year.source == "query":
            governed.add(year.param.lower())
        if governed & subject.shadows:
            raise ConfigError(t.key("subject.body"), "is also a governed query parameter of the route")

    package = t.get("rights_package", (str, dict))
    unscoped = t.get("unscoped", bool, False)
    if package is None and not unscoped:
        raise ConfigError(t.key("rights_package"),
                          "is required (scoping is deny-by-default); set unscoped = true to stream bodies as they are")
    if package is not None and unscoped:
        raise ConfigError(t.key("unscoped"), "contradicts rights_package")
    fixed, param_name, mapping = None, None, {}
    if isinstance(package, str):
        if package not in packages:
            raise ConfigError(t.key("rights_package"), f"no rights package named {package!r}")
        fixed = package
    elif isinstance(package, dict):
        rt = _Table(package, t.key("rights_package"))
        param_name = rt.get("param", str, required=True)
        if param_name not in params:
            raise ConfigError(
                rt.key("param"), f"{{{param_name}}} is not a parameter of the route path"
            )
        raw_map = rt.get("packages", dict, required=True)
        for value, pkg in raw_map.items():
            if not isinstance(pkg, str) or pkg not in packages:
                raise ConfigError(
                    f"{rt.key('packages')}.{value}", f"no rights package named {pkg!r}"
                )
            mapping[value] = pkg
        if not mapping:
            raise ConfigError(rt.key("packages"), "must name at least one package")
        rt.finish()
    daily = t.get("daily_limit", int)
    if daily is not None and daily < 1:
        raise ConfigError(t.key("daily_limit"), "must be >= 1")
    response_subject = None
    if "response_subject" in t.data:
        if unscoped:
            raise ConfigError(t.key("response_subject"), "needs a rights package: unscoped bodies are not read")
        response_subject = parse_path(t.get("response_subject", str), t.key("response_subject"))
    route = RouteConfig(
        name=name,
        methods=methods_set,
        path=path,
        pattern=pattern,
        scope=scope,
        subject=subject,
        altinn2_services=services,
        altinn3_resources=resources,
        migrated_resources=migrated,
        year=year,
        period=period,
        rights_package=fixed,
        rights_package_param=param_name,
        rights_package_map=mapping,
        one_time=t.get("one_time", bool, False),
        daily_limit=daily,
        response_subject=response_subject,
        accepted_actions=_accepted_actions(t),
        accept_handled_by=t.get("accept_handled_by", bool, False),
        max_token_age_seconds=_max_token_age(t),
        error_codes=_error_codes(t),
    )
    t.finish()
    return route


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, source_path: str | None = None
) -> GatewayConfig:
    """Validate a decoded TOML document.

    :param base_dir: directory that relative file names (audit SQLite path, value lists)
        resolve against — the config file's directory.
    :raises ConfigError: naming the key path of the first problem.
    """
    top = _Table(dict(data), "")
    gw = _Table(top.get("gateway", dict, {}), "gateway")
    profile = gw.get("profile", str, "custom")
    if profile not in ("custom", "tt02", "prod"):
        raise ConfigError("gateway.profile", "must be 'custom', 'tt02' or 'prod'")

    issuers_raw = top.get("issuers", dict, {})
    presets = dict(PROFILE_ISSUERS.get(profile, {}))
    if "altinn" in issuers_raw and profile in PROFILE_ALTINN2_ISSUERS:
        presets["altinn"] = PROFILE_ALTINN2_ISSUERS[profile]  # legacy: only when asked for
    issuers: dict[str, IssuerConfig] = {}
    for name in ("altinn", "maskinporten"):
        raw = dict(presets.get(name, {}))
        own = issuers_raw.get(name)
        if own is not None:
            if not isinstance(own, dict):
                raise ConfigError(f"issuers.{name}", "must be a table")
            if name in presets and ("jwks_url" in own or "metadata_url" in own):
                raw.pop("jwks_url", None)
                raw.pop("metadata_url", None)
            raw.update(own)
        if raw or own is not None:
            issuers[name] = _issuer(name, raw, f"issuers.{name}")
    for name in issuers_raw:
        if name not in ("altinn", "maskinporten"):
            raise ConfigError(f"issuers.{name}", "unknown issuer (use 'altinn' or 'maskinporten')")
    if "maskinporten" not in issuers:
        raise ConfigError("issuers.maskinporten", "is required (or set gateway.profile)")
    if profile == "prod":
        for name, issuer_cfg in issuers.items():
            for url in (issuer_cfg.jwks_url, issuer_cfg.metadata_url, issuer_cfg.issuer):
                if url and any(marker in url for marker in _TEST_MARKERS):
                    raise ConfigError(f"issuers.{name}", "a prod profile never trusts test keys")
    if profile in ("tt02", "prod"):
        for name, issuer_cfg in issuers.items():
            for url in (issuer_cfg.jwks_url, issuer_cfg.metadata_url):
                if url and not url.startswith("https://"):
                    raise ConfigError(f"issuers.{name}", "keys are trusted only over https:// in tt02/prod")
    if profile == "tt02":
        for name, issuer_cfg in issuers.items():
            for url in (issuer_cfg.jwks_url, issuer_cfg.metadata_url):
                if url and url.startswith(("https://www.altinn.no", "https://maskinporten.no")):
                    raise ConfigError(
                        f"issuers.{name}", "a tt02 profile never trusts production keys"
                    )

    packages_raw = top.get("rights_packages", dict, {})
    packages: dict[str, RightsPackage] = {}
    package_consumers: dict[str, frozenset[str]] = {}
    for name, table in packages_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"rights_packages.{name}", "must be a table")
        if "consumers" in table:
            table = dict(table)
            package_consumers[name] = _package_consumers(table.pop("consumers"), f"rights_packages.{name}.consumers")
        packages[name] = RightsPackage.from_config(
            name, table, base_dir=base_dir, key_path=f"rights_packages.{name}"
        )
    routes_raw = top.get("routes", list, [])
    routes = tuple(_route(i, r, packages) for i, r in enumerate(routes_raw))
    _check_shadowing(routes)
    seen: set[str] = set()
    for i, r in enumerate(routes):
        if r.name in seen:
            raise ConfigError(f"routes[{i}].name", f"duplicate route name {r.name!r}")
        seen.add(r.name)
        if r.altinn2_services and "altinn" not in issuers:
            raise ConfigError(f"routes[{i}].altinn2_service",
                              "needs [issuers.altinn] (Altinn 2 is legacy and never preloaded; under profile"
                              " tt02/prod an empty [issuers.altinn] table takes the profile's Altinn 2 keys)")

    up = _Table(top.get("upstream", dict, {}), "upstream")
    upstream_url = up.get("url", str)
    if upstream_url is not None:
        _check_upstream_url(upstream_url, "upstream.url")
    upstream_timeout = up.number("timeout_seconds", 10.0, minimum=0.01)
    connect_timeout = up.number("connect_timeout_seconds", 3.0, minimum=0.01)
    deadline = up.number("deadline_seconds", 60.0, minimum=0.01)
    if deadline < upstream_timeout:
        raise ConfigError("upstream.deadline_seconds", "must not be below timeout_seconds")
    max_body = int(up.number("max_body_bytes", 10 * 1024 * 1024, minimum=1))
    release_headers = frozenset(h.lower().encode("ascii") for h in up.str_list("release_headers", _HEADER_NAME))
    up.finish()

    au = _Table(top.get("audit", dict, {}), "audit")
    audit_url = _resolve_store_url(
        au.get("url", str, "sqlite:///samtykke-audit.db"), base_dir, "audit.url"
    )
    au.finish()
    if profile in ("tt02", "prod") and audit_url.startswith("memory://"):
        raise ConfigError("audit.url", "memory:// is not durable: use sqlite or postgresql in tt02/prod")

    st = _Table(top.get("state", dict, {}), "state")
    state_url = st.get("url", str, "memory://")
    if not state_url.startswith(("memory://", "redis://", "rediss://")):
        raise ConfigError("state.url", "must be memory:// or redis://")
    revocation_file = st.get("revocation_file", str)
    if revocation_file is not None:
        revocation_file = str((base_dir / revocation_file).resolve())
    jti_replay = st.get("jti_replay", str, "log")
    if jti_replay not in ("off", "log", "refuse"):
        raise ConfigError("state.jti_replay", "must be 'off', 'log' or 'refuse'")
    key_prefix = st.get("key_prefix", str, "samtykke:")
    if not re.fullmatch(r"[A-Za-z0-9:._-]{1,64}", key_prefix):
        raise ConfigError("state.key_prefix", "must be 1-64 of A-Z a-z 0-9 : . _ -")
    check_revocation = st.get("check_revocation", bool, True)
    feed = _feed(st.get("feed", dict), routes, base_dir) if "feed" in st.data else None
    if not check_revocation and (feed is not None or revocation_file is not None):
        raise ConfigError("state.check_revocation", "must be true with a revocation_file or feed")
    st.finish()

    consent_header = gw.get("consent_header", str, "AltinnSamtykke")
    if not _HEADER_NAME.fullmatch(consent_header):
        raise ConfigError("gateway.consent_header", "is not a valid header name")
    error_style = gw.get("error_style", str, "problem")
    if error_style not in ("problem", "skatteetaten"):
        raise ConfigError("gateway.error_style", "must be 'problem' or 'skatteetaten'")
    unmatched = gw.get("unmatched", str, "deny")
    if unmatched not in ("deny", "pass"):
        raise ConfigError("gateway.unmatched", "must be 'deny' or 'pass'")
    delegation = gw.get("altinn3_delegation_sources", list, None)
    if delegation is None:
        delegation_sources: tuple[str, ...] = (
            (PROFILE_DELEGATION_SOURCE[profile],) if profile in PROFILE_DELEGATION_SOURCE else ()
        )
    else:
        delegation_sources = gw.str_list("altinn3_delegation_sources")
    proxies = []
    for i, cidr in enumerate(gw.str_list("trusted_proxies")):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"gateway.trusted_proxies[{i}]", "is not an IP network") from None
    paths: dict[str, str] = {}
    for k, default in (
        ("health_path", "/healthz"),
        ("ready_path", "/readyz"),
        ("metrics_path", "/metrics"),
    ):
        value = gw.get(k, str, default)
        if not value.startswith("/"):
            raise ConfigError(f"gateway.{k}", "must start with '/'")
        if any(c in value for c in "?#") or any(c.isspace() or not c.isprintable() for c in value):
            # compared with the request path alone: a query or fragment never matches
            raise ConfigError(f"gateway.{k}", "must be a plain path (no query, fragment, space or control character)")
        for other, taken in paths.items():
            if taken == value:
                raise ConfigError(f"gateway.{k}", f"is also gateway.{other} ({value}): each probe needs its own path")
        for i, r in enumerate(routes):
            if r.path == value:
                raise ConfigError(f"gateway.{k}", f"is also the path of routes[{i}] ({r.name}): the sidecar"
                                                  " answers the probe there and never reaches the route")
        paths[k] = value
    cfg = GatewayConfig(
        profile=profile,  # type: ignore[arg-type]
        issuers=issuers,
        routes=routes,
        rights_packages=packages,
        package_consumers=package_consumers,
        upstream_url=upstream_url.rstrip("/") if upstream_url else None,
        audit_url=audit_url,
        consent_header=consent_header.lower(),
        error_style=error_style,  # type: ignore[arg-type]
        leeway_seconds=_leeway(gw),
        max_token_bytes=int(gw.number("max_token_bytes", 16384, minimum=256)),
        max_request_body_bytes=_max_request_body(gw),
        request_body_timeout_seconds=gw.number("request_body_timeout_seconds", 10.0, minimum=0.01),
        token_cache_entries=int(gw.number("token_cache_entries", 4096)),
        altinn3_delegation_sources=delegation_sources,
        unmatched=unmatched,  # type: ignore[arg-type]
        upstream_timeout_seconds=upstream_timeout,
        upstream_connect_timeout_seconds=connect_timeout,
        upstream_deadline_seconds=deadline,
        max_body_bytes=max_body,
        release_headers=release_headers,
        trusted_proxies=tuple(proxies),
        state_url=state_url,
        revocation_file=revocation_file,
        jti_replay=jti_replay,  # type: ignore[arg-type]
        state_key_prefix=key_prefix,
        check_revocation=check_revocation,
        state_feed=feed,
        source_path=source_path,
        raw=dict(data),
        **paths,
    )
    gw.finish()
    unknown = sorted(
        set(data)
        - {"gateway", "issuers", "rights_packages", "routes", "upstream", "audit", "state"}
    )
    if unknown:
        raise ConfigError(unknown[0], "unknown table")
    return cfg


def _check_upstream_url(url: str, key: str) -> None:
    """``http(s)://host[:port][/base]``, as the proxy forwards to it: checked here so that
    check-config and serve refuse what would otherwise fail on start or answer every request
    with 502. Credentials (``user:pass@``) are accepted but never sent (check-config says so)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(key, "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(key, "has a port that is not a number within 1..65535") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise ConfigError(key, "must name a host: http(s)://host[:port][/base]")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(key, "has a port outside 1..65535")
    if "?" in url or "#" in url:
        raise ConfigError(key, "must not have a query or fragment: the request's own query is forwarded")


def _route_segments(route: RouteConfig) -> tuple[str | None, ...]:
    """The template's segments, ``None`` for a parameter (which matches any one segment)."""
    return tuple(None if _PARAM.fullmatch(seg) else seg for seg in route.path.split("/")[1:])


def _check_shadowing(routes: tuple[RouteConfig, ...]) -> None:
    """Refuse a route that an earlier route hides for one of its methods.

    The router takes the first route whose template matches the path and whose methods include
    the request's; a parameter matches any one segment and a literal only itself. So an earlier
    template of the same length whose every segment is a parameter or the same literal matches
    every path the later one does (``/a/{x}`` hides ``/a/{y}`` and ``/a/b``), and the later
    route is never used for a method both name: a scoped route behind an unscoped one would
    release bodies unscoped.
    """
    shapes = [_route_segments(r) for r in routes]
    for j, later in enumerate(routes):
        for i in range(j):
            earlier = routes[i]
            common = earlier.methods & later.methods
            if not common or len(shapes[i]) != len(shapes[j]):
                continue
            if all(a is None or a == b for a, b in zip(shapes[i], shapes[j], strict=True)):
                methods = ",".join(sorted(common))
                raise ConfigError(
                    f"routes[{j}].path",
                    f"{later.path} ({later.name}) is never reached for {methods}: routes[{i}] ({earlier.name}) "
                    f"{earlier.path} matches every such path first; put the more specific route first",
                )


def _feed(data: Any, routes: tuple[RouteConfig, ...], base_dir: Path) -> FeedConfig:
    t = _Table(data, "state.feed")
    kind = t.get("kind", str, "altinn2")
    if kind == "altinn3":
        raise ConfigError("state.feed.kind", "'altinn3' is not a feed: Altinn 3 has no consent list, status or"
                                             " revocation API for a data source (docs/protocol.md §8); remove"
                                             " [state.feed] or use revocation_file / `samtykke-gateway revoke`")
    if kind != "altinn2":
        raise ConfigError("state.feed.kind", "must be 'altinn2' (the Altinn 2 consent list, legacy)")
    url = t.get("url", str, required=True)
    if not url.startswith(("https://", "http://")):
        raise ConfigError("state.feed.url", "must be an http(s) URL")
    services = t.str_list("services", _SERVICE) or tuple(
        dict.fromkeys(s for r in routes for s in r.altinn2_services)
    )
    if kind == "altinn2" and not services:
        raise ConfigError("state.feed.services", "no Altinn 2 service to poll")
    pages = int(t.number("max_pages_per_poll", 100, minimum=1))
    api_key_env = t.get("api_key_env", str)
    auth = None
    if "maskinporten" in t.data:
        mt = _Table(t.get("maskinporten", dict), "state.feed.maskinporten")
        auth = FeedAuthConfig(
            token_url=mt.get("token_url", str, required=True),
            audience=mt.get("audience", str, required=True),
            client_id=mt.get("client_id", str, required=True),
            scope=mt.get("scope", str, required=True),
            key_file=str((base_dir / mt.get("key_file", str, required=True)).resolve()),
            kid=mt.get("kid", str),
        )
        mt.finish()
    cfg = FeedConfig(
        kind=kind,  # type: ignore[arg-type]
        url=url,
        services=services,
        interval_seconds=t.number("interval_seconds", 60.0, minimum=0.05),
        timeout_seconds=t.number("timeout_seconds", 10.0, minimum=0.05),
        max_pages_per_poll=pages,
        max_staleness_seconds=t.number("max_staleness_seconds", 900.0),
        api_key_env=api_key_env,
        maskinporten=auth,
    )
    t.finish()
    return cfg


def _max_request_body(gw: _Table) -> int:
    value = gw.get("max_request_body_bytes", int, DEFAULT_MAX_REQUEST_BODY_BYTES)
    if not 1 <= value <= _MAX_REQUEST_BODY_LIMIT:
        raise ConfigError("gateway.max_request_body_bytes", f"must be within 1..{_MAX_REQUEST_BODY_LIMIT}")
    return int(value)


def _leeway(gw: _Table) -> float:
    value = gw.number("leeway_seconds", 30.0)
    if value > 300:
        raise ConfigError("gateway.leeway_seconds", "must be within 0..300 (clock skew, not a grace period)")
    return value


def _resolve_store_url(url: str, base_dir: Path, key: str) -> str:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise ConfigError(key, "sqlite URL needs a file path")
        resolved = Path(path) if path.startswith("/") else base_dir / path
        return "sqlite:///" + str(resolved.resolve())
    if url.startswith(("postgresql://", "postgres://", "memory://")):
        return url
    raise ConfigError(key, "must be sqlite:///PATH, postgresql://... or memory://")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a TOML config file.

    :raises ConfigError: unreadable file, TOML syntax error, or invalid content (key path named).
    """
    p = Path(path)
    text = read_config_text(p, "")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{p}: TOML syntax error: {exc}") from None
    return parse_config(data, base_dir=p.parent.resolve(), source_path=str(p.resolve()))


def memory_state_warning(config: GatewayConfig) -> str | None:
    """The warning for routes whose one-time use or daily limit lives in ``memory://`` state:
    every process counts on its own (``uvicorn --workers 3`` delivers a one-time consent three
    times) and a restart forgets spent consents. ``None`` when no route is affected."""
    if not config.state_url.startswith("memory://"):
        return None
    names = [r.name for r in config.routes if r.one_time or r.daily_limit]
    if not names:
        return None
    return (f"routes {', '.join(names)} use one_time/daily_limit with in-memory state ([state] url = memory://): "
            "enforced per process: a single worker/replica only, and lost on restart; use [state] url = redis://...")


def audit_url_of(cfg: GatewayConfig) -> str:
    """Back-compat accessor used by the audit CLI."""
    return cfg.audit_url
