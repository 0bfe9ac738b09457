"""Configuration: every error names its key path; profiles; check-config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from samtykke_gateway.cli.main import main
from samtykke_gateway.config import load_config, parse_config
from samtykke_gateway.config.subject import BodySubject
from samtykke_gateway.exceptions import ConfigError
from tests.support import make_config
from tests.state_support import CONFIG_SECRET, cli, latin1_config, write_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
TT02 = CONFIG_DIR / "skatteetaten-tt02.toml"
STUDIELAN = CONFIG_DIR / "studielan-example.toml"


def _data() -> dict[str, Any]:
    return tomllib.loads(TT02.read_text())


def _parse(data: dict[str, Any]) -> None:
    parse_config(data, base_dir=CONFIG_DIR)


def test_shipped_configs_load() -> None:
    config = load_config(TT02)
    assert config.profile == "tt02"
    assert config.issuers["maskinporten"].issuer == "https://test.maskinporten.no/"
    assert set(config.issuers) == {"maskinporten"}  # Altinn 3 only: nothing of Altinn 2 configured
    assert [r.name for r in config.routes] == ["inntekt", "spesifisertsummertskattegrunnlag-stadie",
                                               "spesifisertsummertskattegrunnlag"]
    assert all(r.altinn2_services == () for r in config.routes)
    assert config.routes[0].altinn3_resources == ("ske-innrapportert-inntekt", "skd_4804_210607")
    assert dict(config.routes[0].error_codes) == {"unauthenticated": "IM-004", "forbidden": "IM-005",
                                                  "consent": "IM-010"}
    # the tax base's preferred endpoint (with {stadie}; oppgjoer for sbl) beside the older one
    assert config.routes[1].path == ("/api/formueinntekt/spesifisertsummertskattegrunnlag/oppgjoer/"
                                     "{rettighetspakke}/{inntektsaar}/{personidentifikator}")
    assert config.routes[1].altinn3_resources == config.routes[2].altinn3_resources == (
        "ske-spesifisert-summert-skattegrunnlag", "skd_4628_210607")
    assert dict(config.routes[1].error_codes) == dict(config.routes[2].error_codes) == {"consent": "SSG-010"}
    assert config.audit_url == "sqlite:////var/lib/samtykke-gateway/disclosures.db"
    text = TT02.read_text()
    for resource in ("ske-innrapportert-inntekt", "ske-spesifisert-summert-skattegrunnlag"):
        lines = text.splitlines()
        at = [i for i, line in enumerate(lines) if f'altinn3_resources = ["{resource}"' in line]
        # no public source: each is marked as a placeholder to confirm in TT02 (in the comment above)
        assert at and all("PLACEHOLDER" in lines[i - 1] or "PLACEHOLDER" in lines[i - 2] for i in at)
    example = load_config(STUDIELAN)
    assert set(example.issuers) == {"maskinporten"}  # Altinn 3 only
    assert [(r.path, r.altinn2_services, r.altinn3_resources) for r in example.routes] == [
        ("/api/v1/studielan/{fnr}/saldo", (), ("example-studielan-saldo",))]


@pytest.mark.parametrize("profile", ["tt02", "prod"])
def test_profiles_preload_maskinporten_only_and_altinn2_on_request(profile: str) -> None:
    """Altinn 2 is legacy: tt02/prod preset Maskinporten alone; a route with altinn2_service
    needs [issuers.altinn], which (even empty) takes the profile's Altinn keys."""
    host = "tt02.altinn.no" if profile == "tt02" else "www.altinn.no"
    data = _data()
    data["gateway"]["profile"] = profile
    config = parse_config(data, base_dir=CONFIG_DIR)
    assert set(config.issuers) == {"maskinporten"}
    data["routes"][0]["altinn2_service"] = "4804_210607"  # a legacy Altinn 2 route
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == "routes[0].altinn2_service" and "[issuers.altinn]" in str(info.value)
    data["issuers"] = {"altinn": {}}
    config = parse_config(data, base_dir=CONFIG_DIR)
    assert config.issuers["altinn"].issuer == "altinn.no"
    assert config.issuers["altinn"].metadata_url == f"https://{host}/.well-known/oauth-authorization-server"
    data["gateway"]["profile"] = "custom"  # nothing to preset: an empty table is an error, not a no-op
    data["issuers"] = {"altinn": {}, "maskinporten": {"issuer": "https://x/", "jwks_url": "https://x/jwk"}}
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == "issuers.altinn.issuer"


