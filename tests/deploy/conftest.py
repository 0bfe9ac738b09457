"""The metric names a real sidecar exports, for the dashboard and alert-rule tests."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from samtykke_gateway.dev.issuer import DevIssuer
from tests.sidecar.test_app import sidecar
from tests.state.test_service_enforcement import a3
from tests.state_support import state_config
from tests.support import INCOME_PATH, tax_base_path

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
             "summary": ("_sum", "_count", "")}


@pytest.fixture
async def exported_metric_names(dev_issuer: DevIssuer, issuer_url: str) -> set[str]:
    """Series names on a sidecar's ``/metrics`` after an allowed, a refused and an
    unauthenticated request (families without samples yet count by their type's suffixes)."""
    async with sidecar(state_config(issuer_url, "http://x.invalid")) as (client, _, _upstream):
        cid = str(uuid.uuid4())
        assert (await client.get(tax_base_path("2022"), headers=a3(dev_issuer, cid))).status_code == 200
        assert (await client.get(tax_base_path("2021"), headers=a3(dev_issuer, cid))).status_code == 403
        assert (await client.get(INCOME_PATH)).status_code == 401
        response: httpx.Response = await client.get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def metric_names_in(expression: str) -> set[str]:
    """``samtykke_*`` metric names a PromQL expression reads."""
    return set(re.findall(r"\bsamtykke_[a-z0-9_]+", expression))
