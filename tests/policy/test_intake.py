"""Request intake (policy/intake.py): the one query parser, framing and path rules every caller
of the decision uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samtykke_gateway.exceptions import BadRequestError, InvalidTokenError, NotFoundError
from samtykke_gateway.policy.intake import (
    MAX_QUERY_BYTES,
    MAX_QUERY_PARAMETERS,
    RawRequest,
    app_segments,
    check_no_unexpected_body,
    check_request_framing,
    claim_header_value,
    declared_body_length,
    declares_body,
    parse_query,
)


def test_query_pairs_keep_order_blanks_and_repeats() -> None:
    assert parse_query(b"b=2&a=&a=1&c&d=x+y&e=%C3%A6") == [
        ("b", "2"), ("a", ""), ("a", "1"), ("c", ""), ("d", "x y"), ("e", "\u00e6")]
    assert parse_query(b"") == []


@pytest.mark.parametrize(("raw", "reason"), [
    (b"a=%ff", "bad_query"),  # an escape that is not UTF-8
    (b"\xc3\xa6=1", "bad_query"),  # a raw non-ASCII byte
    (b"a=" + b"x" * MAX_QUERY_BYTES, "bad_query"),
    (b"&".join([b"a=1"] * (MAX_QUERY_PARAMETERS + 1)), "too_many_parameters"),
    (b"&" * MAX_QUERY_PARAMETERS, "too_many_parameters"),  # empty fields count too
])
def test_query_refusals(raw: bytes, reason: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_query(raw)
    assert caught.value.reason == reason


def test_query_at_the_parameter_bound_is_accepted() -> None:
    assert len(parse_query(b"&".join([b"a=1"] * MAX_QUERY_PARAMETERS))) == MAX_QUERY_PARAMETERS


@given(st.binary(max_size=300) | st.text(alphabet="a=&%+;fF0C3", max_size=300).map(str.encode))
def test_any_query_parses_or_is_a_400(raw: bytes) -> None:
    try:
        pairs = parse_query(raw)
    except BadRequestError as exc:
        assert exc.status_code == 400 and exc.reason in ("bad_query", "too_many_parameters")
        return
    assert len(pairs) <= MAX_QUERY_PARAMETERS
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)


def test_raw_request_builds_the_header_map_once_lower_cased_with_repeats() -> None:
    request = RawRequest("GET", b"/a", b"", ((b"X-A", b"1"), (b"x-a", b"2"), (b"B", b"\xe6")))
    assert request.headers == {"x-a": ["1", "2"], "b": ["\u00e6"]}


def test_declared_body() -> None:
    assert not declares_body({}) and not declares_body({"content-length": ["0"]})
    assert declares_body({"content-length": ["3"]}) and declares_body({"transfer-encoding": ["chunked"]})
    assert declared_body_length({"content-length": ["12"]}) == 12 and declared_body_length({}) is None
    check_no_unexpected_body("POST", {"content-length": ["3"]})
    check_no_unexpected_body("GET", {"content-length": ["0"]})
    for method in ("GET", "HEAD"):
        with pytest.raises(BadRequestError) as caught:
            check_no_unexpected_body(method, {"transfer-encoding": ["chunked"]})
        assert caught.value.reason == "unexpected_body"


def test_app_segments_under_the_root_path() -> None:
    assert app_segments(b"/mount/a/./b/../c", "/mount") == (("mount",), ("a", "c"))
    assert app_segments(b"//a", "") == ((), ("a",))
    with pytest.raises(NotFoundError):
        app_segments(b"/other/a", "/mount")
    with pytest.raises(BadRequestError):
        app_segments(b"/a%2Fb", "")


def test_claim_header_value_refuses_what_is_not_printable_ascii() -> None:
    assert claim_header_value("999999999") == b"999999999"
    assert claim_header_value("0192:999999999") == b"0192:999999999"
    for bad in ("", "a\r\nb", "\u00e6", "x" * 257):
        with pytest.raises(InvalidTokenError):
            claim_header_value(bad)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"Content-Length", b"5"), (b"Content-Length", b"5")],
        [(b"content-length", b"0x5")],
        [(b"content-length", b"-1")],
        [(b"content-length", b" 5")],
        [(b"content-length", "５".encode())],
        [(b"transfer-encoding", b"chunked, chunked")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
    ],
)
def test_framing_two_parsers_could_read_differently_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequestError) as info:
        check_request_framing(headers)
    assert info.value.status_code == 400 and info.value.reason == "ambiguous_framing"


@pytest.mark.parametrize("headers", [[], [(b"content-length", b"12")], [(b"transfer-encoding", b"Chunked")]])
def test_one_plain_content_length_or_chunked_is_accepted(headers: list[tuple[bytes, bytes]]) -> None:
    check_request_framing(headers)


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "æøå", "", "a\x00b", "x" * 257, "tab\there"])
def test_a_claim_a_header_cannot_carry_is_401_unforwardable_claim(value: str) -> None:
    with pytest.raises(InvalidTokenError) as info:
        claim_header_value(value)
    assert info.value.status_code == 401 and info.value.reason == "unforwardable_claim"
