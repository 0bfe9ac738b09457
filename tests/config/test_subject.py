"""Where a request names its data subject (``samtykke_gateway/config/subject.py``): each location
read in-process, a new location added in one class (a cookie, here), and — most of this file —
the data subject in a JSON request body (``subject = { body = "fnr" }``), in both forms.

The gateway reads the whole body (bounded), checks it strictly (application/json, UTF-8 JSON
object, no duplicate or case-variant member names, the field a JSON string) and hands the app /
upstream exactly the bytes it checked.
"""

from __future__ import annotations

import dataclasses

import asyncio
import json
import socket
import tomllib
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samtykke_gateway.asgi.middleware import ConsentMiddleware
from samtykke_gateway.cli.main import main
from samtykke_gateway.config.subject import (
    LOCATIONS,
    BodySubject,
    HeaderSubject,
    PathSubject,
    QuerySubject,
    SubjectSource,
    subject_from_config,
)
from samtykke_gateway.dev.issuer import DevIssuer
from samtykke_gateway.exceptions import BadRequestError, ConfigError, UnsupportedMediaTypeError
from samtykke_gateway.policy.binding import check_governed_headers, check_governed_params, request_subject

from tests.support import TAX_BASE_PERSON, a3_headers, decisions, make_config, running_gateway
from tests.support import INCOME_PERSON, INCOME_SERVICE, a2_headers
from tests.body_support import Echo, post_body_route, BODY_ROUTES, BODY, NESTED, PERIOD, served, raw_head, raw_status, raw_reason, post_json

OTHER_PERSON = "01029413157"
DEMO = Path(__file__).resolve().parent.parent.parent / "samtykke_gateway" / "dev" / "data" / "demo.toml"
DEMO_ROUTES: list[dict[str, Any]] = tomllib.loads(DEMO.read_text())["routes"]
MODES = ["middleware", "sidecar"]
JSON = {"Content-Type": "application/json"}
LIMIT = 1024


# ----------------------------------------------------------------------------- each location, in-process


def test_each_location_reads_its_own_value() -> None:
    path_params = {"fnr": "1"}
    query = [("fnr", "2")]
    headers = {"nav-personident": ["3"], "content-type": ["application/json"]}
    body = b'{"person": {"ident": "4"}}'
    assert PathSubject("fnr").values(path_params, query, headers, None) == ["1"]
    assert QuerySubject("fnr").values(path_params, query, headers, None) == ["2"]
    assert HeaderSubject("nav-personident").values(path_params, query, headers, None) == ["3"]
    located = subject_from_config({"body": "person.ident"}, "routes[0].subject", set())
    assert located.values(path_params, query, headers, body) == ["4"]


def test_only_the_body_location_needs_the_body_and_only_the_query_location_governs_a_parameter() -> None:
    assert [cls.source for cls in LOCATIONS.values() if cls.needs_body] == ["body"]
    assert QuerySubject("fnr").governed_query_names == {"fnr"}
    assert PathSubject("fnr").governed_query_names == HeaderSubject("x").governed_query_names == frozenset()


def test_the_config_names_every_location_when_none_or_two_are_given() -> None:
    for table in ({}, {"path": "fnr", "query": "fnr"}):
        with pytest.raises(ConfigError) as caught:
            subject_from_config(table, "routes[0].subject", {"fnr"})
        assert caught.value.key_path == "routes[0].subject"
        assert "path, header, query or body" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        subject_from_config({"cookie": "fnr"}, "routes[0].subject", set())
    assert caught.value.key_path == "routes[0].subject.cookie"


@pytest.mark.parametrize("header", ["Authorization", "connection", "Content-Length", "Host", "X-Samtykke-Consumer"])
def test_a_header_the_gateway_or_http_uses_cannot_name_the_subject(header: str) -> None:
    with pytest.raises(ConfigError) as refused:
        subject_from_config({"header": header}, "routes[0].subject", set())
    assert refused.value.key_path == "routes[0].subject.header"


