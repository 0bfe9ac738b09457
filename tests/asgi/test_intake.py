"""The request side of an exchange (asgi/intake.py), in-process."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from samtykke_gateway.asgi.intake import Intake
from samtykke_gateway.exceptions import BadRequestError, ClientDisconnectedError
from samtykke_gateway.exceptions import RequestBodyTooLargeError

from tests.support import make_config

pytestmark = pytest.mark.anyio


def _intake(*messages: MutableMapping[str, Any], **scope: Any) -> tuple[Intake, list[int]]:
    queue = list(messages)
    calls: list[int] = []

    async def receive() -> MutableMapping[str, Any]:
        calls.append(1)
        return queue.pop(0)

    config = make_config("http://issuer.invalid", "http://upstream.invalid")
    base = {"type": "http", "method": "POST", "path": "/a", "headers": [(b"Content-Type", b"application/json")]}
    return Intake({**base, **scope}, receive, config), calls


def test_the_raw_request_comes_from_the_scope() -> None:
    intake, _ = _intake(raw_path=b"/a%2Fb?x=1", query_string=b"y=2", root_path="/m")
    request = intake.request
    assert (request.method, request.raw_path, request.query_string, request.root_path) == ("POST", b"/a%2Fb", b"y=2", "/m")
    assert request.headers == {"content-type": ["application/json"]}
    assert _intake(path="/b/c")[0].request.raw_path == b"/b/c"  # no raw_path: the path


async def test_read_body_joins_the_parts_and_replays_them_to_the_app() -> None:
    intake, _ = _intake({"type": "http.request", "body": b'{"a"', "more_body": True},
                        {"type": "http.request", "body": b": 1}", "more_body": False},
                        {"type": "http.disconnect"})
    assert await intake.read_body(100) == b'{"a": 1}' and intake.body == b'{"a": 1}'
    receive = intake.app_receive()
    assert await receive() == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
    assert (await receive())["type"] == "http.disconnect"


async def test_read_body_stops_at_the_limit() -> None:
    intake, calls = _intake({"type": "http.request", "body": b"x" * 8, "more_body": True},
                            {"type": "http.request", "body": b"x" * 8, "more_body": True},
                            {"type": "http.request", "body": b"x", "more_body": False})
    with pytest.raises(RequestBodyTooLargeError):
        await intake.read_body(10)
    assert len(calls) == 2 and intake.body is None
    assert intake.body_unread(app_has_read=False) is False  # no Content-Length: nothing declared


async def test_read_body_refuses_a_client_gone_or_a_strange_message() -> None:
    gone, _ = _intake({"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnectedError):
        await gone.read_body(10)
    strange, _ = _intake({"type": "websocket.receive"})
    with pytest.raises(BadRequestError) as caught:
        await strange.read_body(10)
    assert caught.value.reason == "bad_request_body"


def test_a_declared_body_nobody_read_is_unread() -> None:
    intake, _ = _intake(headers=[(b"content-length", b"5")])
    assert intake.body_unread(app_has_read=False)
    assert not intake.body_unread(app_has_read=True)
    assert intake.app_receive() is intake.receive  # no body read: the client's own receive