def test_check_config_accepts_the_altinn3_only_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(STUDIELAN)]) == 0
    out = capsys.readouterr().out
    assert "studielan-saldo: GET,HEAD /api/v1/studielan/{fnr}/saldo" in out
    assert "Altinn 3 resources example-studielan-saldo" in out
    assert "issuer altinn " not in out and "Altinn 2" not in out
    assert "protected prefixes /api/v1/studielan (each with every path below it)" in out
    assert ("unmatched paths    middleware: under a protected prefix: 404 no_route, elsewhere passed to the app"
            " unchecked (gateway.unmatched unset = 'pass_outside_protected'); sidecar: 404 no_route") in out


@pytest.mark.anyio
async def test_altinn3_only_example_works_against_a_tiny_upstream(dev_issuer, issuer_url: str) -> None:  # type: ignore[no-untyped-def]
    """The shipped student-loan example, its issuer pointed at the dev issuer, as a sidecar on
    127.0.0.1 in front of a tiny upstream: the consented person's balance leaves scoped, another
    person or another resource is refused, and /readyz needs no Altinn 2 keys."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from samtykke_gateway.sidecar.app import SidecarApp
    from samtykke_gateway.dev.server import ThreadedServer
    from samtykke_gateway.dev.issuer import DevIssuer

    async def saldo(request: Request) -> JSONResponse:
        fnr = request.path_params["fnr"]
        return JSONResponse({"personidentifikator": fnr, "kontonummer": "12345678903",
                             "saldo": {"beloep": 312450, "valuta": "NOK", "per": "2026-11-30"},
                             "lan": [{"lanetype": "studielan", "saldo": 312450, "renteavtale": "flytende"}]})

    person, other = "01029413157", "12879397780"
    upstream = Starlette(routes=[Route("/api/v1/studielan/{fnr}/saldo", saldo)])
    data = tomllib.loads(STUDIELAN.read_text())
    data["gateway"]["profile"] = "custom"
    data["issuers"] = {"maskinporten": {"issuer": DevIssuer.MASKINPORTEN_ISSUER, "jwks_url": f"{issuer_url}/maskinporten/jwk"}}
    data["audit"]["url"] = "memory://"

    def bearer(subject: str = person, resource: str = "example-studielan-saldo") -> dict[str, str]:
        details = [DevIssuer.altinn3_consent(subject=subject, consumer="999999999", rights=[(resource, {})])]
        token = dev_issuer.mint_maskinporten(consumer="999999999", scope="example:studielan",
                                             authorization_details=details)
        return {"Authorization": f"Bearer {token}"}

    with ThreadedServer(upstream) as up:
        data["upstream"]["url"] = up.url
        config = parse_config(data, base_dir=CONFIG_DIR)
        with ThreadedServer(SidecarApp(config)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and "keys.altinn" not in ready.json()["checks"]
                response = await client.get(f"/api/v1/studielan/{person}/saldo", headers=bearer())
                assert response.status_code == 200, response.text
                assert response.json() == {"personidentifikator": person,
                                           "saldo": {"beloep": 312450, "valuta": "NOK", "per": "2026-11-30"},
                                           "lan": [{"lanetype": "studielan", "saldo": 312450}]}
                refused = await client.get(f"/api/v1/studielan/{other}/saldo", headers=bearer())
                assert refused.status_code == 403 and refused.json()["reason"] == "subject_mismatch"
                refused = await client.get(f"/api/v1/studielan/{person}/saldo", headers=bearer(resource="other-resource"))
                assert refused.status_code == 403 and refused.json()["reason"] == "resource_not_consented"


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda d: d["routes"][1].pop("scope"), "routes[1].scope"),
        (lambda d: d["routes"][0]["subject"].update(path="fnr"), "routes[0].subject.path"),
        (lambda d: d["routes"][0]["period"].update(frm="x"), "routes[0].period.frm"),
        (lambda d: d["routes"][1].update(altinn2_service="4628-210607"), "routes[1].altinn2_service[0]"),
        (lambda d: d["routes"][0].update(rights_package={"param": "rettighetspakke", "packages": {"sbl": "nope"}}),
         "routes[0].rights_package.packages.sbl"),
        (lambda d: d["gateway"].update(profile="staging"), "gateway.profile"),
        (lambda d: d["gateway"].update(leeway_seconds="30"), "gateway.leeway_seconds"),
        (lambda d: d["gateway"].update(tipo=1), "gateway.tipo"),
        (lambda d: d["audit"].update(url="mysql://x"), "audit.url"),
        (lambda d: d.update(extra={}), "extra"),
        (lambda d: d["routes"][0].update(path="/api/../x"), "routes[0].path"),
        (lambda d: d["routes"][1].update(name="inntekt"), "routes[1].name"),
        (lambda d: d["rights_packages"]["inntekt-sbl"].update(fields=["a..b"]), "rights_packages.inntekt-sbl.fields"),
        (lambda d: d.setdefault("issuers", {}).update(maskinporten={"issuer": "x", "jwks_url": "ftp://x"}),
         "issuers.maskinporten"),
    ],
)
def test_errors_name_the_key_path(mutate, key_path: str) -> None:  # type: ignore[no-untyped-def]
    data = _data()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path.startswith(key_path), info.value


def test_the_config_package_exports_its_public_names() -> None:
    import types

    import samtykke_gateway.config as config_package

    public = {name for name, value in vars(config_package).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"}
    assert sorted(config_package.__all__) == sorted(public)
    assert config_package.__all__ == sorted(config_package.__all__)


def test_audit_url_is_checked_against_the_audit_store_schemes() -> None:
    data = _data()
    data["audit"]["url"] = "mysql://x"
    with pytest.raises(ConfigError, match="unknown audit store scheme 'mysql'") as info:
        _parse(data)
    assert info.value.key_path == "audit.url"
    data["audit"]["url"] = "sqlite:///"
    with pytest.raises(ConfigError, match="needs a file path"):
        _parse(data)
    data["audit"]["url"] = "sqlite:///logs/d.db?busy_timeout_ms=200"
    # relative to the config file's directory, options kept
    expected = f"sqlite:///{CONFIG_DIR}/logs/d.db?busy_timeout_ms=200"
    assert parse_config(data, base_dir=CONFIG_DIR).audit_url == expected
    data["audit"]["url"] = "memory://"  # not durable: refused under tt02
    with pytest.raises(ConfigError, match="not durable"):
        _parse(data)


def test_prod_profile_never_trusts_test_keys() -> None:
    data = _data()
    data["gateway"]["profile"] = "prod"
    config = parse_config(data, base_dir=CONFIG_DIR)
    assert config.issuers["maskinporten"].jwks_url == "https://maskinporten.no/jwk"
    assert not config.allow_test_tokens
    data["issuers"] = {"altinn": {"issuer": "altinn.no", "jwks_url": "https://tt02.altinn.no/api/metadata/jwk"}}
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == "issuers.altinn"


def test_tt02_profile_never_trusts_production_keys() -> None:
    data = _data()
    data["issuers"] = {"maskinporten": {"issuer": "https://maskinporten.no/", "jwks_url": "https://maskinporten.no/jwk"}}
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == "issuers.maskinporten"


def test_check_config_prints_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(TT02)]) == 0
    out = capsys.readouterr().out
    assert "inntekt: GET,HEAD /api/innrapportert/inntektsmottaker/{rettighetspakke}" in out
    assert "rights package by {rettighetspakke}: sbl->inntekt-sbl" in out


def test_check_config_refuses_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    bad.write_text(TT02.read_text().replace('scope = "skatteetaten:inntekt"', 'scopes = "skatteetaten:inntekt"'))
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "routes[0]" in capsys.readouterr().err
    (tmp_path / "syntax.toml").write_text("[gateway\n")
    assert main(["check-config", "--config", str(tmp_path / "syntax.toml")]) == 2
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2


def test_serve_refuses_invalid_config_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nprofile = 'nope'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "samtykke_gateway.cli.main", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "gateway.profile" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- body subject


def _body_route(data: dict[str, Any], **changes: object) -> dict[str, Any]:
    """Route 0 (income) as a POST route whose subject is a JSON body field."""
    route = data["routes"][0]
    route.update(method="POST", subject={"body": "fnr"})
    route.update(changes)
    return data


def test_body_subject_parses() -> None:
    config = parse_config(_body_route(_data(), subject={"body": "person.ident"}, method=["POST", "PUT", "PATCH"]),
                          base_dir=CONFIG_DIR)
    subject = config.routes[0].subject
    assert isinstance(subject, BodySubject)
    assert (subject.source, subject.name, subject.field_path) == ("body", "person.ident", ("person", "ident"))
    assert subject.shadows == frozenset({"person", "person.ident", "ident"})
    assert config.max_request_body_bytes == 64 * 1024
    assert config.routes[1].subject.shadows == frozenset()  # other sources: nothing extra per request
    data = _body_route(_data())
    data["gateway"]["max_request_body_bytes"] = 4096
    assert parse_config(data, base_dir=CONFIG_DIR).max_request_body_bytes == 4096


@pytest.mark.parametrize(
    ("changes", "gateway", "key_path"),
    [
        ({"method": "GET"}, {}, "routes[0].method"),
        ({"method": ["GET", "POST"]}, {}, "routes[0].method"),  # GET implies HEAD: neither has a body
        ({"method": "DELETE"}, {}, "routes[0].method"),
        ({"method": ["POST", "OPTIONS"]}, {}, "routes[0].method"),
        ({"subject": {"body": "person..ident"}}, {}, "routes[0].subject.body"),
        ({"subject": {"body": ""}}, {}, "routes[0].subject.body"),
        ({"subject": {"body": "fnr "}}, {}, "routes[0].subject.body"),
        ({"subject": {"body": "a.b.c.d.e.f.g.h.i"}}, {}, "routes[0].subject.body"),
        ({"subject": {"body": "Personidentifikator"}}, {}, "routes[0].subject.body"),  # a path parameter
        ({"subject": {"body": "x.personidentifikator"}}, {}, "routes[0].subject.body"),
        ({"subject": {"body": "filter.fraOgMed"}}, {}, "routes[0].subject.body"),  # governed query parameter
        ({"subject": {"body": "fnr", "query": "fnr"}}, {}, "routes[0].subject"),
        ({"subject": {"body": 11}}, {}, "routes[0].subject.body"),
        ({}, {"max_request_body_bytes": 0}, "gateway.max_request_body_bytes"),
        ({}, {"max_request_body_bytes": 1 << 30}, "gateway.max_request_body_bytes"),
        ({}, {"max_request_body_bytes": "64k"}, "gateway.max_request_body_bytes"),
        ({}, {"max_request_body_bytes": True}, "gateway.max_request_body_bytes"),
    ],
)
def test_body_subject_config_errors(changes: dict[str, Any], gateway: dict[str, Any], key_path: str) -> None:
    data = _body_route(_data(), **changes)
    data["gateway"].update(gateway)
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == key_path, info.value


def test_check_config_prints_a_body_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    cfg = tmp_path / "body.toml"
    text = TT02.read_text()
    assert text.count('subject = { path = "personidentifikator" }') == 3
    text = text.replace('method = "GET"\n', 'method = "POST"\n', 1)
    cfg.write_text(text.replace('subject = { path = "personidentifikator" }', 'subject = { body = "person.ident" }', 1))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "inntekt: POST /api/innrapportert" in out
    assert "subject from body 'person.ident'" in out


def test_missing_required_key_names_a_likely_typo() -> None:
    # found by a fresh user: 'scoope' was reported only as 'routes[0].scope: is required'
    text = (Path(__file__).resolve().parent.parent / "config" / "skatteetaten-tt02.toml").read_text()
    data = tomllib.loads(text)
    route = data["routes"][0]
    route["scoope"] = route.pop("scope")
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path(__file__).resolve().parent.parent / "config")
    assert "routes[0].scope" in str(info.value) and "'scoope'" in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan", "1e300"])
@pytest.mark.parametrize(
    "table, key",
    [
        ("upstream", "deadline_seconds"),
        ("upstream", "timeout_seconds"),
        ("gateway", "request_body_timeout_seconds"),
        ("gateway", "leeway_seconds"),
        ("issuers.maskinporten", "refetch_cooldown_seconds"),
    ],
)
def test_non_finite_numbers_are_config_errors(table: str, key: str, value: str) -> None:
    # found by a fresh user: nan passed check-config and disabled the deadline or broke every
    # request at runtime; inf overflowed the upstream client's timer
    data = tomllib.loads((CONFIG_DIR / "skatteetaten-tt02.toml").read_text())
    node = data
    for part in table.split("."):
        node = node.setdefault(part, {})
    node[key] = tomllib.loads(f"v = {value}")["v"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert f"{table}.{key}" in str(info.value)


def test_check_config_lists_each_rights_packages_fields_and_row_filters(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(TT02)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    income = out[out.index("  rights package inntekt-sbl: releases 8 field path(s), nothing else"):
                 out.index("  rights package ssg-sbl")]
    assert "      field  oppgaveInntektsmottaker[].inntekt[].loennsinntekt.beskrivelse\n" in income
    released = [line.strip() for line in (CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    first = sorted(set(released))[:3]
    assert (f"      filter rows of oppgaveInntektsmottaker[].inntekt[] kept where loennsinntekt.beskrivelse (a string or an integer) in "
            f"{len(set(released))} values ({', '.join(repr(v) for v in first)}, ...); other rows withheld whole") in income
    assert "kept where kalendermaaned lies within the consented period" in income
    assert sorted(set(released))[3] not in out  # three of the values, not the list (it may be long)


def test_a_misspelt_resources_key_is_named(tmp_path: Path) -> None:
    data = _data()
    data["routes"][0]["altinn3_resource"] = data["routes"][0].pop("altinn3_resources")
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == "routes[0]" and "'altinn3_resource': a typo?" in str(info.value)


def test_check_config_warns_when_a_read_consent_covers_a_write_method(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TT02.read_text().replace('name = "inntekt"\nmethod = "GET"', 'name = "inntekt"\nmethod = ["GET", "DELETE"]')
    assert 'method = ["GET", "DELETE"]' in text
    config = tmp_path / "gw.toml"
    config.write_text(text)
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    assert main(["check-config", "--config", str(config)]) == 0, capsys.readouterr().err
    income, tax = capsys.readouterr().out.split("    spesifisertsummertskattegrunnlag-stadie:")
    assert "WARNING: the route takes DELETE but a consent to consent or read covers it" in income
    assert "WARNING" not in tax


def test_check_config_shows_the_newer_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TT02.read_text() + '''
[issuers.maskinporten]
audience = "https://api.example.no/"
'''
    text = text.replace("[rights_packages.ssg-sbl]\n", '[rights_packages.ssg-sbl]\nconsumers = ["999999999"]\n')
    config = tmp_path / "gw.toml"
    config.write_text(text)
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    assert main(["check-config", "--config", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "aud must name one of: https://api.example.no/" in out
    assert "rights package ssg-sbl (only for 999999999): releases 8 field path(s), nothing else" in out
    assert "the answer must name the subject at oppgaveInntektsmottaker[].inntektsmottaker.personidentifikator" in out
    assert "10 s per read, 60 s per exchange" in out


# -- issue 11: Altinn 3 route options -------------------------------------------------------------


def test_profiles_expect_the_published_delegation_sources() -> None:
    """TT02: Altinn's retrieve-token guide; prod: Digdir's token reference (docs/protocol.md §3.3)."""
    data = _data()
    assert parse_config(data, base_dir=CONFIG_DIR).altinn3_delegation_sources == ("https://tt02.altinn.no/",)
    data["gateway"]["profile"] = "prod"
    data.pop("issuers", None)
    assert parse_config(data, base_dir=CONFIG_DIR).altinn3_delegation_sources == ("https://www.altinn.no",)


def test_altinn3_route_options_parse() -> None:
    data = _data()
    route = data["routes"][1]
    route.update(accepted_actions=["Read", "consent", "read"], accept_handled_by=True, max_token_age_seconds=90,
                 error_codes={"consent": "SSG-010"})
    data.setdefault("issuers", {})["maskinporten"] = {"max_token_age_seconds": 300}
    config = parse_config(data, base_dir=CONFIG_DIR)
    parsed = config.routes[1]
    assert parsed.accepted_actions == ("read", "consent")
    assert parsed.accept_handled_by and parsed.max_token_age_seconds == 90
    assert dict(parsed.error_codes) == {"consent": "SSG-010"}
    assert config.issuers["maskinporten"].max_token_age_seconds == 300
    default = config.routes[2]  # sets none of the four
    assert default.accepted_actions == ("consent", "read") and not default.accept_handled_by
    assert default.max_token_age_seconds is None
    data["routes"][2].pop("error_codes")
    assert dict(parse_config(data, base_dir=CONFIG_DIR).routes[2].error_codes) == {}


@pytest.mark.parametrize(
    ("route", "issuers", "key_path"),
    [
        ({"accepted_actions": []}, {}, "routes[1].accepted_actions"),
        ({"accepted_actions": ["read write"]}, {}, "routes[1].accepted_actions[0]"),
        ({"accept_handled_by": "yes"}, {}, "routes[1].accept_handled_by"),
        ({"max_token_age_seconds": 0}, {}, "routes[1].max_token_age_seconds"),
        ({"error_codes": {"consent": "IM 010"}}, {}, "routes[1].error_codes.consent"),
        ({"error_codes": {"bearer": "IM-004"}}, {}, "routes[1].error_codes.bearer"),
        ({}, {"maskinporten": {"max_token_age_seconds": -1}}, "issuers.maskinporten.max_token_age_seconds"),
        ({}, {"altinn": {"max_token_age_seconds": 60}}, "issuers.altinn.max_token_age_seconds"),
    ],
)
def test_altinn3_route_option_errors_name_the_key(route: dict[str, Any], issuers: dict[str, Any], key_path: str) -> None:
    data = _data()
    data["routes"][1].update(route)
    data["issuers"] = issuers
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert info.value.key_path == key_path, info.value


def test_check_config_prints_the_altinn3_rules_per_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TT02.read_text().replace(
        'error_codes = { consent = "SSG-010" }',
        'accepted_actions = ["consent"]\n'
        'accept_handled_by = true\nmax_token_age_seconds = 120\nerror_codes = { consent = "SSG-010" }',
    )
    assert 'error_style = "skatteetaten"' in text
    config = tmp_path / "gw.toml"
    config.write_text(text)
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    assert main(["check-config", "--config", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    income, tax = out.split("    spesifisertsummertskattegrunnlag:")
    assert "a right covers it with action consent or read (any case)" in income
    assert "handler tokens refused" in income
    assert "supplier tokens: delegation_source https://tt02.altinn.no/ (trailing '/' ignored)" in income
    assert "a right covers it with action consent (any case)" in tax
    assert "handler tokens accepted: consumer == handledBy" in tax
    assert "Maskinporten token honoured up to 120 s after iat" in tax
    assert "error codes: consent SSG-010" in tax


@pytest.mark.parametrize(
    ("table", "values", "key_path"),
    [
        ("gateway", {"leeway_seconds": 99_999_999}, "gateway.leeway_seconds"),
    ],
)
def test_config_bounds(table: str, values: dict[str, Any], key_path: str) -> None:
    data = tomllib.loads(TT02.read_text())
    data[table].update(values)
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == key_path


def test_empty_algorithm_list_is_an_error() -> None:
    data = tomllib.loads(TT02.read_text())
    data["issuers"] = {"altinn": {"algorithms": []}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "issuers.altinn.algorithms"


def test_route_without_rights_package_must_say_unscoped() -> None:
    data = tomllib.loads(TT02.read_text())
    del data["routes"][0]["rights_package"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "routes[0].rights_package"
    data["routes"][0]["unscoped"] = True
    with pytest.raises(ConfigError) as info:  # an unscoped body is never read, so never checked
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "routes[0].response_subject"
    del data["routes"][0]["response_subject"]
    assert not parse_config(data, base_dir=CONFIG_DIR).routes[0].scoped


@pytest.mark.parametrize("profile", ["tt02", "prod"])
def test_production_profiles_need_https_keys_and_a_durable_log(profile: str) -> None:
    data = tomllib.loads(TT02.read_text())
    data["gateway"]["profile"] = profile
    host = "test.maskinporten.no" if profile == "tt02" else "maskinporten.no"
    data["issuers"] = {"maskinporten": {"jwks_url": f"http://{host}/jwk"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "issuers.maskinporten"
    data = tomllib.loads(TT02.read_text())
    data["gateway"]["profile"] = profile
    data["audit"]["url"] = "memory://"
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=CONFIG_DIR)
    assert info.value.key_path == "audit.url"


def test_deadline_below_the_read_timeout_is_a_config_error(issuer_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(issuer_url, "http://127.0.0.1:9", upstream={"timeout_seconds": 10, "deadline_seconds": 5})
    assert "upstream.deadline_seconds" in str(info.value)


def test_check_config_masks_upstream_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TT02.read_text().replace('url = "http://127.0.0.1:8081"', 'url = "http://svc:s3cret@127.0.0.1:8081"'))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "svc:***@127.0.0.1:8081" in out


def test_non_utf8_config_is_a_config_error_without_content(tmp_path: Path) -> None:
    path = latin1_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "not UTF-8 at byte 10 (line 1)" in message
    assert CONFIG_SECRET not in message and "inntekts" not in message
    assert info.value.__context__ is None and info.value.__cause__ is None  # no chained repr of the bytes


def test_non_utf8_values_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    values = tmp_path / "inntekt-sbl-loennsinntekt-beskrivelse.txt"
    values.write_bytes(values.read_bytes() + "s\u00f8k\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not UTF-8 at byte" in str(info.value) and info.value.key_path.startswith("rights_packages.")
    assert info.value.__context__ is None


def test_check_config_and_serve_refuse_non_utf8_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = latin1_config(tmp_path)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config: ") and "not UTF-8 at byte 10" in err and CONFIG_SECRET not in err
    done = subprocess.run([*cli(), "serve", "--config", str(path), "--port", "1"], capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"not UTF-8 at byte 10" in done.stderr and b"Traceback" not in done.stderr
    assert CONFIG_SECRET.encode() not in done.stderr


def _demo(tmp_path: Path) -> dict[str, Any]:
    import tomllib

    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    return tomllib.loads(path.read_text())


def _parse_at(tmp_path: Path, data: dict[str, Any]) -> object:
    from samtykke_gateway.config import parse_config

    return parse_config(data, base_dir=tmp_path)


def _route_entry(name: str, path: str, *, method: str | list[str] = "GET", scoped: bool = True) -> dict[str, Any]:
    route: dict[str, Any] = {"name": name, "method": method, "path": path, "scope": "skatteetaten:x",
                   "subject": {"header": "NAV-PersonIdent"}, "altinn2_service": "4804_210607"}
    if scoped:
        route["rights_package"] = "inntekt-sbl"
    else:
        route["unscoped"] = True
    return route


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8082/?a=b", "http://127.0.0.1:8082/base?", "http://127.0.0.1:8082/#frag",
    "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://127.0.0.1:abc", "http://127.0.0.1:-1",
    "ftp://127.0.0.1", "http://", "http:///base", "http://:8080/", "http://127.0.0.1:8082/a b",
    "HTTP//127.0.0.1",
])
def test_unusable_upstream_urls_are_config_errors(tmp_path: Path, url: str) -> None:
    data = _demo(tmp_path)
    data["upstream"]["url"] = url
    with pytest.raises(ConfigError) as info:
        _parse_at(tmp_path, data)
    assert info.value.key_path == "upstream.url"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8082", "https://upstream.internal/base/", "http://[::1]:65535/x",
                                 "https://svc:pw@upstream.internal"])
def test_usable_upstream_urls_load(tmp_path: Path, url: str) -> None:
    data = _demo(tmp_path)
    data["upstream"]["url"] = url
    _parse_at(tmp_path, data)


def test_check_config_refuses_upstream_query_and_says_credentials_are_not_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:8082/?a=b")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "upstream.url: must not have a query or fragment" in capsys.readouterr().err
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://svc:pw@127.0.0.1:8082")
    assert main(["check-config", "--config", str(path)]) == 0
    assert "never sent to the upstream" in capsys.readouterr().out


@pytest.mark.parametrize(("first", "second", "methods"), [
    ("/hdr/{a}", "/hdr/{b}", "GET,HEAD"),  # same shape, other parameter name
    ("/hdr/{a}", "/hdr/x", "GET,HEAD"),  # a parameter matches the literal too
    ("/{a}/{b}", "/hdr/{c}", "GET,HEAD"),
    ("/hdr/{a}", "/hdr/{a}", "GET,HEAD"),
])
def test_a_route_shadowed_by_an_earlier_one_is_refused(tmp_path: Path, first: str, second: str, methods: str) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route_entry("open", first, scoped=False), _route_entry("scoped", second)]
    with pytest.raises(ConfigError) as info:
        _parse_at(tmp_path, data)
    assert info.value.key_path == "routes[1].path"
    assert f"never reached for {methods}" in str(info.value) and "routes[0] (open)" in str(info.value)


def test_shadowing_counts_only_the_methods_both_routes_take(tmp_path: Path) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route_entry("a", "/hdr/{a}", method="POST"), _route_entry("b", "/hdr/{b}", method=["GET", "POST"])]
    with pytest.raises(ConfigError, match="never reached for POST:"):
        _parse_at(tmp_path, data)
    data["routes"] = [_route_entry("a", "/hdr/{a}", method="POST"), _route_entry("b", "/hdr/{b}", method="GET")]
    _parse_at(tmp_path, data)


@pytest.mark.parametrize(("first", "second"), [
    ("/hdr/x", "/hdr/{a}"),  # specific first: both reachable
    ("/hdr/{a}", "/hdr/{a}/more"),  # other length
    ("/hdr/x", "/hdr/y"),
    ("/hdr/x/{a}", "/hdr/{b}/y"),  # overlap (/hdr/x/y) but neither hides the other
])
def test_routes_that_stay_reachable_load(tmp_path: Path, first: str, second: str) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route_entry("one", first, scoped=False), _route_entry("two", second)]
    _parse_at(tmp_path, data)


@pytest.mark.parametrize(("gateway", "key"), [
    ({"health_path": "/metrics"}, "gateway.metrics_path"),
    ({"ready_path": "/healthz"}, "gateway.ready_path"),
    ({"health_path": "/probe", "metrics_path": "/probe"}, "gateway.metrics_path"),
    ({"health_path": "/healthz?x=1"}, "gateway.health_path"),
    ({"metrics_path": "/met rics"}, "gateway.metrics_path"),
    ({"ready_path": "/hdr/x"}, "gateway.ready_path"),  # a route's own path
])
def test_colliding_or_unmatchable_probe_paths_are_refused(tmp_path: Path, gateway: dict[str, Any], key: str) -> None:
    data = _demo(tmp_path)
    data["routes"].append(_route_entry("x", "/hdr/x"))
    data["gateway"].update(gateway)
    with pytest.raises(ConfigError) as info:
        _parse_at(tmp_path, data)
    assert info.value.key_path == key


ONE_TIME = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')


LIMITED = ('name = "inntekt"\n', 'name = "inntekt"\ndaily_limit = 5\n')


def test_check_config_prints_the_state_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                        extra='[state]\nurl = "redis://:s3cret@redis.internal:6379/0"\nrevocation_file = "revoked.txt"\n'
                              'jti_replay = "refuse"\n[state.feed]\nurl = "https://feed.example/api/serviceowner/consents"\n'
                              'api_key_env = "F3_APIKEY"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "consent state      redis://:***@redis.internal:6379/0 (shared" in out and "s3cret" not in out
    assert f"revocation file: {tmp_path / 'revoked.txt'}" in out
    assert "revocation feed: altinn2 https://feed.example/api/serviceowner/consents every 60 s" in out
    assert "4804_210607" in out and "reused jti: refuse" in out and "WARNING" not in out


def test_check_config_warns_about_one_time_and_limits_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "consent state      memory://" in out and "revocation file: (none)" in out and "WARNING" not in out
    path.write_text(path.read_text().replace(*ONE_TIME).replace(*LIMITED))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("WARNING: routes inntekt, spesifisertsummertskattegrunnlag use one_time/daily_limit with in-memory state"
            in out)
    assert "a single worker/replica only, and lost on restart; use [state] url = redis://" in out


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte order mark; tomllib refuses it ("Invalid
    statement at line 1, column 1"), so the config reader drops it (second fresh-user pass)."""
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    plain = load_config(path)
    path.write_bytes(b"\xef\xbb\xbf" + "# inntektsår\n".encode() + path.read_bytes())
    assert load_config(path).upstream_url == plain.upstream_url


