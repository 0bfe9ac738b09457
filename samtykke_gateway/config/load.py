"""``parse_config`` / ``load_config``: a TOML document → :class:`GatewayConfig`.

The tables: ``[gateway]`` (here), ``[issuers.*]`` (:mod:`.profiles`), ``[rights_packages.*]``
(:mod:`.packages`), ``[[routes]]`` (:mod:`.routes`), ``[upstream]``, ``[audit]`` and
``[state]`` (here). Every error is a :class:`~samtykke_gateway.exceptions.ConfigError` naming
the key path; unknown keys and tables are errors. Reference: ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from samtykke_gateway.audit import STORE_SCHEMES, open_store, resolve_store_url, store_scheme
from samtykke_gateway.config.model import (
    DEFAULT_DECISION_MEMO_ENTRIES,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    FeedAuthConfig,
    FeedConfig,
    GatewayConfig,
    RouteConfig,
)
from samtykke_gateway.config.packages import read_rights_packages
from samtykke_gateway.config.profiles import read_delegation_sources, read_issuers, read_profile
from samtykke_gateway.config.reader import HEADER_NAME, Table
from samtykke_gateway.config.routes import ALTINN2_SERVICE, read_routes
from samtykke_gateway.config.subject import RESERVED_HEADERS
from samtykke_gateway.config_text import read_config_text
from samtykke_gateway.exceptions import ConfigError

__all__ = ["load_config", "memory_state_warning", "parse_config"]

#: Upper bound of ``gateway.max_request_body_bytes`` (a body route buffers the body).
_MAX_REQUEST_BODY_LIMIT = 16 * 1024 * 1024


#: Upstream headers ``[upstream] release_headers`` may not name: hop-by-hop and framing headers,
#: those that describe the upstream's unscoped representation, and those the gateway sets.
_NOT_RELEASABLE = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "content-encoding", "etag", "content-md5", "digest",
    "content-digest", "repr-digest", "cache-control", "expires", "last-modified", "content-range", "accept-ranges",
    "x-correlation-id", "date", "server", "www-authenticate", "content-type", "content-language",
})
_TABLES = frozenset({"gateway", "issuers", "rights_packages", "routes", "upstream", "audit", "state"})


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, source_path: str | None = None
) -> GatewayConfig:
    """Validate a decoded TOML document.

    :param base_dir: directory that relative file names (audit SQLite path, value lists)
        resolve against — the config file's directory.
    :raises ConfigError: naming the key path of the first problem.
    """
    # unknown tables first: a misspelt [rights_package.x] must be named as such, not as the
    # route's missing package it causes
    unknown = sorted(set(data) - _TABLES)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(_TABLES), n=1)
        raise ConfigError(unknown[0], "unknown table" + (f" (did you mean [{near[0]}]?)" if near else ""))
    top = Table(dict(data), "")
    gw = Table(top.get("gateway", dict, {}), "gateway")
    profile = read_profile(gw)
    issuers = read_issuers(top.get("issuers", dict, {}), profile)
    packages, package_consumers = read_rights_packages(top.get("rights_packages", dict, {}), base_dir)
    routes = read_routes(top.get("routes", list, []), packages, issuers)

    up = Table(top.get("upstream", dict, {}), "upstream")
    upstream_url = up.get("url", str)
    if upstream_url is not None:
        _check_upstream_url(upstream_url, "upstream.url")
    upstream_timeout = up.number("timeout_seconds", 10.0, minimum=0.01)
    connect_timeout = up.number("connect_timeout_seconds", 3.0, minimum=0.01)
    deadline = up.number("deadline_seconds", 60.0, minimum=0.01)
    if deadline < upstream_timeout:
        raise ConfigError("upstream.deadline_seconds", "must not be below timeout_seconds")
    max_body = int(up.number("max_body_bytes", 10 * 1024 * 1024, minimum=1))
    release_headers = frozenset(h.lower().encode("ascii") for h in up.str_list("release_headers", HEADER_NAME))
    for i, name in enumerate(sorted(release_headers)):
        if name.decode() in _NOT_RELEASABLE:
            raise ConfigError(f"upstream.release_headers[{i}]", f"{name.decode()} cannot be released with a scoped"
                              " answer: it frames the connection or describes the upstream's unscoped body,"
                              " or the gateway sets it (Content-Type and Content-Language leave as checked values)")
    up.finish()

    au = Table(top.get("audit", dict, {}), "audit")
    try:
        audit_url = resolve_store_url(au.get("url", str, "sqlite:///samtykke-audit.db"), base_dir)
        open_store(audit_url)  # its options (and, for postgresql, its extra) are checked here, not at start
    except (ValueError, ImportError) as exc:
        raise ConfigError("audit.url", str(exc)) from None
    au.finish()
    if profile in ("tt02", "prod") and not STORE_SCHEMES[store_scheme(audit_url)]:
        raise ConfigError("audit.url", "memory:// is not durable: use sqlite or postgresql in tt02/prod")

    st = Table(top.get("state", dict, {}), "state")
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
    if not HEADER_NAME.fullmatch(consent_header):
        raise ConfigError("gateway.consent_header", "is not a valid header name")
    if consent_header.lower() in RESERVED_HEADERS or consent_header.lower().startswith("x-samtykke-"):
        raise ConfigError("gateway.consent_header", f"{consent_header} is a header the gateway or HTTP itself uses")
    for i, route in enumerate(routes):
        if route.subject.source == "header" and route.subject.name == consent_header.lower():
            raise ConfigError(f"routes[{i}].subject.header", "is the consent header (gateway.consent_header):"
                                                             " it carries the Altinn 2 consent token, not the subject")
    error_style = gw.get("error_style", str, "problem")
    if error_style not in ("problem", "skatteetaten"):
        raise ConfigError("gateway.error_style", "must be 'problem' or 'skatteetaten'")
    unmatched = gw.get("unmatched", str, None)  # None: the deployment form decides
    if unmatched not in (None, "deny", "pass", "pass_outside_protected"):
        raise ConfigError("gateway.unmatched", "must be 'deny', 'pass' or 'pass_outside_protected'")
    delegation_sources = read_delegation_sources(gw, profile)
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
        profile=profile,
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
        decision_memo_entries=_decision_memo_entries(gw),
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
    return cfg


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


def _feed(data: Any, routes: tuple[RouteConfig, ...], base_dir: Path) -> FeedConfig:
    t = Table(data, "state.feed")
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
    services = t.str_list("services", ALTINN2_SERVICE) or tuple(
        dict.fromkeys(s for r in routes for s in r.altinn2_services)
    )
    if kind == "altinn2" and not services:
        raise ConfigError("state.feed.services", "no Altinn 2 service to poll")
    pages = int(t.number("max_pages_per_poll", 100, minimum=1))
    api_key_env = t.get("api_key_env", str)
    auth = None
    if "maskinporten" in t.data:
        mt = Table(t.get("maskinporten", dict), "state.feed.maskinporten")
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


def _max_request_body(gw: Table) -> int:
    value = gw.get("max_request_body_bytes", int, DEFAULT_MAX_REQUEST_BODY_BYTES)
    if not 1 <= value <= _MAX_REQUEST_BODY_LIMIT:
        raise ConfigError("gateway.max_request_body_bytes", f"must be within 1..{_MAX_REQUEST_BODY_LIMIT}")
    return int(value)


def _decision_memo_entries(gw: Table) -> int:
    value = gw.get("decision_memo_entries", int, DEFAULT_DECISION_MEMO_ENTRIES)
    if not 0 <= value <= 65536:
        raise ConfigError("gateway.decision_memo_entries", "must be within 0..65536 (0 turns the memo off)")
    return int(value)


def _leeway(gw: Table) -> float:
    value = gw.number("leeway_seconds", 30.0)
    if value > 300:
        raise ConfigError("gateway.leeway_seconds", "must be within 0..300 (clock skew, not a grace period)")
    return value
