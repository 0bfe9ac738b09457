"""What leaves with a scoped body: only allow-listed upstream headers; a body whose shape fits
no path is refused; a client cannot nominate away the gateway's own upstream headers."""

from __future__ import annotations

import pytest

from samtykke_gateway.dev.issuer import DevIssuer

from tests.proxy_support import SCOPED_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio
MODES = ["middleware", "sidecar"]


@pytest.mark.parametrize("mode", MODES)
async def test_scoped_response_headers_are_allow_listed(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=leaky-headers", headers=a3_headers(dev_issuer))
        assert response.status_code == 200, response.text
        for name in ("set-cookie", "x-internal-secret", "x-person-id", "content-disposition", "link", "etag"):
            assert name not in response.headers, name
        assert "01029413157" not in str(response.headers)
        assert response.headers["content-language"] == "nb"
        assert response.headers.get_list("date") == [response.headers["date"]]  # exactly one Date
        assert "2024" not in response.headers["date"]  # the server's own, not the upstream's


@pytest.mark.parametrize("mode", MODES)
async def test_release_headers_extends_the_allow_list(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url, upstream={"release_headers": ["X-Internal-Secret"]}) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=leaky-headers", headers=a3_headers(dev_issuer))
        assert response.headers["x-internal-secret"] == "token-abc"
        assert "set-cookie" not in response.headers


@pytest.mark.parametrize("mode", MODES)
async def test_body_of_unexpected_shape_is_502(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH + "?case=top-level-array", headers=a3_headers(dev_issuer))
        assert response.status_code == 502
        assert response.json()["reason"] == "upstream_body_unexpected_shape"
        assert "12879397780" not in response.text
        assert gw.records[-1].released_bytes == 0


@pytest.mark.parametrize("mode", MODES)
async def test_connection_cannot_nominate_gateway_headers(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    headers = {**a3_headers(dev_issuer),
               "Connection": "x-samtykke-consumer, x-samtykke-consent-id, x-correlation-id, x-samtykke-resource"}
    async with served(mode, issuer_url) as gw:
        response = await gw.client.get(SCOPED_PATH, headers=headers)
        assert response.status_code == 200, response.text
        seen = dict(gw.lab.requests[-1]["headers"])
        assert seen["x-samtykke-consumer"] == "999999999"
        assert seen["x-samtykke-resource"] == "ske-spesifisert-summert-skattegrunnlag"
        assert "x-samtykke-consent-id" in seen and "x-correlation-id" in seen
