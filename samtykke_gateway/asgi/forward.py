"""Handing an allowed request to the protected app, and every way the app can end.

:func:`forward` calls the app with the upstream scope, the checked body replayed (or the
client's own ``receive``, tracked for the disconnect watch), and the responder's ``send``;
then tells the consent state whether data was released (``state.after_response``: a
one-time consent is spent only then). The app's endings map onto the responder:

* it raises a :class:`~samtykke_gateway.exceptions.GatewayError` (the sidecar's proxy: 502,
  504, ...) before answering → an ``error`` record and that error; mid-stream → the stream's
  end record says ``stream_cut`` with its reason;
* it raises anything else → 502 ``upstream_error`` (the class is logged, never its text, which
  may quote personal data), or ``client_disconnected`` when the client left;
* it is cancelled by the disconnect watch (``cancel_on_disconnect``) → ``client_disconnected``
  (499), nothing counts as released; by the server (shutdown) → a streamed answer still gets
  its end record, and the cancellation goes on;
* it returns without answering → ``upstream_error`` or ``client_disconnected``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from samtykke_gateway.asgi.intake import Intake, Receive, Scope, Send
from samtykke_gateway.asgi.release import Abandoned, Responder
from samtykke_gateway.exceptions import GatewayError, UpstreamError
from samtykke_gateway.observe.logs import frames
from samtykke_gateway.policy.decide import Grant

__all__ = ["ASGIApp", "forward"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("samtykke_gateway")


async def forward(responder: Responder, intake: Intake, app: ASGIApp, scope: Scope, grant: Grant) -> None:
    """Run ``app`` on the allowed request; the consent state hears what was released."""
    gateway = responder.gateway
    responder.forward_started = time.perf_counter()
    try:
        await _call_app(responder, intake, app, scope, grant)
    finally:
        try:
            await gateway.state.after_response(grant, released=responder.released)
        except GatewayError as exc:  # the answer has left; the state backend logs its own failure
            log.warning("consent state update failed after response: %s", exc.reason)


async def _call_app(responder: Responder, intake: Intake, app: ASGIApp, scope: Scope, grant: Grant) -> None:
    watch = responder.watch
    receive = intake.app_receive()
    if watch.cancel_app or grant.rights_package is None:
        # may stream, or may be cancelled: know when the app has had the whole body
        headers = intake.request.headers
        framing = headers.get("content-length", ["0"]) != ["0"] or "transfer-encoding" in headers
        watch.body_done = intake.body is None and not framing
        receive = watch.tracking(receive)
        if watch.cancel_app:
            watch.app_task = asyncio.current_task()
            if watch.body_done:
                watch.later()
    try:
        watch.in_app = True
        try:
            await app(scope, receive, responder.send_from_app)
        finally:
            watch.in_app = False
    except Abandoned:
        return
    except GatewayError as exc:
        if responder.failure is not None:
            return  # already answered; this is the app stopping
        if responder.start_message is None:
            responder.gateway.observer.upstream(time.perf_counter() - responder.forward_started, status=None)
        if not responder.response_started:
            await responder.deny(exc, after_grant=True)
            return
        if responder.stream_open:
            await responder.end_stream(exc.reason)
            return
        raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if watch.cancelled and task is not None and task.uncancel() == 0:
            await responder.client_left()  # our own cancel (the client left), not the server's
            return
        if responder.stream_open:  # server shutting down mid-stream: still say what left
            await asyncio.shield(responder.end_stream("gateway_stopping"))
        raise
    except Exception as exc:
        if responder.failure is not None:
            log.debug("protected app stopped after the gateway answered: %s", type(exc).__name__)
            return
        if watch.client_gone and isinstance(exc, OSError):
            await responder.client_left()
            return
        if not responder.response_started:
            if await watch.client_is_gone():  # e.g. Starlette's ClientDisconnect reading the body
                await responder.client_left()
                return
            # the class and where (frames()): an app's exception text or locals may quote personal data
            log.error("protected app failed: %s at %s (correlation_id=%s)", type(exc).__name__, frames(exc),
                      responder.correlation_id)
            await responder.deny(UpstreamError("the data API failed", reason="upstream_error"), after_grant=True)
            return
        if responder.stream_open:
            if isinstance(exc, OSError) or watch.client_gone:  # send failed: the client is gone
                await responder.end_stream("client_disconnected")
                return
            log.error("protected app failed mid-stream: %s at %s (correlation_id=%s)", type(exc).__name__,
                      frames(exc), responder.correlation_id)
            await responder.end_stream("upstream_error")
            return
        raise
    finally:
        watch.stop()
    if responder.stream_open:  # the app returned without finishing its answer
        await responder.end_stream("client_disconnected" if await watch.client_is_gone() else "upstream_error")
    elif not responder.response_started and responder.failure is None:
        # the app returned without a response: often its own reaction to a client that left
        if await watch.client_is_gone():
            await responder.client_left()
        else:
            await responder.deny(UpstreamError("the data API gave no response", reason="upstream_error"),
                                 after_grant=True)
