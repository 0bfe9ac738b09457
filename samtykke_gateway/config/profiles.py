"""The ``tt02`` and ``prod`` profiles (docs/protocol.md §3) and the ``[issuers.*]`` tables.

``tt02`` and ``prod`` preset Maskinporten's issuer and JWKS (the Altinn 3 consent travels inside
that token). Altinn 2 is legacy: its issuer is configured only by an ``[issuers.altinn]`` table,
which under ``tt02``/``prod`` starts from the profile's Altinn JWKS (discovered through
``/.well-known/oauth-authorization-server``). A profile never trusts the other environment's
keys, and ``prod`` refuses Altinn test-generator tokens (``actual_iss``). ``custom`` (default)
takes issuers as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from samtykke_gateway.config.model import IssuerConfig, Profile
from samtykke_gateway.config.reader import Table
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.tokens.verify import SUPPORTED_ALGORITHMS

__all__ = [
    "ALLOWED_ALGORITHMS",
    "PROFILE_ALTINN2_ISSUERS",
    "PROFILE_DELEGATION_SOURCE",
    "PROFILE_ISSUERS",
    "TEST_MARKERS",
    "read_delegation_sources",
    "read_issuers",
    "read_profile",
]

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
#: Parts of a URL that mark a test environment: a ``prod`` profile refuses an issuer with one.
TEST_MARKERS = (
    "tt02.",
    "test.maskinporten",
    "altinn-test",
    "dev.altinn.local",
    "dev.maskinporten",
)
#: Signature algorithms an issuer may name (asymmetric only: never ``none`` or ``HS*``).
ALLOWED_ALGORITHMS = SUPPORTED_ALGORITHMS  # the verifier's own list


def read_profile(gw: Table) -> Profile:
    """``gateway.profile``: ``custom`` (default), ``tt02`` or ``prod``."""
    profile = gw.get("profile", str, "custom")
    if profile not in ("custom", "tt02", "prod"):
        raise ConfigError("gateway.profile", "must be 'custom', 'tt02' or 'prod'")
    return cast(Profile, profile)


def read_issuers(issuers_raw: Mapping[str, Any], profile: Profile) -> dict[str, IssuerConfig]:
    """The ``[issuers]`` table over the profile's presets: ``maskinporten`` (required) and
    ``altinn`` (Altinn 2, legacy; only when the table names it).

    :raises ConfigError: unknown issuer, missing Maskinporten, a key the profile forbids
        (test keys under ``prod``, production keys under ``tt02``, plain ``http://`` keys in either).
    """
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
                if url and any(marker in url for marker in TEST_MARKERS):
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
    return issuers


def read_delegation_sources(gw: Table, profile: Profile) -> tuple[str, ...]:
    """``gateway.altinn3_delegation_sources``; absent: the profile's published value."""
    if gw.get("altinn3_delegation_sources", list, None) is None:
        return (PROFILE_DELEGATION_SOURCE[profile],) if profile in PROFILE_DELEGATION_SOURCE else ()
    return gw.str_list("altinn3_delegation_sources")


def _issuer(name: str, data: Mapping[str, Any], path: str) -> IssuerConfig:
    t = Table(dict(data), path)
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
        if alg not in ALLOWED_ALGORITHMS:
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
        max_token_age_seconds=t.optional_number("max_token_age_seconds", minimum=1.0),
    )
    t.finish()
    if name != "maskinporten" and cfg.max_token_age_seconds is not None:
        raise ConfigError(t.key("max_token_age_seconds"), "applies to the Maskinporten issuer only")
    if cfg.min_ttl_seconds > cfg.max_ttl_seconds:
        raise ConfigError(t.key("min_ttl_seconds"), "must not exceed max_ttl_seconds")
    return cfg


def _audiences(t: Table) -> tuple[str, ...]:
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