def test_a_config_without_routes_is_refused() -> None:
    no_routes: list[list[Any] | None] = [[], None]
    for routes in no_routes:
        data = _data()
        if routes is None:
            del data["routes"]
        else:
            data["routes"] = routes
        with pytest.raises(ConfigError) as refused:
            _parse(data)
        assert refused.value.key_path == "routes" and "protects nothing" in str(refused.value)


def test_decision_memo_entries_are_configurable_and_zero_turns_the_memo_off() -> None:
    from samtykke_gateway.runtime import Gateway

    assert parse_config(_data(), base_dir=CONFIG_DIR).decision_memo_entries == 128
    for value, memo in ((0, False), (16, True)):
        data = _data()
        data.setdefault("gateway", {})["decision_memo_entries"] = value
        config = parse_config(data, base_dir=CONFIG_DIR)
        assert config.decision_memo_entries == value
        assert (Gateway(config).gate._memo is not None) is memo
    for bad in (-1, 65537, "128", 1.5):
        data = _data()
        data.setdefault("gateway", {})["decision_memo_entries"] = bad
        with pytest.raises(ConfigError) as refused:
            _parse(data)
        assert refused.value.key_path == "gateway.decision_memo_entries"


def test_a_misspelt_table_or_package_key_is_named_before_what_it_breaks() -> None:
    data = _data()
    data["rights_package"] = data.pop("rights_packages")  # [rights_package.x]: singular
    with pytest.raises(ConfigError) as refused:
        _parse(data)
    assert refused.value.key_path == "rights_package" and "did you mean [rights_packages]" in str(refused.value)
    data = _data()
    route = data["routes"][0]
    route["rights_pakage"] = route.pop("rights_package")
    with pytest.raises(ConfigError) as refused:
        _parse(data)
    assert refused.value.key_path == "routes[0].rights_pakage" and "did you mean rights_package" in str(refused.value)


