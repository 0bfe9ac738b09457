"""``samtykke-gateway demo``: the whole main job on loopback, offline.

Starts the dev issuer (JWKS over HTTP), the example upstream (the tax administration's
published example bodies) and the sidecar, each a real uvicorn server on 127.0.0.1; then plays
a bank: prints every request and the gateway's answer (status, reason, scoped body), verifies
the disclosure log's hash chain, and exits 0 when every answer was the expected one.

Altinn 3 first (docs/protocol.md §2, §3.3): the consent inside the Maskinporten token — allowed
and denied cases side by side, a consent migrated from Altinn 2 (resource ``skd_4628_210607``,
``skd_4804_210607`` with the lower-cased metadata keys the migration writes). Then the Altinn 2
pair, labelled legacy (Altinn 2 closed on 19 June 2026).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.config import GatewayConfig, parse_config
from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.dev.issuer import DevIssuer

__all__ = ["demo_config", "demo_config_text", "run_demo"]

BANK = "999999999"
OTHER_BANK = "888888888"
INCOME_PERSON = "01029413157"
TAX_BASE_PERSON = "12879397780"
INCOME = "/api/innrapportert/inntektsmottaker/sbl/{person}/oppgave/inntekt"
TAX_BASE = "/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/{year}/{person}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def demo_config(
    *, issuer_url: str, upstream_url: str, audit_url: str = "memory://", overrides: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """The packaged demo configuration (``data/demo.toml``) with its placeholders filled.

    :param overrides: nested tables deep-merged over the TOML (``{"gateway": {"error_style": ...}}``).
    """
    text = demo_config_text(issuer_url=issuer_url, upstream_url=upstream_url, audit_url=audit_url)
    data = _merge(tomllib.loads(text), overrides or {})
    return parse_config(data, base_dir=Path(str(resources.files("samtykke_gateway.dev.data"))))


def demo_config_text(*, issuer_url: str, upstream_url: str, audit_url: str, absolute_files: bool = False) -> str:
    """``data/demo.toml`` as TOML text with its ``${...}`` placeholders filled.

    :param absolute_files: name the packaged value-list files by absolute path, so the text
        works as a config file anywhere (``samtykke-gateway dev-config``).
    """
    data_dir = resources.files("samtykke_gateway.dev.data")
    text = data_dir.joinpath("demo.toml").read_text(encoding="utf-8")
    text = (
        text.replace("${ISSUER_URL}", issuer_url)
        .replace("${UPSTREAM_URL}", upstream_url)
        .replace("${AUDIT_URL}", audit_url)
    )
    if absolute_files:
        text = re.sub(
            r'(?m)^(\s*in_file\s*=\s*)"([^"/]+)"',
            lambda m: m.group(1) + json.dumps(str(Path(str(data_dir)) / m.group(2))),
            text,
        )
    return text


@dataclass(frozen=True)
class _Case:
    title: str
    path: str
    headers: Callable[[DevIssuer], dict[str, str]]
    expect: int
    section: str = ""


A3_SECTION = "Altinn 3: the consent inside the Maskinporten token"
A2_SECTION = "Altinn 2 pair (legacy: Altinn 2 closed on 19 June 2026)"
INCOME_PERIOD = {"fraOgMed": "2018-06", "tilOgMed": "2018-08"}


def _a3(issuer: DevIssuer, *, resource: str = "ske-spesifisert-summert-skattegrunnlag",
        metadata: Mapping[str, str] | None = None, subject: str = TAX_BASE_PERSON, consumer: str = BANK,
        scope: str = "skatteetaten:spesifisertsummertskattegrunnlag", actions: tuple[str, ...] = ("consent",),
        **mp: Any) -> dict[str, str]:
    details = [
        DevIssuer.altinn3_consent(
            subject=subject, consumer=consumer, actions=actions,
            rights=[(resource, dict(metadata if metadata is not None else {"inntektsaar": "2022"}))],
        )
    ]
    bearer = issuer.mint_maskinporten(consumer=BANK, scope=scope, authorization_details=details, **mp)
    return {"Authorization": f"Bearer {bearer}"}


def _a3_income(issuer: DevIssuer, *, resource: str = "ske-innrapportert-inntekt",
               metadata: Mapping[str, str] = INCOME_PERIOD, **kw: Any) -> dict[str, str]:
    return _a3(issuer, resource=resource, metadata=metadata, subject=INCOME_PERSON, scope="skatteetaten:inntekt", **kw)


def _a2(issuer: DevIssuer, *, subject: str = INCOME_PERSON, consumer: str = BANK, mp_consumer: str = BANK,
        services: list[str] | None = None, **kw: Any) -> dict[str, str]:
    services = services or ["4804_210607_fraOgMed=2018-06", "4804_210607_tilOgMed=2018-08"]
    consent = issuer.mint_altinn2(subject=subject, consumer=consumer, services=services, **kw)
    bearer = issuer.mint_maskinporten(consumer=mp_consumer, scope="skatteetaten:inntekt")
    return {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": f'"{consent}"'}


def _cases() -> list[_Case]:
    income = INCOME.format(person=INCOME_PERSON)
    tax_2022 = TAX_BASE.format(year="2022", person=TAX_BASE_PERSON)
    a3, a2 = A3_SECTION, A2_SECTION
    expired: dict[str, Any] = {"iat": 1_599_999_880, "exp": 1_600_000_000}
    return [
        _Case("Tax base 2022, consented", tax_2022, _a3, 200, a3),
        _Case("Tax base 2021, not consented", TAX_BASE.format(year="2021", person=TAX_BASE_PERSON), _a3, 403, a3),
        _Case("Income July 2018, inside the consented period", income + "?fraOgMed=2018-07&tilOgMed=2018-07",
              _a3_income, 200, a3),
        _Case("Income September 2018, outside the consented period", income + "?fraOgMed=2018-09", _a3_income, 403, a3),
        _Case("Migrated consent (resource skd_4628_210607, action [Read, Write]), tax base 2022", tax_2022,
              lambda i: _a3(i, resource="skd_4628_210607", actions=("Read", "Write")), 200, a3),
        _Case("Migrated consent (skd_4804_210607, lower-cased fraogmed/tilogmed), tilOgMed missing:"
              " set to the consented bound", income + "?fraOgMed=2018-07",
              lambda i: _a3_income(i, resource="skd_4804_210607", actions=("Read", "Write"),
                                   metadata={"fraogmed": "2018-06", "tilogmed": "2018-08"}), 200, a3),
        _Case("Consent right whose actions allow no read (action [write])", tax_2022,
              lambda i: _a3(i, actions=("write",)), 403, a3),
        _Case("Consent for the income resource, asking for the tax base", tax_2022,
              lambda i: _a3(i, resource="ske-innrapportert-inntekt"), 403, a3),
        _Case("Consent given to 888888888, caller is 999999999", tax_2022, lambda i: _a3(i, consumer=OTHER_BANK), 403, a3),
        _Case("Another person's id in the path", TAX_BASE.format(year="2022", person=INCOME_PERSON), _a3, 403, a3),
        _Case("No token at all", tax_2022, lambda i: {}, 401, a3),
        _Case("Expired Maskinporten token", tax_2022, lambda i: _a3(i, claims=expired), 401, a3),
        _Case("Income July 2018 inside the consented period", income + "?fraOgMed=2018-07&tilOgMed=2018-07", _a2, 200, a2),
        _Case("September 2018 is outside the consent", income + "?fraOgMed=2018-09", _a2, 403, a2),
        _Case("Consent given to 888888888, caller is 999999999", income + "?fraOgMed=2018-07",
              lambda i: _a2(i, consumer=OTHER_BANK), 403, a2),
        _Case("Consent for another service", income + "?fraOgMed=2018-07",
              lambda i: _a2(i, services=["4628_210607_inntektsaar=2022"]), 403, a2),
    ]


def _show(body: bytes, limit: int) -> str:
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = body.decode("utf-8", "replace")
    lines = text.splitlines()
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... ({len(lines) - limit} more lines)"]
    return "\n".join("      " + line for line in lines)


async def _play(base_url: str, issuer: DevIssuer, out: Callable[[str], None], body_lines: int) -> int:
    failures = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        section = ""
        for n, case in enumerate(_cases(), 1):
            if case.section != section:
                section = case.section
                out(f"\n== {section} ==")
            response = await client.get(case.path, headers=case.headers(issuer))
            ok = response.status_code == case.expect
            failures += not ok
            reason = ""
            if response.status_code >= 400:
                try:
                    reason = json.loads(response.content).get("reason", "")
                except ValueError:
                    reason = "?"
            verdict = "as expected" if ok else f"UNEXPECTED (wanted {case.expect})"
            out(f"\n[{n}] {case.title}\n    GET {case.path}")
            out(f"    -> {response.status_code} {reason}  [{verdict}]")
            if response.status_code == 200:
                out(_show(response.content, body_lines))
    return failures


#: Where the demo keeps its disclosure log unless told otherwise (relative to the working folder).
DEFAULT_AUDIT_PATH = Path(".samtykke-demo") / "disclosures.db"


def run_demo(*, audit_path: str | None = None, body_lines: int = 40, out: Callable[[str], None] = print) -> int:
    """Run the demo; returns the process exit code (0 = every answer as expected).

    The disclosure log is kept after the demo (``audit_path``, default
    ``./.samtykke-demo/disclosures.db``; a later run appends to the same hash chain), and the
    commands that read it are printed at the end.
    """
    # The demo's disclosure log is new by design: the store's "new, empty log" warning is for
    # production restarts, not for this.
    logging.getLogger("samtykke_gateway.audit.sqlite").setLevel(logging.ERROR)
    issuer = DevIssuer()
    upstream = ExampleUpstream()
    db = (Path(audit_path) if audit_path else DEFAULT_AUDIT_PATH).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{db}"
    with ThreadedServer(issuer.asgi_app()) as issuer_srv, ThreadedServer(upstream.app) as upstream_srv:
        config = demo_config(issuer_url=issuer_srv.url, upstream_url=upstream_srv.url, audit_url=store_url)
        sidecar = SidecarApp(config)
        with ThreadedServer(sidecar) as gateway_srv:
            out("samtykke-gateway demo")
            out(f"  dev issuer (JWKS)   {issuer_srv.url}/altinn/jwk, {issuer_srv.url}/maskinporten/jwk")
            out(f"  example upstream    {upstream_srv.url}  (Skatteetaten's published example bodies)")
            out(f"  sidecar gateway     {gateway_srv.url}")
            out(f"  disclosure log      {db}  (kept after the demo)")
            failures = asyncio.run(_play(gateway_srv.url, issuer, out, body_lines))
    from samtykke_gateway.audit import open_store

    async def verify() -> tuple[bool, int]:
        store = open_store(store_url)
        await store.open()
        try:
            result = await store.verify()
            return result.ok, result.checked
        finally:
            await store.close()

    ok, checked = asyncio.run(verify())
    out(f"\nDisclosure log: {checked} records, hash chain {'intact' if ok else 'BROKEN'}. Read it with:")
    out(f"  samtykke-gateway audit export --store {store_url} --subject {TAX_BASE_PERSON}")
    out(f"  samtykke-gateway audit verify --store {store_url}")
    failures += not ok
    out("Demo finished: " + ("every answer as expected." if failures == 0 else f"{failures} unexpected answers."))
    return 0 if failures == 0 else 1
