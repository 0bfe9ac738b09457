"""The disconnect watch (asgi/disconnect.py), in-process: no server, no sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from samtykke_gateway.asgi.disconnect import DisconnectWatch

pytestmark = pytest.mark.anyio


class Client:
    """A server's ``receive``: hands out the queued messages, then blocks like a live client."""

    def __init__(self, *messages: MutableMapping[str, Any]) -> None:
        self.queue: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        for message in messages:
            self.queue.put_nowait(message)

    async def __call__(self) -> MutableMapping[str, Any]:
        return await self.queue.get()


async def test_tracking_notes_the_last_body_message_and_schedules_the_watch() -> None:
    client = Client({"type": "http.request", "body": b"a", "more_body": True},
                    {"type": "http.request", "body": b"b", "more_body": False})
    watch = DisconnectWatch(client, cancel_app=True)
    receive = watch.tracking(client)
    await receive()
    assert not watch.body_done and watch.timer is None
    await receive()
    assert watch.body_done and watch.timer is not None and not watch.watching  # started later, by the timer
    watch.stop()
    assert watch.timer is None


async def test_without_cancel_the_tracking_schedules_nothing() -> None:
    client = Client({"type": "http.request", "body": b"", "more_body": False})
    watch = DisconnectWatch(client, cancel_app=False)
    await watch.tracking(client)()
    assert watch.body_done and watch.timer is None


async def test_the_watch_cancels_the_app_when_the_client_leaves_inside_it() -> None:
    client = Client()
    watch = DisconnectWatch(client, cancel_app=True)
    app = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    watch.app_task, watch.in_app = app, True
    watch.start()
    await client.queue.put({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError):
        await app
    assert watch.client_gone and watch.cancelled
    watch.stop()


async def test_the_watch_never_cancels_outside_the_app() -> None:
    client = Client({"type": "http.disconnect"})
    watch = DisconnectWatch(client, cancel_app=True)
    app = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    watch.app_task = app  # in_app is False: the gateway's own step is running
    watch.start()
    assert watch.task is not None
    await watch.task
    assert watch.client_gone and not watch.cancelled and not app.done()
    app.cancel()


async def test_a_request_message_the_watch_receives_is_kept_for_the_app() -> None:
    client = Client({"type": "http.request", "body": b"late", "more_body": False}, {"type": "http.disconnect"})
    watch = DisconnectWatch(client, cancel_app=False)
    watch.start()
    assert watch.task is not None
    await watch.task
    assert watch.client_gone
    message = await watch.tracking(client)()
    assert message["body"] == b"late"


async def test_client_is_gone_asks_the_server_once() -> None:
    gone = DisconnectWatch(Client({"type": "http.disconnect"}), cancel_app=False)
    assert await gone.client_is_gone() and gone.client_gone
    silent = DisconnectWatch(Client(), cancel_app=False)
    assert not await silent.client_is_gone()  # no answer within 50 ms: not known gone