@pytest.mark.parametrize(("consent_header", "subject_header"), [(None, "AltinnSamtykke"), ("X-Consent", "x-consent")])
def test_the_configured_consent_header_cannot_name_the_subject(consent_header: str | None, subject_header: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["routes"][1]["subject"] = {"header": subject_header}
        if consent_header is not None:
            data["gateway"]["consent_header"] = consent_header

    with pytest.raises(ConfigError) as refused:
        make_config("http://issuer.invalid", "http://upstream.invalid", edit=edit)
    assert refused.value.key_path == "routes[1].subject.header"


def test_a_body_subject_checked_against_its_route_keeps_the_names_the_body_must_not_carry() -> None:
    located = subject_from_config({"body": "fnr"}, "routes[0].subject", {"aar"})
    bound = located.for_route(frozenset({"POST"}), frozenset({"fraOgMed"}), frozenset({"aar"}), "routes[0].subject")
    assert isinstance(bound, BodySubject) and bound.reserved == {"fraogmed", "aar"}
    with pytest.raises(BadRequestError) as caught:
        bound.read({"content-type": ["application/json"]}, b'{"fnr": "1", "FraOgMed": "2020-01"}')
    assert caught.value.reason == "ambiguous_parameter"
    with pytest.raises(UnsupportedMediaTypeError):
        bound.read({"content-type": ["text/plain"]}, b'{"fnr": "1"}')
    with pytest.raises(ConfigError) as refused:
        located.for_route(frozenset({"GET", "HEAD"}), frozenset(), frozenset({"aar"}), "routes[0].subject")
    assert refused.value.key_path == "routes[0].method"


@pytest.mark.parametrize("value", ["abc", "0102941315", "010294131570", "01029413157 ", " 01029413157",
                                   "0102941315\uff17", "+1029413157", "01029413157\x00"])
def test_a_subject_that_is_no_person_or_organisation_number_is_malformed_not_a_mismatch(value: str) -> None:
    route = make_config("http://issuer.invalid", "http://upstream.invalid").routes[0]
    path_params = {route.subject.name: value}
    with pytest.raises(BadRequestError) as caught:
        request_subject(route, path_params, [], {})
    assert caught.value.reason == "subject_malformed" and value not in str(caught.value)


def test_a_route_can_serve_persons_only_or_organisations_only() -> None:
    person_only = subject_from_config({"query": "id", "party": "person"}, "routes[0].subject", set())
    assert person_only == QuerySubject("id", party="person")
    org_only = subject_from_config({"header": "X-Org", "party": "organization"}, "routes[0].subject", set())
    route = make_config("http://issuer.invalid", "http://upstream.invalid").routes[0]
    for located, good, bad in [(person_only, TAX_BASE_PERSON, "999999999"), (org_only, "999999999", TAX_BASE_PERSON)]:
        bound = dataclasses.replace(route, subject=located)
        facts: tuple[list[tuple[str, str]], dict[str, list[str]]] = ([("id", good)], {"x-org": [good]})
        assert request_subject(bound, {}, *facts) == good
        with pytest.raises(BadRequestError) as caught:
            request_subject(bound, {}, [("id", bad)], {"x-org": [bad]})
        assert caught.value.reason == "subject_malformed"
    with pytest.raises(ConfigError) as refused:
        subject_from_config({"path": "fnr", "party": "people"}, "routes[0].subject", {"fnr"})
    assert refused.value.key_path == "routes[0].subject.party"


# ----------------------------------------------------------------------------- a new location is one class


@dataclass(frozen=True, slots=True)
class CookieSubject(SubjectSource):
    """``subject = { cookie = "fnr" }`` — the class a deployment would add for a new location."""

    source: ClassVar[str] = "cookie"

    @property
    def read_headers(self) -> frozenset[str]:
        return frozenset({"cookie"})

    def values(self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]],
               headers: Mapping[str, list[str]], body: bytes | None) -> list[str]:
        pairs = (part.strip().partition("=") for value in headers.get("cookie", []) for part in value.split(";"))
        return [value for name, _, value in pairs if name == self.name]


def _cookie_config(issuer_url: str) -> Any:
    route = {k: v for k, v in DEMO_ROUTES[1].items() if k not in ("rights_package", "response_subject")}
    route.update(name="ssg-cookie", path="/api/c/{rettighetspakke}/{inntektsaar}", subject={"cookie": "fnr"},
                 unscoped=True)
    return make_config(issuer_url, "http://upstream.invalid", routes=[*DEMO_ROUTES, route])


