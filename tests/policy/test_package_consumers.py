"""``[rights_packages.<name>] consumers``: only consumers with an agreement for a rights package
may use it, whatever their consent covers (the data source's agreements, docs/protocol.md §6)."""

from __future__ import annotations

from typing import Any

import pytest

from samtykke_gateway.cli.demo import demo_config
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import BANK, OTHER_BANK, a3_headers, running_gateway, tax_base_path


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_only_listed_consumers_get_the_package(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    packages = {"ssg-sbl": {"consumers": [OTHER_BANK]}}
    async with running_gateway(mode, issuer_url, rights_packages=packages) as gw:
        refused = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consumer=BANK))
        assert refused.status_code == 403, refused.text
        assert "personidentifikator" not in refused.text and "grunnlag" not in refused.text
        record = gw.records[-1]
        assert (record.decision, record.reason, record.rights_package) == ("deny", "rights_package_not_allowed", "ssg-sbl")
        assert record.consumer == BANK
        allowed = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consumer=OTHER_BANK))
        assert allowed.status_code == 200, allowed.text
        assert gw.records[-1].decision == "allow"


@pytest.mark.anyio
async def test_without_the_key_every_consumer_may_use_it(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        assert gw.config.package_consumers == {}
        for bank in (BANK, OTHER_BANK):
            response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer, consumer=bank))
            assert response.status_code == 200


@pytest.mark.parametrize(
    "bad, key",
    [
        ([], "rights_packages.ssg-sbl.consumers"),
        ("999999999", "rights_packages.ssg-sbl.consumers"),
        (["99999999"], "rights_packages.ssg-sbl.consumers[0]"),
        (["９９９９９９９９９"], "rights_packages.ssg-sbl.consumers[0]"),  # full-width digits
        ([999999999], "rights_packages.ssg-sbl.consumers[0]"),
        (["999999999", " 88888888"], "rights_packages.ssg-sbl.consumers[1]"),
    ],
)
def test_bad_consumer_lists_are_config_errors(bad: Any, key: str, issuer_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        demo_config(issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                    overrides={"rights_packages": {"ssg-sbl": {"consumers": bad}}})
    assert key in str(info.value)


def test_consumers_key_does_not_reach_the_package_parser(issuer_url: str) -> None:
    cfg = demo_config(issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                      overrides={"rights_packages": {"ssg-sbl": {"consumers": [BANK, OTHER_BANK]}}})
    assert cfg.package_consumers == {"ssg-sbl": frozenset({BANK, OTHER_BANK})}
    assert "ssg-sbl" in cfg.rights_packages
