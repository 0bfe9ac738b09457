"""Example upstream: the tax administration's published example bodies as a data API.

Serves (synthetic test persons, published by Skatteetaten in api-dokumentasjon):

* ``GET /api/innrapportert/inntektsmottaker/{rettighetspakke}/{personidentifikator}/oppgave/inntekt
  ?fraOgMed=YYYY-MM[&tilOgMed=YYYY-MM]`` — income (``inntekt-2018-07.json``), monthly entries
  filtered to the requested period;
* ``GET /api/formueinntekt/spesifisertsummertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}``
  — specified summarised tax base (2022 and the 2018 settlement example);
* ``GET /api/formueinntekt/summertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}``.

It is what the demo and the tests put behind the gateway. ``compress`` (``"gzip"``,
``"deflate"``, ``"br"``) makes it compress bodies as a real API behind a CDN might. The bodies
are package data: nothing is read from outside the package at run time.
"""

from __future__ import annotations

import copy
import gzip
import json
import zlib
from functools import cache
from importlib import resources
from typing import Any

import brotli
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ExampleUpstream", "example_body", "load_example"]

INCOME_PERSON = "01029413157"


@cache
def load_example(name: str) -> Any:
    """A published example body (``"inntekt-2018-07.json"``, ...) as decoded JSON."""
    text = resources.files("samtykke_gateway.dev.data").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def example_body(name: str) -> bytes:
    """The example file's bytes exactly as published."""
    return resources.files("samtykke_gateway.dev.data").joinpath(name).read_bytes()


def _tax_base_examples() -> dict[tuple[str, str], str]:
    return {
        ("2022", "12879397780"): "spesifisertsummertskattegrunnlag-2022.json",
        ("2018", "12345678901"): "spesifisertsummertskattegrunnlag-2018-oppgjoer.json",
    }


class ExampleUpstream:
    """Builds the example data API (a Starlette app) and remembers what it was asked.

    :param compress: ``None`` or a ``Content-Encoding`` to apply to every JSON body.
    :attr requests: list of ``{"path", "query", "headers"}`` dicts, one per request received.
    """

    def __init__(self, *, compress: str | None = None) -> None:
        self.compress = compress
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route(
                    "/api/innrapportert/inntektsmottaker/{rettighetspakke}/{personidentifikator}/oppgave/inntekt",
                    self.income,
                ),
                Route(
                    "/api/formueinntekt/spesifisertsummertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}",
                    self.specified_tax_base,
                ),
                Route(
                    "/api/formueinntekt/summertskattegrunnlag/{rettighetspakke}/{inntektsaar}/{personidentifikator}",
                    self.summarised_tax_base,
                ),
            ]
        )

    def _note(self, request: Request) -> None:
        self.requests.append(
            {
                "path": request.url.path,
                "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                "query": request.url.query,
                "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            }
        )

    def _respond(self, payload: Any) -> Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"ETag": '"example-etag"', "Cache-Control": "max-age=60"}
        if self.compress == "gzip":
            body = gzip.compress(body)
        elif self.compress == "deflate":
            body = zlib.compress(body)
        elif self.compress == "br":
            body = brotli.compress(body)
        elif self.compress is not None:
            body = b"\x00" + body  # an encoding nobody can decode
        if self.compress is not None:
            headers["Content-Encoding"] = self.compress
        return Response(body, media_type="application/json", headers=headers)

    @staticmethod
    def _not_found() -> Response:
        return JSONResponse({"kode": "IM-004", "melding": "Fant ikke inntektsmottaker"}, status_code=404)

    async def income(self, request: Request) -> Response:
        self._note(request)
        if request.path_params["personidentifikator"] != INCOME_PERSON:
            return self._not_found()
        start = request.query_params.get("fraOgMed")
        end = request.query_params.get("tilOgMed") or start
        if not start:
            return JSONResponse({"kode": "IM-001", "melding": "fraOgMed mangler"}, status_code=400)
        body = copy.deepcopy(load_example("inntekt-2018-07.json"))
        body["oppgaveInntektsmottaker"] = [
            o for o in body["oppgaveInntektsmottaker"] if start <= o.get("kalendermaaned", "") <= (end or start)
        ]
        return self._respond(body)

    async def specified_tax_base(self, request: Request) -> Response:
        self._note(request)
        key = (request.path_params["inntektsaar"], request.path_params["personidentifikator"])
        name = _tax_base_examples().get(key)
        if name is None:
            return JSONResponse({"kode": "SSG-004", "melding": "Fant ikke skattegrunnlag"}, status_code=404)
        return self._respond(load_example(name))

    async def summarised_tax_base(self, request: Request) -> Response:
        self._note(request)
        key = (request.path_params["inntektsaar"], request.path_params["personidentifikator"])
        if key != ("2021", "21839199217"):
            return JSONResponse({"kode": "SG-004", "melding": "Fant ikke skattegrunnlag"}, status_code=404)
        return self._respond(load_example("summertskattegrunnlag-2021.json"))
