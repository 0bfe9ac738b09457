"""The ``[[routes]]`` tables: path templates, where the data subject is named, the consents a
route accepts, its constraints (year, period, one-time use, daily limit) and its rights package.

Every error names the key path (``routes[2].subject.body``). The router takes the first route
whose template and methods match (docs/protocol.md §5), so :func:`read_routes` also refuses a
route an earlier one hides.
"""

from __future__ import annotations

import difflib

import re
from collections.abc import Mapping
from typing import Any

from samtykke_gateway.config.model import (
    DEFAULT_ACCEPTED_ACTIONS,
    ERROR_CODE_KINDS,
    IssuerConfig,
    PeriodConstraint,
    RouteConfig,
    YearConstraint,
)
from samtykke_gateway.config.subject import subject_from_config
from samtykke_gateway.tokens.altinn3 import ACTION_NAME
from samtykke_gateway.config.reader import Table
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.scoping.package import RightsPackage
from samtykke_gateway.scoping.paths import parse_path

__all__ = ["ALTINN2_SERVICE", "read_routes"]

#: An Altinn 2 service: ``"{serviceCode}_{editionCode}"``.
ALTINN2_SERVICE = re.compile(r"[0-9]{1,10}_[0-9]{1,10}")
_ERROR_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEGMENT_LITERAL = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")
_RESOURCE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,127}")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def read_routes(
    routes_raw: list[Any], packages: Mapping[str, RightsPackage], issuers: Mapping[str, IssuerConfig]
) -> tuple[RouteConfig, ...]:
    """The ``[[routes]]`` array, in order.

    :raises ConfigError: no route at all (a gateway that protects nothing), an invalid route,
        a duplicate name, a route an earlier one hides, or an Altinn 2 service without
        ``[issuers.altinn]``.
    """
    if not routes_raw:
        raise ConfigError("routes", "needs at least one [[routes]] table: without one the gateway protects nothing"
                                    " (the middleware would pass every request to the app unchecked)")
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
    return routes


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


def _accepted_actions(t: Table) -> tuple[str, ...]:
    """``accepted_actions``: non-empty list of Altinn 3 action names, stored lower-cased."""
    if "accepted_actions" not in t.data:
        t.used.add("accepted_actions")
        return DEFAULT_ACCEPTED_ACTIONS
    values = t.str_list("accepted_actions", ACTION_NAME)
    if not values:
        raise ConfigError(t.key("accepted_actions"), "name at least one action, or leave the key out")
    return tuple(dict.fromkeys(v.lower() for v in values))


def _error_codes(t: Table) -> dict[str, str]:
    """``[routes.error_codes]``: ``unauthenticated`` / ``forbidden`` / ``consent`` → code."""
    raw = t.get("error_codes", dict, {})
    et = Table(raw, t.key("error_codes"))
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


def _route(index: int, data: Any, packages: Mapping[str, RightsPackage]) -> RouteConfig:
    key = f"routes[{index}]"
    t = Table(data, key)
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
    subject = subject_from_config(t.get("subject", dict, required=True), t.key("subject"), params)
    services = t.str_list("altinn2_service", ALTINN2_SERVICE)
    resources = t.str_list("altinn3_resources", _RESOURCE)
    migrated_org = t.get("altinn3_migrated_org", str)
    migrated = tuple(f"{migrated_org}_{s}" for s in services) if migrated_org else ()
    if migrated_org is not None and not re.fullmatch(r"[a-z0-9]{2,20}", migrated_org):
        raise ConfigError(t.key("altinn3_migrated_org"), "must be an Altinn org code like 'skd'")
    if not services and not resources and not migrated:
        unread = [k for k in t.data if isinstance(k, str) and k not in t.used]
        near = difflib.get_close_matches("altinn3_resources", unread, n=1) or difflib.get_close_matches(
            "altinn2_service", unread, n=1)
        hint = f" (the table has {near[0]!r}: a typo?)" if near else ""
        raise ConfigError(key, f"needs altinn3_resources (or, legacy, altinn2_service){hint}")

    year = None
    if "year" in t.data:
        yt = Table(t.get("year", dict), t.key("year"))
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
        pt = Table(t.get("period", dict), t.key("period"))
        period = PeriodConstraint(
            from_param=pt.get("from_param", str, "fraOgMed"),
            to_param=pt.get("to_param", str, "tilOgMed"),
            from_metadata=pt.get("from_metadata", str, "fraOgMed").lower(),
            to_metadata=pt.get("to_metadata", str, "tilOgMed").lower(),
        )
        pt.finish()

    governed = {period.from_param, period.to_param} if period is not None else set()
    if year is not None and year.source == "query":
        governed.add(year.param)
    subject = subject.for_route(methods_set, frozenset(governed), frozenset(params), t.key("subject"))

    package = t.get("rights_package", (str, dict))
    unscoped = t.get("unscoped", bool, False)
    if package is None and not unscoped:
        unread = [k for k in t.data if isinstance(k, str) and k not in t.used]
        near = difflib.get_close_matches("rights_package", unread, n=1)
        if near:
            raise ConfigError(t.key(near[0]), "unknown key (did you mean rights_package?)")
        raise ConfigError(t.key("rights_package"),
                          "is required (scoping is deny-by-default: name the rights package that says what"
                          " leaves; only an API whose whole answer may leave sets unscoped = true)")
    if package is not None and unscoped:
        raise ConfigError(t.key("unscoped"), "contradicts rights_package")
    fixed, param_name, mapping = None, None, {}
    if isinstance(package, str):
        if package not in packages:
            raise ConfigError(t.key("rights_package"), f"no rights package named {package!r}")
        fixed = package
    elif isinstance(package, dict):
        rt = Table(package, t.key("rights_package"))
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
        max_token_age_seconds=t.optional_number("max_token_age_seconds", minimum=1.0),
        error_codes=_error_codes(t),
    )
    t.finish()
    return route


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
