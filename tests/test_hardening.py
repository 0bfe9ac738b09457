"""Findings of the fresh-user review, each pinned by a test."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from samtykke_gateway.app import SidecarApp
from samtykke_gateway.cli import main
from samtykke_gateway.config import parse_config
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.testing import DevIssuer

from .support import (
    BANK,
    INCOME_PATH,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    a2_headers,
    make_config,
    running_gateway,
    tax_base_path,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
TT02 = CONFIG_DIR / "skatteetaten-tt02.toml"


def test_sidecar_refuses_unmatched_pass(issuer_url: str) -> None:
    config = make_config(issuer_url, "http://127.0.0.1:9", gateway={"unmatched": "pass"})
    with pytest.raises(ConfigError) as info:
        SidecarApp(config)
    assert info.value.key_path == "gateway.unmatched"


@pytest.mark.parametrize(
    ("table", "values", "key_path"),
    [
        ("gateway", {"leeway_seconds": 99_999_999}, "gateway.leeway_seconds"),
    ],
)
def test_config_bounds(table: str, values: dict, key_path: str) -> None:
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


def test_check_config_masks_upstream_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TT02.read_text().replace('url = "http://127.0.0.1:8081"', 'url = "http://svc:s3cret@127.0.0.1:8081"'))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "svc:***@127.0.0.1:8081" in out




@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        "?fraOgMed=2018-07&TilOgMed=2019-12",
        "?fraOgMed=2018-07&tilOgMed[]=2019-12",
        "?FRAOGMED=2018-01&fraOgMed=2018-07",
        "?fraOgMed=2018-07&tilOgMed%5B0%5D=2019-12",
        "?fraOgMed=2018-07&fraOgMed=2018-07",
    ],
)
async def test_governed_parameter_variants_are_refused(query: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(INCOME_PATH + query, headers=a2_headers(dev_issuer))
        assert response.status_code == 400, response.text
        assert response.json()["reason"] in ("ambiguous_parameter", "duplicate_parameter")
        assert gw.upstream.requests == []


@pytest.mark.anyio
async def test_query_subject_case_variant_cannot_name_another_person(dev_issuer: DevIssuer, issuer_url: str) -> None:
    routes = tomllib.loads((Path(__file__).parent.parent / "samtykke_gateway/data/demo.toml").read_text())["routes"]
    route = dict(routes[1])
    route.update(name="ssg-query", path="/api/q/{rettighetspakke}/{inntektsaar}", subject={"query": "fnr"})
    async with running_gateway("middleware", issuer_url, routes=[*routes, route]) as gw:
        details = [DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK,
                                             rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])]
        bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=details)
        headers = {"Authorization": f"Bearer {bearer}"}
        for q in (f"fnr={TAX_BASE_PERSON}&FNR=01029413157", f"fnr={TAX_BASE_PERSON}&fnr[]=01029413157"):
            response = await gw.client.get(f"/api/q/sbl/2022?{q}", headers=headers)
            assert response.status_code == 400, response.text
        assert gw.upstream.requests == []


@pytest.mark.anyio
async def test_wrong_method_is_405(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.post(tax_base_path("2022"), headers=a2_headers(dev_issuer))
        assert response.status_code == 405 and response.json()["reason"] == "method_not_allowed"


@pytest.mark.anyio
async def test_authorization_details_must_be_an_array(dev_issuer: DevIssuer, issuer_url: str) -> None:
    entry = DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, claims={"authorization_details": entry})
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 401 and response.json()["reason"] == "bad_consent_claims"
