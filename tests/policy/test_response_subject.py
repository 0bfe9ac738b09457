"""Route ``response_subject``: the upstream's answer must be about the data subject asked for
(defence in depth against a cache or routing bug in the data API); else 502, nothing released."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samtykke_gateway.config import parse_config
from samtykke_gateway.dev.examples import example_body
from samtykke_gateway.exceptions import ConfigError, UpstreamError
from samtykke_gateway.scoping.package import check_response_subject
from samtykke_gateway.scoping.paths import parse_path
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import INCOME_PATH, INCOME_PERSON, TAX_BASE_PERSON, a2_headers, a3_headers, running_gateway, tax_base_path

SSG = json.loads(example_body("spesifisertsummertskattegrunnlag-2022.json"))
INCOME = json.loads(example_body("inntekt-2018-07.json"))
OTHER = "01017012345"
ROWS = parse_path("oppgaveInntektsmottaker[].inntektsmottaker.personidentifikator", "t")


def answering(body: Any, status: int = 200) -> Any:
    """An upstream that answers ``body`` whoever is asked about (the bug this guards against)."""
    raw = json.dumps(body).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})

    return app


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_answer_about_another_person_is_502_and_recorded(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    wrong = dict(SSG, personidentifikator=OTHER)
    async with running_gateway(mode, issuer_url, upstream_app=answering(wrong)) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert response.status_code == 502, response.text
        assert OTHER not in response.text and "grunnlag" not in response.text
        record = gw.records[-1]
        assert (record.decision, record.reason, record.status) == ("error", "upstream_subject_mismatch", 502)
        assert record.released_bytes == 0 and record.released_paths == []


@pytest.mark.anyio
async def test_one_foreign_row_in_a_list_is_enough(dev_issuer: DevIssuer, issuer_url: str) -> None:
    rows = [dict(r) for r in INCOME["oppgaveInntektsmottaker"]]
    rows[-1] = dict(rows[-1], inntektsmottaker={"personidentifikator": OTHER})
    async with running_gateway("middleware", issuer_url, upstream_app=answering({"oppgaveInntektsmottaker": rows})) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert response.status_code == 502
        assert gw.records[-1].reason == "upstream_subject_mismatch"


@pytest.mark.anyio
async def test_right_subject_and_empty_lists_are_released(dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:  # the example upstream is right
        assert (await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))).status_code == 200
        assert (await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))).status_code == 200
    async with running_gateway("middleware", issuer_url, upstream_app=answering({"oppgaveInntektsmottaker": []})) as gw:
        response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=a2_headers(dev_issuer))
        assert response.status_code == 200 and response.json() == {"oppgaveInntektsmottaker": []}


@pytest.mark.anyio
async def test_upstream_errors_are_not_read(dev_issuer: DevIssuer, issuer_url: str) -> None:
    # a 404 body is replaced by a generic one anyway; it is not checked for a subject
    async with running_gateway("middleware", issuer_url, upstream_app=answering({"kode": "x"}, status=404)) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert response.status_code == 404


@pytest.mark.parametrize(
    "document",
    [
        {"personidentifikator": 12879397780},  # a number is not the subject string
        {"personidentifikator": None},
        {"personidentifikator": " 12879397780"},
        {"personidentifikator": "１２８７９３９７７８０"},
        {},  # missing
        {"personidentifikator": [TAX_BASE_PERSON]},
        [],
    ],
)
def test_mismatches(document: Any) -> None:
    with pytest.raises(UpstreamError) as info:
        check_response_subject(document, ("personidentifikator",), TAX_BASE_PERSON)
    assert info.value.status_code == 502 and info.value.reason == "upstream_subject_mismatch"


@pytest.mark.parametrize("raw", [
    b'{"p":{"navn":"OTHER"},"p":{"id":"%s"}}',  # the first copy lacks the last name on the path
    b'{"p":{"id":"13097248022"},"p":{"id":"%s"}}',
    b'{"rows":[{"p":{"id":"13097248022"}}],"rows":[{"p":{"id":"%s"}}]}',
])
def test_a_member_repeated_anywhere_on_the_path_is_a_mismatch(raw: bytes) -> None:
    body = raw.replace(b"%s", TAX_BASE_PERSON.encode())
    path = parse_path("rows[].p.id" if body.startswith(b'{"rows"') else "p.id", "response_subject")
    with pytest.raises(UpstreamError) as info:
        check_response_subject(json.loads(body), path, TAX_BASE_PERSON, raw=body)
    assert info.value.reason == "upstream_subject_mismatch"


def test_a_name_on_the_path_that_also_occurs_elsewhere_is_read_again_and_passes() -> None:
    body = b'{"p":{"id":"%s"},"q":{"p":1,"id":2}}'.replace(b"%s", TAX_BASE_PERSON.encode())
    check_response_subject(json.loads(body), ("p", "id"), TAX_BASE_PERSON, raw=body)


def test_rows_path_edges() -> None:
    ok = {"oppgaveInntektsmottaker": [{"inntektsmottaker": {"personidentifikator": INCOME_PERSON}}] * 3}
    check_response_subject(ok, ROWS, INCOME_PERSON)
    check_response_subject({"oppgaveInntektsmottaker": []}, ROWS, INCOME_PERSON)
    bad: Any
    for bad in ({"oppgaveInntektsmottaker": {}}, {"oppgaveInntektsmottaker": [{}]}, {"oppgaveInntektsmottaker": [1]}):
        with pytest.raises(UpstreamError):
            check_response_subject(bad, ROWS, INCOME_PERSON)


@given(st.lists(st.sampled_from([INCOME_PERSON, OTHER]), max_size=8))
def test_rows_pass_exactly_when_every_row_is_the_subject(people: list[str]) -> None:
    document = {"oppgaveInntektsmottaker": [{"inntektsmottaker": {"personidentifikator": p}} for p in people]}
    if all(p == INCOME_PERSON for p in people):
        check_response_subject(document, ROWS, INCOME_PERSON)
    else:
        with pytest.raises(UpstreamError):
            check_response_subject(document, ROWS, INCOME_PERSON)


def test_config_errors() -> None:
    config_dir = Path(__file__).resolve().parent.parent.parent / "config"
    data = tomllib.loads((config_dir / "skatteetaten-tt02.toml").read_text())
    data["routes"][1]["response_subject"] = "person..id"
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=config_dir)
    assert info.value.key_path.startswith("routes[1].response_subject")
    data["routes"][1]["response_subject"] = 5
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=config_dir)
    assert info.value.key_path.startswith("routes[1].response_subject")


def _raw_check(raw: bytes, path: tuple[str | None, ...], subject: str) -> None:
    check_response_subject(json.loads(raw), path, subject, raw=raw)


def test_repeated_members_cannot_hide_another_subject() -> None:
    # found by a fresh user: decoded, only the last value is left, and that one was checked
    key = ("personidentifikator",)
    for raw in (
        b'{"personidentifikator":"%s","navn":"Else","personidentifikator":"%s"}' % (OTHER.encode(), TAX_BASE_PERSON.encode()),
        b'{"person\\u0069dentifikator":"%s","personidentifikator":"%s"}' % (OTHER.encode(), TAX_BASE_PERSON.encode()),
    ):
        with pytest.raises(UpstreamError) as info:
            _raw_check(raw, key, TAX_BASE_PERSON)
        assert info.value.reason == "upstream_subject_mismatch"
    rows = (b'{"oppgaveInntektsmottaker":[{"inntektsmottaker":{"personidentifikator":"%s"},'
            b'"inntektsmottaker":{"personidentifikator":"%s"}}]}' % (OTHER.encode(), INCOME_PERSON.encode()))
    with pytest.raises(UpstreamError):
        _raw_check(rows, ROWS, INCOME_PERSON)


def test_the_name_elsewhere_is_not_a_repeat() -> None:
    # another person named off the path (a spouse, say) is not this check's business
    spouse = b'{"ektefelle":{"personidentifikator":"%s"},"personidentifikator":"%s"}' % (OTHER.encode(), TAX_BASE_PERSON.encode())
    _raw_check(spouse, ("personidentifikator",), TAX_BASE_PERSON)
    raw = b'{"personidentifikator":"%s","felt":"personidentifikator","n":"a\\"b"}' % TAX_BASE_PERSON.encode()
    _raw_check(raw, ("personidentifikator",), TAX_BASE_PERSON)  # read strictly, found no repeat
    _raw_check(example_body("inntekt-2018-07.json"), ROWS, INCOME_PERSON)


@pytest.mark.anyio
async def test_repeated_subject_member_is_502_end_to_end(dev_issuer: DevIssuer, issuer_url: str) -> None:
    raw = example_body("spesifisertsummertskattegrunnlag-2022.json")
    tampered = raw.replace(b'"personidentifikator"', b'"personidentifikator":"%s","personidentifikator"' % OTHER.encode(), 1)
    assert json.loads(tampered)["personidentifikator"] == TAX_BASE_PERSON

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(tampered)).encode())]})
        await send({"type": "http.response.body", "body": tampered})

    async with running_gateway("middleware", issuer_url, upstream_app=app) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers=a3_headers(dev_issuer))
        assert response.status_code == 502 and gw.records[-1].reason == "upstream_subject_mismatch"
