"""Review of the body-subject routes (and the deadline / audience / readyz changes beside them).

End to end on loopback: the real middleware under uvicorn in front of an echo app, and the real
sidecar in front of an echo upstream under uvicorn. Raw sockets where a client library would
normalise the request (repeated headers, ``Expect``, chunk trailers, framing mismatches).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import (
    INCOME_PERSON,
    INCOME_SERVICE,
    TAX_BASE_PERSON,
    a2_headers,
    a3_headers,
    running_gateway,
    tax_base_path,
)
from tests.policy.test_body_subject import Echo
from tests.body_support import OTHER_PERSON, MODES, JSON, LIMIT, post_body_route, BODY_ROUTES, BODY_OVERRIDES, BODY, NESTED, PERIOD, Served, served, raw_head, raw_status, raw_reason, post_json

# ----------------------------------------------------------------------------- framing


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


# ----------------------------------------------------------------------------- body content


REFUSED_BODIES: list[tuple[str, bytes, int, str]] = [
    ("NUL-suffixed twin after", b'{"fnr": "%s", "fnr\\u0000": "%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL-suffixed twin before", b'{"fnr\\u0000x": "%s", "fnr": "%s"}' % (OTHER_PERSON.encode(), TAX_BASE_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL-suffixed case twin", b'{"FNR\\u0000": "%s", "fnr": "%s"}' % (OTHER_PERSON.encode(), TAX_BASE_PERSON.encode()),
     400, "ambiguous_parameter"),
    ("NUL in the value", b'{"fnr": "%s\\u0000%s"}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()), 403,
     "subject_mismatch"),
    ("lone surrogate name", b'{"fnr": "%s", "\\ud800": 1}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("lone surrogate value", b'{"fnr": "%s\\udc00"}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("comment", b'{"fnr": "%s" /* , "fnr": "%s" */}' % (TAX_BASE_PERSON.encode(), OTHER_PERSON.encode()), 400,
     "body_not_json"),
    ("trailing comma", b'{"fnr": "%s",}' % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("single quotes", b"{'fnr': '%s'}" % TAX_BASE_PERSON.encode(), 400, "body_not_json"),
    ("whitespace in value", b'{"fnr": " %s"}' % TAX_BASE_PERSON.encode(), 403, "subject_mismatch"),
    ("plus sign in value", b'{"fnr": "+%s"}' % TAX_BASE_PERSON[1:].encode(), 403, "subject_mismatch"),
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


# ----------------------------------------------------------------------------- other channels


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


# ----------------------------------------------------------------------------- readyz


@pytest.mark.anyio
async def test_many_concurrent_probes_fetch_the_jwks_once(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """JWKS unreachable at start-up: 50 concurrent probes and 50 more right after share one
    fetch per issuer per cooldown; a hanging JWKS holds a probe at most fetch_timeout."""
    hits: list[float] = []

    async def slow_jwks(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(time.monotonic())
        await asyncio.sleep(30)

    with ThreadedServer(slow_jwks) as jwks:
        issuers = {"altinn": {"jwks_url": f"{jwks.url}/altinn/jwk", "fetch_timeout_seconds": 0.5,
                              "refetch_cooldown_seconds": 30},
                   "maskinporten": {"jwks_url": f"{jwks.url}/mp/jwk", "fetch_timeout_seconds": 0.5,
                                    "refetch_cooldown_seconds": 30}}
        async with running_gateway("sidecar", issuer_url, issuers=issuers) as gw:
            started = time.monotonic()
            hits.clear()
            async with httpx.AsyncClient(base_url=str(gw.client.base_url), timeout=10) as client:
                answers = await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
                answers += await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
            assert {a.status_code for a in answers} == {503}
            assert time.monotonic() - started < 5
            assert len(hits) <= 2, len(hits)  # at most one per issuer (start-up fetch already counted)


# ----------------------------------------------------------------------------- deadline


@pytest.mark.anyio
async def test_deadline_cuts_a_streamed_answer_visibly(dev_issuer: DevIssuer, issuer_url: str) -> None:
    """An unscoped answer trickling past [upstream] deadline_seconds: the client gets the head
    and the parts so far, then the connection ends without the last chunk (never a clean,
    complete-looking body), within about the deadline."""

    async def trickle(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})

    merged = {**BODY_OVERRIDES, "upstream": {"timeout_seconds": 0.3, "deadline_seconds": 1.0}}
    async with running_gateway("sidecar", issuer_url, upstream_app=trickle, **merged) as gw:
        gwe = Served("sidecar", str(gw.client.base_url).rstrip("/"), Echo(), gw.store)
        started = time.monotonic()
        raw = gwe.raw(raw_head("POST", "/api/b/sbl/2022", [("Authorization", a3_headers(dev_issuer)["Authorization"]),
                                                       ("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(BODY)))]), BODY, timeout=10)
        elapsed = time.monotonic() - started
        assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
        assert b"transfer-encoding: chunked" in raw.lower()
        assert not raw.endswith(b"0\r\n\r\n"), raw[-50:]
        assert elapsed < 4, elapsed


# -- second fresh-user pass ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("literal", ["person.ident", "Person.Ident", "person.ident\u0000x"])
async def test_literal_dotted_member_is_refused(literal: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """``{"person":{"ident":A},"person.ident":B}``: lodash ``_.get`` / Laravel ``Arr::get``
    read the literal member B."""
    from tests.policy.test_body_subject import OVERRIDES

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
    from tests.policy.test_body_subject import OVERRIDES

    body = json.dumps({"fnr": TAX_BASE_PERSON}).encode()
    headers = {**a3_headers(dev_issuer), "Content-Type": "application/json", header: "gzip"}
    async with running_gateway("middleware", issuer_url, **OVERRIDES) as gw:
        response = await gw.client.post("/api/b/sbl/2022", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert gw.records[-1].reason == "ambiguous_header"


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["Content_Length", "Transfer_Encoding"])
async def test_underscore_framing_headers_are_refused_everywhere(header: str, dev_issuer: DevIssuer, issuer_url: str) -> None:
    async with running_gateway("middleware", issuer_url) as gw:
        response = await gw.client.get(tax_base_path("2022"), headers={**a3_headers(dev_issuer), header: "5"})
        assert response.status_code == 400 and gw.records[-1].reason == "ambiguous_header"
