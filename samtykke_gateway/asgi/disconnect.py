"""Watching for the client to leave while the protected app works (per request).

ASGI tells an app that its client left only through ``receive()`` (``http.disconnect``), and
only when someone asks. An app answering from a stream (the sidecar's upstream proxy) does
not ask once it has the request body, and a server such as uvicorn silently drops the parts
of an answer nobody receives. :class:`DisconnectWatch` asks for it:

* :meth:`DisconnectWatch.tracking` wraps the app's ``receive`` to note when the app has had
  the whole request body (:attr:`~DisconnectWatch.body_done`);
* from then on (and from the start of a streamed answer) a watcher task waits for
  ``http.disconnect``; under ``cancel_on_disconnect`` it is started only when the app is still
  working :data:`WATCH_DELAY_SECONDS` later (:meth:`~DisconnectWatch.later`): most answers
  come sooner, and a timer costs a fraction of a task (measured: a watcher task on every
  request cost the sidecar ~5 % of its requests/s, and still ~6 % after 50 ms);
* when the client is gone the watcher cancels the app's task if control is inside the app and
  the middleware was asked to (:attr:`~DisconnectWatch.cancelled`); the responder then refuses
  further parts with :class:`OSError`, ASGI's "client gone".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from samtykke_gateway.asgi.intake import Message, Receive

__all__ = ["WATCH_DELAY_SECONDS", "DisconnectWatch"]

log = logging.getLogger("samtykke_gateway")

#: cancel_on_disconnect: seconds the app may work before the disconnect watch starts.
WATCH_DELAY_SECONDS = 1.0


class DisconnectWatch:
    """The disconnect watch of one request.

    :param receive: the server's ``receive`` (the watcher reads from it; a request message it
        gets all the same, from an app that reads its empty body late, is kept for the app).
    :param cancel_app: the middleware's ``cancel_on_disconnect``: cancel the app's task when
        the client leaves while control is inside the app.

    State: :attr:`body_done` (the app has had the whole request body), :attr:`client_gone`,
    :attr:`in_app` (control is inside the app: only then may its task be cancelled),
    :attr:`app_task` (the task to cancel), :attr:`cancelled` (the watcher cancelled it).
    """

    __slots__ = ("app_task", "body_done", "cancel_app", "cancelled", "client_gone", "in_app", "receive",
                 "stashed", "task", "timer")

    def __init__(self, receive: Receive, cancel_app: bool) -> None:
        self.receive = receive
        self.cancel_app = cancel_app
        self.body_done = False
        self.client_gone = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stashed: list[Message] = []  # request messages the watcher received for the app
        self.app_task: asyncio.Task[Any] | None = None
        self.in_app = False
        self.cancelled = False

    @property
    def watching(self) -> bool:
        """Whether the watcher task runs."""
        return self.task is not None

    def tracking(self, inner: Receive) -> Receive:
        """``inner``, noting when the app has had the last request body message (and then,
        under ``cancel_app``, starting the watch :data:`WATCH_DELAY_SECONDS` later)."""

        async def receive() -> Message:
            message = self.stashed.pop(0) if self.stashed else await inner()
            if not self.body_done and (
                message.get("type") != "http.request" or not message.get("more_body", False)
            ):
                self.body_done = True
                if self.cancel_app and message.get("type") == "http.request":
                    self.later()
            return message

        return receive

    def start(self) -> None:
        """Start the watcher task now (idempotent; cancels a pending :meth:`later`)."""
        if self.timer is not None:  # (harmless when called from the timer itself)
            self.timer.cancel()
            self.timer = None
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._watch())

    def later(self) -> None:
        """Start the watcher if the app is still working after :data:`WATCH_DELAY_SECONDS`."""
        if self.task is None and self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(WATCH_DELAY_SECONDS, self.start)

    def stop(self) -> None:
        """Cancel the timer and the watcher task (idempotent)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def client_is_gone(self) -> bool:
        """After the app has finished (no body reads can follow): has the client disconnected?
        Asks the server once, waiting at most 50 ms (used only on failure paths)."""
        if self.client_gone:
            return True
        try:
            message = await asyncio.wait_for(self.receive(), 0.05)
        except Exception:  # noqa: BLE001 - a timeout, or a server without an answer: not known gone
            return False
        if message.get("type") == "http.disconnect":
            self.client_gone = True
        return self.client_gone

    async def _watch(self) -> None:
        """Wait for the client's ``http.disconnect``; then mark the client gone and, when
        control is inside the app and ``cancel_app``, cancel the app's task."""
        try:
            for _ in range(4):  # a server's receive blocks until the client goes; never spin
                message = await self.receive()
                if message.get("type") != "http.disconnect":
                    self.stashed.append(message)  # the app's, not ours
                    continue
                self.client_gone = True
                task = self.app_task
                if self.in_app and task is not None and not task.done():
                    self.cancelled = True
                    task.cancel()
                return
        except Exception as exc:  # noqa: BLE001 - a watcher only: the stream goes on unwatched
            log.debug("disconnect watch ended: %s", type(exc).__name__)
