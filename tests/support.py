"""Test harness: the dev issuer's JWKS on a real loopback server, the example upstream, and the
gateway in both deployment forms (in-process middleware, sidecar in front of a real server)."""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.audit.memory import MemoryStore
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.config import GatewayConfig, parse_config
from samtykke_gateway.cli.demo import _merge, demo_config, demo_config_text
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.sidecar.serve import bounded_http_options
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

INCOME_PERSON = "01029413157"
TAX_BASE_PERSON = "12879397780"
BANK = "999999999"
OTHER_BANK = "888888888"
INCOME_SERVICE = "4804_210607"
TAX_BASE_SERVICE = "4628_210607"
INCOME_SCOPE = "skatteetaten:inntekt"
TAX_BASE_SCOPE = "skatteetaten:spesifisertsummertskattegrunnlag"
INCOME_PATH = f"/api/innrapportert/inntektsmottaker/sbl/{INCOME_PERSON}/oppgave/inntekt"
TAX_BASE_RESOURCE = "ske-spesifisert-summert-skattegrunnlag"
SBL_RELEASED = {"bil", "timeloenn", "fastloenn"}


def tax_base_path(year: str, person: str = TAX_BASE_PERSON) -> str:
    return f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/{year}/{person}"


def a2_headers(
    issuer: DevIssuer,
    *,
    subject: str = INCOME_PERSON,
    consumer: str = BANK,
    mp_consumer: str | None = None,
    services: list[str] | None = None,
    scope: str = INCOME_SCOPE,
    **consent_kwargs: Any,
) -> dict[str, str]:
    """An Altinn 2 pair: Maskinporten bearer + AltinnSamtykke consent token."""
    if services is None:
        services = [f"{INCOME_SERVICE}_fraOgMed=2018-06", f"{INCOME_SERVICE}_tilOgMed=2018-08"]
    consent = issuer.mint_altinn2(subject=subject, consumer=consumer, services=services, **consent_kwargs)
    bearer = issuer.mint_maskinporten(consumer=mp_consumer or consumer, scope=scope)
    return {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": consent}


def a3_headers(
    issuer: DevIssuer,
    *,
    subject: str = TAX_BASE_PERSON,
    consumer: str = BANK,
    rights: Sequence[tuple[str | None, dict[str, str]]] | None = None,
    scope: str = TAX_BASE_SCOPE,
    mp_consumer: str | None = None,
    consent: dict[str, Any] | None = None,
    **mp_kwargs: Any,
) -> dict[str, str]:
    """An Altinn 3 token: one Maskinporten token carrying authorization_details.

    ``consent``: more :meth:`DevIssuer.altinn3_consent` options (``actions``, ``handled_by``);
    ``mp_consumer``: the Maskinporten ``consumer`` when it is not the consent's ``to``."""
    if rights is None:
        rights = [(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})]
    details = [DevIssuer.altinn3_consent(subject=subject, consumer=consumer, rights=rights, **(consent or {}))]
    bearer = issuer.mint_maskinporten(
        consumer=mp_consumer or consumer, scope=scope, authorization_details=details, **mp_kwargs
    )
    return {"Authorization": f"Bearer {bearer}"}


def decisions(records: list[DisclosureRecord]) -> list[DisclosureRecord]:
    """The decision records (one per request): without a streamed answer's end record."""
    return [r for r in records if r.reason not in ("stream_end", "stream_cut")]


@dataclass
class GatewayUnderTest:
    """A running gateway: ``client`` talks to it, ``records`` are its disclosure records."""

    mode: str
    client: httpx.AsyncClient
    store: MemoryStore
    upstream: ExampleUpstream
    config: GatewayConfig
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> list[DisclosureRecord]:
        return self.store.records


