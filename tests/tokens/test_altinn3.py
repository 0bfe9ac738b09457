"""Altinn 3 consent in the Maskinporten token (``tokens/altinn3.py``): ``authorization_details``."""

from __future__ import annotations

import pytest

from samtykke_gateway.dev.issuer import DevIssuer
from tests.support import (
    BANK,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    running_gateway,
    tax_base_path,
)


@pytest.mark.anyio
async def test_authorization_details_must_be_an_array(dev_issuer: DevIssuer, issuer_url: str) -> None:
    entry = DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=[(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})])
    bearer = dev_issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, claims={"authorization_details": entry})
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 403 and response.json()["reason"] == "bad_consent_claims"
        assert "www-authenticate" not in response.headers