@pytest.mark.anyio
async def test_a_new_location_needs_only_its_class_in_LOCATIONS(monkeypatch: pytest.MonkeyPatch,
                                                                  dev_issuer: DevIssuer, issuer_url: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Config, binding, the one decision (gateway and ``explain`` alike) and ``check-config``
    take a location registered in ``LOCATIONS`` and nothing else."""
    from tests.policy.test_decide import Request, _both, _bearer, harness

    monkeypatch.setitem(LOCATIONS, "cookie", CookieSubject)
    config = _cookie_config(issuer_url)
    route = config.routes[-1]
    assert route.subject == CookieSubject("fnr")
    bearer = _bearer(a3_headers(dev_issuer))
    target = "/api/c/sbl/2022"
    async with harness(config) as h:
        for cookie, expected in [
            (f"a=b; fnr={TAX_BASE_PERSON}", (True, 0, "")),
            (f"fnr={OTHER_PERSON}", (False, 403, "subject_mismatch")),
            (f"fnr={TAX_BASE_PERSON}; fnr={TAX_BASE_PERSON}", (False, 400, "duplicate_parameter")),
            ("other=1", (False, 400, "subject_missing")),
        ]:
            outcome = await _both(h, bearer, None, Request(target=target, headers=(("cookie", cookie),)))
            assert (outcome.allowed, outcome.status, outcome.reason) == expected, cookie
        nominated = Request(target=target, headers=(("cookie", f"fnr={TAX_BASE_PERSON}"), ("connection", "cookie")))
        assert (await _both(h, bearer, None, nominated)).reason == "ambiguous_header"
    check_governed_params(route, [("fnr", "1")])  # a cookie governs no query parameter
    with pytest.raises(BadRequestError):
        check_governed_headers(route, {"cookie": ["fnr=1"], "connection": ["cookie"]}, "x-consent")
    assert request_subject(route, {}, [], {"cookie": [f"fnr={TAX_BASE_PERSON}"]}) == TAX_BASE_PERSON
    monkeypatch.setattr("samtykke_gateway.config.load_config", lambda path: config)
    assert main(["check-config", "--config", "cookie.toml"]) == 0
    assert "subject from cookie 'fnr'" in capsys.readouterr().out


def body_route(name: str = "ssg-body", field: str = "fnr", prefix: str = "/api/b") -> dict[str, Any]:
    """The tax base route (A3 resource, consented year in the path), POST, subject in the body,
    unscoped so the echo upstream's answer comes back as it is."""
    route = {k: v for k, v in DEMO_ROUTES[1].items() if k not in ("rights_package", "response_subject")}
    route.update(name=name, method=["POST", "PUT"], path=prefix + "/{rettighetspakke}/{inntektsaar}",
                 subject={"body": field}, unscoped=True)
    return route


ROUTES = [*DEMO_ROUTES, body_route(), body_route("ssg-nested", "person.ident", "/api/n")]
OVERRIDES: dict[str, Any] = {"routes": ROUTES, "gateway": {"max_request_body_bytes": LIMIT}}


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _reason(response: Any) -> str:
    return str(response.json().get("reason"))


# ----------------------------------------------------------------------------- allowed


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunked", [False, True])
async def test_allowed_upstream_sees_the_checked_bytes(mode: str, chunked: bool, dev_issuer: DevIssuer,
                                                       issuer_url: str) -> None:
    echo = Echo()
    # whitespace, a non-ASCII string, an escape, a number with trailing zero: never re-serialised
    raw = ('{ "soknad": {"belop": 1.50, "navn": "Ærlig \\u00e5"},\n  "fnr" : "' + TAX_BASE_PERSON + '" }').encode()
    async with running_gateway(mode, issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        content: Any = _chunks(raw) if chunked else raw
        response = await gw.client.post("/api/b/sbl/2022?x=1", content=content,
                                        headers={**a3_headers(dev_issuer), "Content-Type": "application/json; charset=UTF-8"})
        assert response.status_code == 200, response.text
        assert response.content == raw
        [seen] = echo.seen
        assert seen["body"] == raw
        assert seen["headers"]["content-length"] == [str(len(raw))]
        assert "transfer-encoding" not in seen["headers"]
        assert "authorization" not in seen["headers"]
        [record] = decisions(gw.records)
        assert (record.decision, record.reason, record.subject) == ("allow", "ok", TAX_BASE_PERSON)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_nested_dotted_path(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    async with running_gateway(mode, issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        headers = {**a3_headers(dev_issuer), **JSON}
        ok = json.dumps({"person": {"ident": TAX_BASE_PERSON, "navn": "x"}, "fnr": OTHER_PERSON}).encode()
        response = await gw.client.put("/api/n/sbl/2022", content=ok, headers=headers)
        assert response.status_code == 200, response.text
        assert echo.seen[0]["body"] == ok
        cases = [
            ({"person": {"ident": OTHER_PERSON}}, 403, "subject_mismatch"),
            ({"person": {"ident": TAX_BASE_PERSON, "Ident": OTHER_PERSON}}, 400, "ambiguous_parameter"),
            ({"person": {"ident": TAX_BASE_PERSON}, "PERSON": {"ident": OTHER_PERSON}}, 400, "ambiguous_parameter"),
            ({"person": TAX_BASE_PERSON}, 400, "subject_missing"),
            ({"person.ident": TAX_BASE_PERSON}, 400, "subject_missing"),
            ({"person": [{"ident": TAX_BASE_PERSON}]}, 400, "subject_missing"),
            ({"person": {"ident": int(TAX_BASE_PERSON)}}, 400, "subject_malformed"),
        ]
        for body, status, reason in cases:
            response = await gw.client.put("/api/n/sbl/2022", content=json.dumps(body).encode(), headers=headers)
            assert (response.status_code, _reason(response)) == (status, reason), body
        assert len(echo.seen) == 1


# ----------------------------------------------------------------------------- refused


REFUSED: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("wrong subject", b'{"fnr": "%s"}' % OTHER_PERSON.encode(), JSON, 403, "subject_mismatch"),
    ("organisation instead of person", b'{"fnr": "999999999"}', JSON, 403, "subject_mismatch"),
    ("missing field", b'{"fodselsnummer": "%s"}' % TAX_BASE_PERSON.encode(), JSON, 400, "subject_missing"),
    ("empty string", b'{"fnr": ""}', JSON, 400, "subject_missing"),
    ("number field", b'{"fnr": %s}' % TAX_BASE_PERSON.encode(), JSON, 400, "subject_malformed"),
    ("null field", b'{"fnr": null}', JSON, 400, "subject_malformed"),
    ("array field", b'{"fnr": ["%s"]}' % TAX_BASE_PERSON.encode(), JSON, 400, "subject_malformed"),
    ("over-long string", b'{"fnr": "%s"}' % (b"1" * 65), JSON, 400, "subject_malformed"),
    ("full-width digits", '{"fnr": "1287939778０"}'.encode(), JSON, 400, "subject_malformed"),
    ("duplicate subject", b'{"fnr": "%s", "fnr": "%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()),
     JSON, 400, "duplicate_member"),
    ("duplicate by escape", b'{"fnr": "%s", "f\\u006er": "%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()),
     JSON, 400, "duplicate_member"),
    ("duplicate elsewhere", b'{"fnr": "%s", "a": [{"b": 1, "b": 2}]}' % TAX_BASE_PERSON.encode(),
     JSON, 400, "duplicate_member"),
    ("case variant", b'{"fnr": "%s", "FNR": "%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()),
     JSON, 400, "ambiguous_parameter"),
    ("mixed-case variant", b'{"Fnr": "x", "fnr": "%s"}' % TAX_BASE_PERSON.encode(), JSON, 400, "ambiguous_parameter"),
    ("only a case variant", b'{"Fnr": "%s"}' % TAX_BASE_PERSON.encode(), JSON, 400, "subject_missing"),
    ("not JSON", b"fnr=%s" % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("JSON array", b'[{"fnr": "%s"}]' % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("trailing data", b'{"fnr": "%s"} {}' % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("byte order mark", b'\xef\xbb\xbf{"fnr": "%s"}' % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("not UTF-8", b'{"fnr": "%s", "n": "\xe6"}' % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("NaN", b'{"fnr": "%s", "n": NaN}' % TAX_BASE_PERSON.encode(), JSON, 400, "body_not_json"),
    ("too deep", b'{"fnr": "%s", "n": %s%s}' % (TAX_BASE_PERSON.encode(), b"[" * 40, b"]" * 40),
     JSON, 400, "body_not_json"),
    ("empty body", b"", JSON, 400, "body_not_json"),
    ("text/plain", b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode(), {"Content-Type": "text/plain"},
     415, "unsupported_media_type"),
    ("no content type", b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode(), {}, 415, "unsupported_media_type"),
    ("json suffix type", b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode(), {"Content-Type": "application/problem+json"},
     415, "unsupported_media_type"),
    ("latin-1 charset", b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode(),
     {"Content-Type": "application/json; charset=iso-8859-1"}, 415, "unsupported_media_type"),
    ("content coding", b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode(),
     {**JSON, "Content-Encoding": "gzip"}, 415, "unsupported_media_type"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_refused_bodies_never_reach_the_upstream(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    async with running_gateway(mode, issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        for title, body, extra, status, reason in REFUSED:
            response = await gw.client.post("/api/b/sbl/2022", content=body,
                                            headers={**a3_headers(dev_issuer), **extra})
            assert (response.status_code, _reason(response)) == (status, reason), (title, response.text)
        assert echo.seen == []
        assert [(r.decision, r.reason) for r in gw.records] == [("deny", c[4]) for c in REFUSED]
        wrong = gw.records[0]
        assert wrong.subject == OTHER_PERSON  # recorded as the request named it


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_body_is_413(mode: str, chunked: bool, dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    body = b'{"fnr": "%s", "pad": "%s"}' % (TAX_BASE_PERSON.encode(), b"x" * (LIMIT * 3))
    async with running_gateway(mode, issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        content: Any = _chunks(body, 512) if chunked else body
        response = await gw.client.post("/api/b/sbl/2022", content=content, headers={**a3_headers(dev_issuer), **JSON})
        assert response.status_code == 413, response.text
        assert _reason(response) == "request_body_too_large"
        # exactly at the limit is read
        fitting = b'{"fnr": "%s", "pad": "' % TAX_BASE_PERSON.encode()
        fitting += b"x" * (LIMIT - len(fitting) - 2) + b'"}'
        assert len(fitting) == LIMIT
        ok = await gw.client.post("/api/b/sbl/2022", content=fitting, headers={**a3_headers(dev_issuer), **JSON})
        assert ok.status_code == 200, ok.text
        assert [s["body"] for s in echo.seen] == [fitting]
        assert [(r.reason, r.status) for r in decisions(gw.records)] == [("request_body_too_large", 413), ("ok", 200)]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_query_naming_the_body_field_is_refused(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    body = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
    async with running_gateway(mode, issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        headers = {**a3_headers(dev_issuer), **JSON}
        for query in (f"fnr={OTHER_PERSON}", f"FNR={OTHER_PERSON}", f"fnr[]={OTHER_PERSON}", f"model.fnr={OTHER_PERSON}"):
            response = await gw.client.post(f"/api/b/sbl/2022?{query}", content=body, headers=headers)
            assert (response.status_code, _reason(response)) == (400, "ambiguous_parameter"), query
        nested = b'{"person": {"ident": "%s"}}' % TAX_BASE_PERSON.encode()
        for query in (f"ident={OTHER_PERSON}", f"person.ident={OTHER_PERSON}", f"Person.Ident={OTHER_PERSON}"):
            response = await gw.client.post(f"/api/n/sbl/2022?{query}", content=nested, headers=headers)
            assert (response.status_code, _reason(response)) == (400, "ambiguous_parameter"), query
        # a header naming a person is not read on a body route: the body decides
        response = await gw.client.post("/api/b/sbl/2022", content=body, headers={**headers, "fnr": OTHER_PERSON})
        assert response.status_code == 200, response.text
        assert len(echo.seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_non_body_route_unchanged(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A GET route's behaviour does not depend on the body routes beside it."""
    async with running_gateway(mode, issuer_url, **OVERRIDES) as gw:
        response = await gw.client.get(f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{TAX_BASE_PERSON}",
                                       headers=a3_headers(dev_issuer))
        assert response.status_code == 200, response.text


# ----------------------------------------------------------------------------- disconnects


def _scope(body_length: int, headers: dict[str, str]) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(body_length).encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/api/b/sbl/2022", "raw_path": b"/api/b/sbl/2022", "query_string": b"",
            "root_path": "", "headers": raw, "client": ("127.0.0.1", 40000), "server": ("gateway.test", 80)}


@pytest.mark.anyio
async def test_client_gone_while_sending_middleware(dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    middleware = ConsentMiddleware(echo, config=make_config(issuer_url, "http://upstream.invalid", **OVERRIDES))
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": b'{"fnr": "', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    try:
        await middleware(_scope(100, {**a3_headers(dev_issuer), **JSON}), receive, send)
        assert echo.seen == []
        [record] = middleware.gateway.store.records  # type: ignore[attr-defined]
        assert (record.decision, record.reason, record.status) == ("deny", "client_disconnected", 499)
    finally:
        await middleware.gateway.close()


@pytest.mark.anyio
async def test_replayed_body_then_the_clients_disconnect(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """The app gets the checked body as one message, then the client's own messages."""
    received: list[dict[str, Any]] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = ConsentMiddleware(app, config=make_config(issuer_url, "http://upstream.invalid", **OVERRIDES))
    body = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body[:5], "more_body": True},
                {"type": "http.request", "body": body[5:], "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    try:
        await middleware(_scope(len(body), {**a3_headers(dev_issuer), **JSON}), receive, send)
        assert received == [{"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"}]
    finally:
        await middleware.gateway.close()


@pytest.mark.anyio
async def test_client_gone_while_sending_sidecar(dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    async with running_gateway("sidecar", issuer_url, upstream_app=echo, **OVERRIDES) as gw:
        url = urlsplit(str(gw.client.base_url))
        head = "".join(f"{k}: {v}\r\n" for k, v in {**a3_headers(dev_issuer), **JSON}.items())
        request = (f"POST /api/b/sbl/2022 HTTP/1.1\r\nHost: {url.hostname}\r\n{head}Content-Length: 500\r\n\r\n"
                   '{"fnr": "').encode()
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            sock.sendall(request)
            await asyncio.sleep(0.2)
        for _ in range(200):  # the record is written on the server's thread
            if gw.records:
                break
            await asyncio.sleep(0.05)  # noqa: ASYNC110 - polling another thread's store
        assert [(r.reason, r.status) for r in gw.records] == [("client_disconnected", 499)]
        assert echo.seen == []


# ----------------------------------------------------------------------------- property

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
_NAMES = st.text(max_size=6) | st.sampled_from(["fnr", "FNR", "Fnr", "person", "ident"])
_VALUES = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(_NAMES, c, max_size=4),
                       max_leaves=25)
_SUBJECTS = st.sampled_from([TAX_BASE_PERSON, OTHER_PERSON, "", "999999999"]) | _SCALARS


def _serialised(doc: Any, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8")


_BODIES = (
    st.builds(_serialised, st.dictionaries(_NAMES, _VALUES, max_size=5), st.booleans())
    | st.builds(lambda rest, fnr, a: _serialised({**rest, "fnr": fnr}, a), st.dictionaries(_NAMES, _VALUES, max_size=4),
                _SUBJECTS, st.booleans())
    | st.builds(lambda rest, fnr, a: _serialised({"person": {**rest, "ident": fnr}}, a),
                st.dictionaries(_NAMES, _VALUES, max_size=3), _SUBJECTS, st.booleans())
    | st.binary(max_size=64)
    | st.builds(lambda b, fnr: b[:20] + b'{"fnr":"%s"}' % fnr.encode() + b[20:], st.binary(max_size=40),
                st.sampled_from([TAX_BASE_PERSON, OTHER_PERSON]))
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES, nested=st.booleans())
def _property(runner: asyncio.Runner, gw: Any, headers: dict[str, str], statuses: list[int], body: bytes,
              nested: bool) -> None:
    path = "/api/n/sbl/2022" if nested else "/api/b/sbl/2022"
    before = len(decisions(gw.records))
    response = runner.run(gw.client.post(path, content=body, headers=headers))
    assert response.status_code in (200, 400, 403, 413, 415), (body, response.text)
    assert len(decisions(gw.records)) == before + 1  # an unscoped answer's end record comes after
    statuses.append(response.status_code)


def test_arbitrary_bodies_never_fail_the_gateway(dev_issuer: DevIssuer, issuer_url: str) -> None:
    echo = Echo()
    statuses: list[int] = []
    with asyncio.Runner() as runner:
        context = running_gateway("middleware", issuer_url, upstream_app=echo, **OVERRIDES)
        gw = runner.run(context.__aenter__())
        try:
            _property(runner, gw, {**a3_headers(dev_issuer), **JSON}, statuses)
        finally:
            runner.run(context.__aexit__(None, None, None))
    assert len(statuses) >= 100 and {200, 400, 403} <= set(statuses), sorted(set(statuses))
    assert len(echo.seen) == statuses.count(200)
    for seen in echo.seen:  # whatever was forwarded is byte for byte a checked body
        assert json.loads(seen["body"])


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_upstream_gets_exactly_the_checked_bytes_with_consistent_framing(
    mode: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """Chunked (with a trailer), Expect: 100-continue, many small chunks: the upstream sees the
    checked bytes, one Content-Length equal to them, no Transfer-Encoding, no Expect."""
    auth = a3_headers(dev_issuer)["Authorization"]
    async with served(mode, issuer_url) as gw:
        pieces = [BODY[i:i + 3] for i in range(0, len(BODY), 3)]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-Trailer: 1\r\n\r\n"
        raw = gw.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", auth), ("Content-Type", "application/json"),
                                                       ("Transfer-Encoding", "chunked"),
                                                       ("Expect", "100-continue")]), chunked)
        assert raw.startswith(b"HTTP/1.1 100 Continue") or raw_status(raw) == 200, raw[:300]
        assert b"HTTP/1.1 200 " in raw, raw[:300]
        [seen] = gw.echo.seen
        assert seen["body"] == BODY
        assert seen["headers"]["content-length"] == [str(len(BODY))]
        assert "transfer-encoding" not in seen["headers"]
        if mode == "sidecar":
            assert "expect" not in seen["headers"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_repeated_or_listed_content_type_is_415(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    auth = a3_headers(dev_issuer)["Authorization"]
    cases = [
        [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
        [("Content-Type", "application/json; charset=utf-8, text/plain")],
        [("Content-Type", "application/json, text/plain")],
        [("Content-Type", "application/merge-patch+json")],
        [("Content-Type", "application/json; charset=utf-16")],
        [("Content-Type", "application/json"), ("Content-Encoding", "identity, gzip")],
        [("Content-Type", "application/json"), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
    ]
    async with served(mode, issuer_url) as gw:
        for headers in cases:
            raw = gw.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", auth), *headers,
                                                           ("Content-Length", str(len(BODY)))]), BODY)
            assert (raw_status(raw), raw_reason(raw)) == (415, "unsupported_media_type"), (headers, raw[:400])
        assert gw.echo.seen == []
        records = await gw.wait_records(len(cases))
        assert [r.status for r in records] == [415] * len(cases)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_utf16_and_utf32_bodies_are_refused(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
            body = BODY.decode().encode(encoding)
            response = await post_json(gw, "/api/b/sbl/2022", body, {**a3_headers(dev_issuer), **JSON})
            assert response.status_code == 400, (encoding, response.text)
        assert gw.echo.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_connection_cannot_nominate_away_the_headers_the_body_check_read(
    mode: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    """``Connection: content-type`` would have the sidecar drop the Content-Type the gateway
    checked: the upstream would read the checked bytes under a media type of its own choice
    (form, sniffed, ...). Refused, as a Connection nominating the subject header is."""
    auth = a3_headers(dev_issuer)["Authorization"]
    async with served(mode, issuer_url) as gw:
        for nominated in ("content-type", "Content-Type", "content-encoding", "content-length, keep-alive"):
            raw = gw.raw("\r\n".join([
                "POST /api/b/sbl/2022 HTTP/1.1", "Host: gateway.test", f"Authorization: {auth}",
                "Content-Type: application/json", f"Content-Length: {len(BODY)}", f"Connection: close, {nominated}",
            ]), BODY)
            if nominated.startswith("content-length"):  # re-set by the gateway from the checked bytes
                assert raw_status(raw) == 200, raw[:400]
                continue
            assert (raw_status(raw), raw_reason(raw)) == (400, "ambiguous_header"), (nominated, raw[:400])
        [seen] = gw.echo.seen
        assert (seen["body"], seen["headers"]["content-length"]) == (BODY, [str(len(BODY))])
        assert seen["headers"]["content-type"] == ["application/json"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_content_length_mismatch_and_disconnect(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A short body (client then gone): nothing forwarded, a record with 499. A long one: the
    declared length is what is read; the extra bytes are the next request, never this body."""
    auth = a3_headers(dev_issuer)["Authorization"]
    headers = [("Authorization", auth), ("Content-Type", "application/json")]
    async with served(mode, issuer_url) as gw:
        gw.raw(raw_head("POST", "/api/b/sbl/2022", [*headers, ("Content-Length", str(len(BODY) + 10))]), BODY,
               read=False)
        records = await gw.wait_records(1)
        assert [(r.reason, r.status) for r in records] == [("client_disconnected", 499)]
        assert gw.echo.seen == []
        # the declared length cuts the body short: the checked body is what it covers
        long_body = b'{"fnr": "%s"}' % TAX_BASE_PERSON.encode()
        raw = gw.raw(raw_head("POST", "/api/b/sbl/2022", [*headers, ("Content-Length", str(len(long_body) - 2))]),
                     long_body)
        assert raw_status(raw) == 400, raw[:300]
        assert gw.echo.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_body_exactly_at_and_over_the_limit_chunked_raw(mode: str, dev_issuer: DevIssuer,
                                                              issuer_url: str) -> None:
    auth = a3_headers(dev_issuer)["Authorization"]
    fitting = b'{"fnr": "%s", "pad": "' % TAX_BASE_PERSON.encode()
    fitting += b"x" * (LIMIT - len(fitting) - 2) + b'"}'
    over = fitting[:-2] + b'x"}'
    async with served(mode, issuer_url) as gw:
        for body, status in ((fitting, 200), (over, 413)):
            chunked = b"".join(b"1\r\n%s\r\n" % body[i:i + 1] for i in range(len(body))) + b"0\r\n\r\n"
            raw = gw.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", auth), ("Content-Type", "application/json"),
                                                           ("Transfer-Encoding", "chunked")]), chunked)
            assert raw_status(raw) == status, raw[:300]
        assert [s["body"] for s in gw.echo.seen] == [fitting]


REFUSED_BODIES: list[tuple[str, bytes, int, str]] = [
    ("NUL-suffixed twin after", b'{"fnr": "%s", "fnr\\u0000": "%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL-suffixed twin before", b'{"fnr\\u0000x": "%s", "fnr": "%s"}' % (OTHER_PERSON.encode(), TAX_BASE_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL-suffixed case twin", b'{"FNR\\u0000": "%s", "fnr": "%s"}' % (OTHER_PERSON.encode(), TAX_BASE_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL in the value", b'{"fnr": "%s\\u0000%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()), 400,
     "subject_malformed"),
    ("lone surrogate name", b'{"fnr": "%s", "\\ud800": 1}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("lone surrogate value", b'{"fnr": "%s\\udc00"}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("comment", b'{"fnr": "%s" /* , "fnr": "%s" */}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()), 400,
     "body_not_json"),
    ("trailing comma", b'{"fnr": "%s",}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("single quotes", b"{'fnr': '%s'}" % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("whitespace in value", b'{"fnr": " %s"}' % TAX_BASE_PERSON.encode(), 400, "subject_malformed"),
    ("plus sign in value", b'{"fnr": "+%s"}' % TAX_BASE_PERSON[1:].encode(), 400, "subject_malformed"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_refused_bodies(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url) as gw:
        for title, body, status, reason in REFUSED_BODIES:
            response = await post_json(gw, "/api/b/sbl/2022", body, {**a3_headers(dev_issuer), **JSON})
            got = (response.status_code, response.json().get("reason"))
            assert got[0] == status and (not reason or got[1] == reason), (title, response.text)
        assert gw.echo.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_unicode_case_folds_are_ambiguous(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """Names .NET (ToUpperInvariant), Java (equalsIgnoreCase) or Go (EqualFold) read as the
    subject field: long s, Kelvin sign, dotless i."""
    routes = [*BODY_ROUTES, post_body_route(1, "ssg-ks", "kids", "/api/k/{rettighetspakke}/{inntektsaar}")]
    async with served(mode, issuer_url, routes=routes) as gw:
        for twin in ("\u212aids", "kid\u017f", "k\u0131ds", "KIDS"):
            body = json.dumps({"kids": TAX_BASE_PERSON, twin: OTHER_PERSON}).encode()
            response = await post_json(gw, "/api/k/sbl/2022", body, {**a3_headers(dev_issuer), **JSON})
            assert (response.status_code, response.json().get("reason")) == (400, "ambiguous_parameter"), twin
        assert gw.echo.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_deep_and_wide_bodies_never_fail_the_gateway(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with served(mode, issuer_url, gateway={"max_request_body_bytes": 1 << 20}) as gw:
        headers = {**a3_headers(dev_issuer), **JSON}
        deep = b'{"fnr": "%s", "d": %s1%s}' % (TAX_BASE_PERSON.encode(), b'{"a":' * 5000, b"}" * 5000)
        wide = b'{"fnr": "%s", %s}' % (TAX_BASE_PERSON.encode(),
                                     b",".join(b'"k%d": %d' % (i, i) for i in range(60000)))
        brackets = b'{"fnr": "%s", "s": "%s"}' % (TAX_BASE_PERSON.encode(), b"[" * 5000)
        big_int = b'{"fnr": "%s", "n": %s}' % (TAX_BASE_PERSON.encode(), b"9" * 5000)
        for body, statuses in ((deep, {400}), (wide, {200}), (brackets, {200}), (big_int, {400})):
            assert len(body) <= 1 << 20
            response = await post_json(gw, "/api/b/sbl/2022", body, headers)
            assert response.status_code in statuses, response.text[:300]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_query_bracket_syntax_naming_the_nested_body_field(mode: str, dev_issuer: DevIssuer,
                                                                 issuer_url: str) -> None:
    """Rails, PHP and qs read ``?person[ident]=X`` as ``{"person": {"ident": "X"}}`` and merge it
    with the JSON body (Rails: the query wins, shallowly, so ``?person=`` replaces the object)."""
    async with served(mode, issuer_url) as gw:
        headers = {**a3_headers(dev_issuer), **JSON}
        for query in (f"person[ident]={OTHER_PERSON}", f"Person[Ident]={OTHER_PERSON}", f"person[ident][]={OTHER_PERSON}",
                      f"person%5Bident%5D={OTHER_PERSON}", f"person={OTHER_PERSON}", f"person[x]={OTHER_PERSON}"):
            response = await post_json(gw, f"/api/n/sbl/2022?{query}", NESTED, headers)
            assert (response.status_code, response.json().get("reason")) == (400, "ambiguous_parameter"), query
        assert gw.echo.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_governed_metadata_named_in_the_body_is_refused(mode: str, dev_issuer: DevIssuer,
                                                              issuer_url: str) -> None:
    """The gateway checks the year / period where the route says (path, query); a JSON body
    naming them too could be what the app reads (Laravel's input(): body over query; binders
    that merge route values into a body model)."""
    async with served(mode, issuer_url) as gw:
        a2 = {**a2_headers(dev_issuer, subject=INCOME_PERSON, services=[
            f"{INCOME_SERVICE}_fraOgMed=2018-06", f"{INCOME_SERVICE}_tilOgMed=2018-08"]), **JSON}
        ok = b'{"fnr": "%s", "note": "x"}' % INCOME_PERSON.encode()
        response = await post_json(gw, f"/api/i/sbl?{PERIOD}", ok, a2)
        assert response.status_code == 200, response.text
        for name in ("fraOgMed", "tilogmed", "FRAOGMED"):
            body = b'{"fnr": "%s", "%s": "2010-01"}' % (INCOME_PERSON.encode(), name.encode())
            response = await post_json(gw, f"/api/i/sbl?{PERIOD}", body, a2)
            assert (response.status_code, response.json().get("reason")) == (400, "ambiguous_parameter"), name
        a3 = {**a3_headers(dev_issuer), **JSON}
        for name in ("inntektsaar", "Inntektsaar", "rettighetspakke"):
            body = b'{"fnr": "%s", "%s": "2019"}' % (TAX_BASE_PERSON.encode(), name.encode())
            response = await post_json(gw, "/api/b/sbl/2022", body, a3)
            assert (response.status_code, response.json().get("reason")) == (400, "ambiguous_parameter"), name
        assert len(gw.echo.seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_non_body_route_still_streams_a_post_body(mode: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """A POST path-subject route beside the body routes: its body is not read, not limited and
    not replaced (bigger than max_request_body_bytes, any media type, chunked)."""
    post_path = post_body_route(1, "ssg-post", "x", "/api/p/{rettighetspakke}/{inntektsaar}/{personidentifikator}")
    post_path["subject"] = {"path": "personidentifikator"}
    async with served(mode, issuer_url, routes=[*BODY_ROUTES, post_path]) as gw:
        big = b"z" * (LIMIT * 4)
        response = await post_json(gw, f"/api/p/sbl/2022/{TAX_BASE_PERSON}", big,
                               {**a3_headers(dev_issuer), "Content-Type": "text/plain"})
        assert response.status_code == 200, response.text
        assert gw.echo.seen[-1]["body"] == big
        assert gw.echo.seen[-1]["headers"]["content-type"] == ["text/plain"]


@pytest.mark.anyio
@pytest.mark.parametrize("literal", ["person.ident", "Person.Ident", "person.ident\u0000x"])
async def test_literal_dotted_member_is_refused(literal: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """``{"person":{"ident":A},"person.ident":B}``: lodash ``_.get`` / Laravel ``Arr::get``
    read the literal member B."""
    body = json.dumps({"person": {"ident": TAX_BASE_PERSON}, literal: "01017012345"}).encode()
    async with running_gateway("middleware", issuer_url, **OVERRIDES) as gw:
        response = await gw.client.post("/api/n/sbl/2022", content=body,
                                        headers={**a3_headers(dev_issuer), "Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert gw.records[-1].reason == "ambiguous_parameter"


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["Content_Type", "Content_Encoding", "Content_Length", "Transfer_Encoding"])
async def test_underscore_content_headers_are_refused_on_body_routes(
    header: str, dev_issuer: DevIssuer, issuer_url: str
) -> None:
    body = json.dumps({"fnr": TAX_BASE_PERSON}).encode()
    headers = {**a3_headers(dev_issuer), "Content-Type": "application/json", header: "gzip"}
    async with running_gateway("middleware", issuer_url, **OVERRIDES) as gw:
        response = await gw.client.post("/api/b/sbl/2022", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert gw.records[-1].reason == "ambiguous_header"
