"""Streamed (unscoped) answers: the start record before the first byte, the end record after.

An unscoped route's answer streams through (headers as
:func:`~samtykke_gateway.asgi.responder.streaming_headers` makes them), so it cannot be counted
before it leaves. Its start gets the decision record (``allow``, written
before the start is sent: 503 if the store cannot take it); its end gets a second record with
the same correlation id: ``stream_end``, or ``stream_cut`` when the upstream, the app or the
client broke it off (the cause in ``detail``), with the byte count and SHA-256 of what was
handed to the server (docs/protocol.md §7). A cut stream ends without its last chunk, so the
client sees it incomplete; no traceback is logged.

Functions of the request's :class:`~samtykke_gateway.asgi.release.Responder`, which holds the
state (``stream_open``, ``stream_bytes``, ``stream_hash``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from samtykke_gateway.asgi.intake import Message
from samtykke_gateway.asgi.responder import streaming_headers
from samtykke_gateway.exceptions import AuditUnavailableError, ClientDisconnectedError

if TYPE_CHECKING:
    from samtykke_gateway.asgi.release import Responder

__all__ = ["end_stream", "start_streaming", "stream_part", "utc_now"]

log = logging.getLogger("samtykke_gateway")


#: ``(epoch second, "YYYY-MM-DDTHH:MM:SS")`` of the last :func:`utc_now` (rebinding is atomic).
_last_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """UTC now as ``2026-11-29T11:09:55.123456Z``: the date and time of day formatted once per
    second, the microseconds appended (0.5 µs; ``datetime.now().isoformat()`` 2 µs)."""
    global _last_second
    now = time.time()
    second = int(now)
    known, text = _last_second
    if second != known:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{int((now - second) * 1_000_000):06d}Z"


async def start_streaming(r: Responder) -> None:
    """The app started an unscoped answer (``r.start_message``): unless the client is already
    gone, append the start record (decision ``allow``; 503 if it cannot be written), then send
    the start with :func:`~samtykke_gateway.asgi.responder.streaming_headers`."""
    start = r.start_message
    if start is None:
        raise RuntimeError("body before response start")
    status = int(start["status"])
    if r.watch.body_done and r.record.method != "HEAD":
        # a client already gone (it gave up, or half-closed) gets no start record and spends
        # nothing: let the watcher look once before anything is written
        r.watch.start()
        await asyncio.sleep(0)
        if r.watch.client_gone:
            await r.deny(ClientDisconnectedError("the client disconnected before the answer"),
                     after_grant=True)
            return
    r.record.decision = "allow"
    # only an answer that can carry the source's data is a disclosure (HEAD, 204, 304 cannot)
    r.record.reason = ("upstream_status" if status >= 400 else "no_data_released"
                       if r.record.method == "HEAD" or status in (204, 304) else "ok")
    r.record.status = status
    r.record.upstream_status = status
    # open before the start record is written: if the app cancels this send mid-write (an
    # app's own disconnect handling), the exchange still closes the stream with an end record
    r.released = False  # set when the first body byte has been handed to the server
    r.stream_open = True
    r.stream_hash = hashlib.sha256()
    try:
        await r.append()
    except AuditUnavailableError as exc:
        r.stream_open = False
        r.failure = exc
        await r.send_error(exc)
        return
    headers = streaming_headers(start.get("headers", []), r.correlation_id.encode("ascii"), status=status)
    r.response_started = True
    await r.send({"type": "http.response.start", "status": status, "headers": headers})


async def stream_part(r: Responder, message: Message) -> None:
    """Pass one part of a streamed answer on and count it once the server has taken it; the
    last part closes the stream with its end record.

    :raises OSError: the client is gone (the part is not counted; the stream ends ``stream_cut``).
    """
    if not r.response_started:
        return  # start was refused (store down); drop the body
    watch = r.watch
    if watch.client_gone and r.stream_open:
        raise OSError("the client disconnected")
    await r.send(message)
    if not r.stream_open:
        return
    final = not message.get("more_body", False)
    if watch.watching and not final:
        # A server may take parts for a gone client without suspending (uvicorn drops
        # them): let the watcher see the disconnect before the next part. Not after the
        # last part: the server then reports its own end of the response as
        # http.disconnect too.
        await asyncio.sleep(0)
    if watch.client_gone:
        # seen while this part waited (e.g. for the server's buffer to drain): the server
        # may have dropped it, so it is not counted
        await end_stream(r, "client_disconnected")
        raise OSError("the client disconnected")
    body = message.get("body", b"")
    if body and r.record.method != "HEAD":  # counted once the server has taken it
        r.stream_bytes += len(body)
        r.stream_hash.update(body)
        if 200 <= r.record.status < 300:
            r.released = True  # data has left: a one-time consent is spent
    if final:
        await end_stream(r, None)


async def end_stream(r: Responder, cause: str | None) -> None:
    """Append the streamed answer's end record: ``stream_end`` (complete) or ``stream_cut``
    (``cause``: the reason code of what broke it off), with the bytes handed to the server
    and their SHA-256. The start record already stands; a store failure here is logged
    (the bytes have left) and the client's stream is not touched. No-op unless a stream
    is open."""
    if not r.stream_open:
        return
    r.stream_open = False
    r.watch.stop()
    end = dataclasses.replace(
        r.record,
        time=utc_now(),
        reason="stream_end" if cause is None else "stream_cut",
        detail=cause,
        released_bytes=r.stream_bytes,
        released_sha256=r.stream_hash.hexdigest(),
        metadata=dict(r.record.metadata),
        requested_params=dict(r.record.requested_params),
        effective_params=dict(r.record.effective_params),
        released_paths=list(r.record.released_paths),
    )
    if cause is not None:
        log.warning("streamed answer cut off: %s after %d bytes (correlation_id=%s)", cause,
                    r.stream_bytes, r.correlation_id)
    started = time.perf_counter()
    try:
        await r.gateway.store.append(end)
    except AuditUnavailableError:
        r.gateway.audit_guard.failed()
        r.gateway.observer.audit_write(time.perf_counter() - started, ok=False)
        log.error("disclosure log unavailable for the end of a streamed answer; its start record stands "
                  "(correlation_id=%s)", r.correlation_id)
        return
    r.gateway.observer.audit_write(time.perf_counter() - started, ok=True)
