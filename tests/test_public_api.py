"""The public API: explicit, sorted ``__all__``; every name importable; FastAPI mounting works."""

from __future__ import annotations

import __future__
import types

import httpx
import pytest
from fastapi import FastAPI, Request

import samtykke_gateway
from samtykke_gateway import ConsentMiddleware
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import TAX_BASE_PERSON, a3_headers, make_config, tax_base_path


def test_all_is_sorted_and_importable() -> None:
    names = samtykke_gateway.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(samtykke_gateway, name), name


def test_all_equals_the_public_names() -> None:
    """httpx's ``tests/test_exported_members.py``: every public name the package binds is in
    ``__all__`` and nothing else is (subpackages and ``from __future__`` features aside)."""
    public = {
        name for name, value in vars(samtykke_gateway).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }
    assert sorted(samtykke_gateway.__all__) == sorted(public)


@pytest.mark.anyio
async def test_fastapi_app_with_middleware_sees_the_consent(dev_issuer: DevIssuer, issuer_url: str) -> None:
    app = FastAPI()
    config = make_config(issuer_url, "http://unused.invalid")
    app.add_middleware(ConsentMiddleware, config=config)
    seen: dict[str, object] = {}

    @app.get("/api/formueinntekt/spesifisertsummertskattegrunnlag/{pakke}/{aar}/{fnr}")
    async def tax_base(request: Request, pakke: str, aar: str, fnr: str) -> dict[str, object]:
        grant = request.scope["samtykke.consent"]
        seen["consumer"] = grant.maskinporten.consumer
        seen["package"] = grant.rights_package_name
        return {"personidentifikator": fnr, "inntektsaar": aar, "hemmelig": "never released",
                "grunnlag": [{"tekniskNavn": "innskudd", "beloep": 4000000, "konto": "1234"}]}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        ok = await client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"personidentifikator": TAX_BASE_PERSON, "inntektsaar": "2022",
                             "grunnlag": [{"tekniskNavn": "innskudd", "beloep": 4000000}]}
        assert seen == {"consumer": "999999999", "package": "ssg-sbl"}
        denied = await client.get(tax_base_path("2021"), headers=a3_headers(dev_issuer))
        assert denied.status_code == 403
        none = await client.get(tax_base_path("2022"))
        assert none.status_code == 401