def test_check_config_says_what_a_subtree_releases_and_what_it_makes_redundant(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    text = TT02.read_text().replace('  "grunnlag[].tekniskNavn",\n', '  "grunnlag[].tekniskNavn",\n  "grunnlag[].*",\n', 1)
    text = text.replace('subject = { path = "personidentifikator" }',
                        'subject = { path = "personidentifikator", party = "person" }', 1)
    (tmp_path / "c.toml").write_text(text)
    assert main(["check-config", "--config", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    assert "field  grunnlag[].*   (the whole subtree, including fields the upstream adds later)" in out
    assert "field  grunnlag[].tekniskNavn   (WARNING: already released whole by grunnlag[].*)" in out
    assert "subject from path 'personidentifikator' (person only)" in out


@pytest.mark.parametrize("name", ["Transfer-Encoding", "Connection", "ETag", "Content-Type", "Date", "X-Correlation-ID"])
def test_release_headers_cannot_name_framing_representation_or_gateway_headers(name: str) -> None:
    data = _data()
    data.setdefault("upstream", {})["release_headers"] = ["Link", name]
    with pytest.raises(ConfigError) as refused:
        _parse(data)
    assert refused.value.key_path.startswith("upstream.release_headers[")


def test_an_unknown_audit_store_option_is_a_config_error_not_a_crash_at_start(tmp_path: Path) -> None:
    data = _data()
    data["audit"] = {"url": f"sqlite:///{tmp_path}/x.db?bogus=1"}
    with pytest.raises(ConfigError) as refused:
        _parse(data)
    assert refused.value.key_path == "audit.url" and "bogus" in str(refused.value)


@pytest.mark.parametrize("header", ["Authorization", "Host", "X-Samtykke-Consumer"])
def test_the_consent_header_cannot_be_a_header_the_gateway_or_http_uses(header: str) -> None:
    data = _data()
    data.setdefault("gateway", {})["consent_header"] = header
    with pytest.raises(ConfigError) as refused:
        _parse(data)
    assert refused.value.key_path == "gateway.consent_header"