def make_config(
    issuer_url: str,
    upstream_url: str,
    audit_url: str = "memory://",
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> GatewayConfig:
    """The demo config; ``edit`` may change the decoded TOML (after ``overrides``) before it is
    validated, e.g. drop ``[issuers.altinn]`` or set a key on one route."""
    if edit is None:
        return demo_config(issuer_url=issuer_url, upstream_url=upstream_url, audit_url=audit_url, overrides=overrides)
    text = demo_config_text(issuer_url=issuer_url, upstream_url=upstream_url, audit_url=audit_url)
    data = _merge(tomllib.loads(text), overrides)
    edit(data)
    return parse_config(data, base_dir=Path(str(resources.files("samtykke_gateway.dev.data"))))


def altinn3_only(data: dict[str, Any]) -> None:
    """``make_config`` edit: nothing of Altinn 2 — no ``[issuers.altinn]``, no ``altinn2_service``
    (nor ``altinn3_migrated_org``, which derives ids from it)."""
    del data["issuers"]["altinn"]
    for route in data["routes"]:
        route.pop("altinn2_service", None)
        route.pop("altinn3_migrated_org", None)


def route_keys(name: str, **keys: Any) -> Callable[[dict[str, Any]], None]:
    """``make_config`` edit: set ``keys`` on the route called ``name``."""

    def edit(data: dict[str, Any]) -> None:
        for route in data["routes"]:
            if route["name"] == name:
                route.update(keys)

    return edit


@contextlib.asynccontextmanager
async def running_gateway(
    mode: str,
    issuer_url: str,
    *,
    compress: str | None = None,
    upstream_app: Any = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[GatewayUnderTest]:
    """Start the gateway in ``mode`` (``"middleware"`` or ``"sidecar"``) over the example upstream."""
    upstream = ExampleUpstream(compress=compress)
    app_to_protect = upstream_app or upstream.app
    if mode == "middleware":
        config = make_config(issuer_url, "http://upstream.invalid", edit=edit, **overrides)
        middleware = ConsentMiddleware(app_to_protect, config=config)
        transport = httpx.ASGITransport(app=middleware, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            try:
                # the gateway's own config (the middleware fills in its unmatched default)
                yield GatewayUnderTest(mode, client, middleware.gateway.store, upstream,  # type: ignore[arg-type]
                                       middleware.gateway.config)
            finally:
                await middleware.gateway.close()
        return
    with ThreadedServer(app_to_protect) as upstream_server:
        config = make_config(issuer_url, upstream_server.url, edit=edit, **overrides)
        sidecar = SidecarApp(config)
        # serve's protocol (lingering close after early answers), with room for the 100 KB tokens
        # some tests send to reach the gateway's own checks (serve's 64 KiB head bound has its
        # own tests in tests/sidecar/test_serve_head_bounds.py)
        with ThreadedServer(sidecar, **bounded_http_options(max_head_bytes=1024 * 1024)) as sidecar_server:
            async with httpx.AsyncClient(base_url=sidecar_server.url, timeout=20) as client:
                yield GatewayUnderTest(
                    mode, client, sidecar.gateway.store, upstream, config,  # type: ignore[arg-type]
                    extra={"upstream_url": upstream_server.url, "sidecar": sidecar},
                )


def config_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "config"


STUDIELAN_PERSON = "01029413157"
STUDIELAN_SCOPE = "example:studielan"
STUDIELAN_RESOURCE = "example-studielan-saldo"


def studielan_path(person: str = STUDIELAN_PERSON) -> str:
    return f"/api/v1/studielan/{person}/saldo"


def studielan_config(issuer_url: str, **gateway: Any) -> GatewayConfig:
    """``config/studielan-example.toml`` (an Altinn-3-only, non-tax API) with the dev issuer as
    Maskinporten, an in-memory disclosure log and ``gateway`` keys added to ``[gateway]``."""
    data = tomllib.loads((config_dir() / "studielan-example.toml").read_text())
    data["gateway"].update(profile="custom", **gateway)
    data["issuers"] = {"maskinporten": {"issuer": "https://dev.maskinporten.local/",
                                        "jwks_url": f"{issuer_url}/maskinporten/jwk", "algorithms": ["RS256"]}}
    data["audit"]["url"] = "memory://"
    return parse_config(data, base_dir=config_dir())


def studielan_headers(issuer: DevIssuer, *, subject: str = STUDIELAN_PERSON) -> dict[str, str]:
    """A bank's Altinn 3 consent to the student-loan balance, inside its Maskinporten token."""
    return a3_headers(issuer, subject=subject, rights=[(STUDIELAN_RESOURCE, {})], scope=STUDIELAN_SCOPE)


def studielan_fastapi(**middleware: Any) -> Any:
    """A FastAPI app as its owner writes it: the student-loan balance (protected), its own
    ``/api/v1/status`` and FastAPI's ``/docs`` and ``/openapi.json``; ``middleware`` are
    :class:`ConsentMiddleware` keywords (``config=`` at least)."""
    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(ConsentMiddleware, **middleware)

    @app.get("/api/v1/studielan/{fnr}/saldo")
    async def saldo(fnr: str) -> dict[str, Any]:
        return {"personidentifikator": fnr, "saldo": {"beloep": 250000, "valuta": "NOK", "per": "2025-01-01"},
                "kontonummer": "12345678903", "lan": [{"lanetype": "studielan", "saldo": 250000, "rente": 5.1}]}

    @app.get("/api/v1/status")
    async def status() -> dict[str, str]:
        return {"status": "up"}

    return app


def consent_middleware(app: Any) -> ConsentMiddleware:
    """The :class:`ConsentMiddleware` inside a started Starlette/FastAPI app's middleware stack."""
    layer = app.middleware_stack
    while not isinstance(layer, ConsentMiddleware):
        layer = layer.app
    return layer
