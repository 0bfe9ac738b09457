"""``samtykke-gateway serve``: the sidecar under uvicorn, with JSON logs and reload on SIGHUP.

Reload (``kill -HUP <pid>``): the config file is read and validated again, a new
:class:`~samtykke_gateway.runtime.Gateway` + :class:`~samtykke_gateway.sidecar.app.SidecarApp` is built
and started, and the reference the server calls is swapped in one assignment. Requests already
running finish on the old app, which is closed once the last of them is done. An invalid
config (or one whose gateway cannot start, e.g. an unreachable disclosure store) is refused:
logged, counted in ``samtykke_config_reloads_total{result="refused"}``, and the running config
stays. The metrics registry survives reloads; the consent state is kept when ``[state]`` did
not change (so in-process one-time claims and revocations survive) and rebuilt otherwise.
Each issuer whose JWKS / metadata URL did not change keeps its cached keys (a reload during a
JWKS outage keeps serving); a reload whose added or changed issuer's keys cannot be loaded is
refused, and the log names that issuer, its URL (no userinfo or query) and the cause.

Exit codes: 0 after SIGINT/SIGTERM, 2 when the initial config is invalid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from samtykke_gateway.sidecar.app import SidecarApp, check_sidecar_config
from samtykke_gateway.config import GatewayConfig, load_config, memory_state_warning
from samtykke_gateway.asgi.error_bodies import render_error
from samtykke_gateway.correlation import new_id
from samtykke_gateway.exceptions import ConfigError, GatewayError, KeysUnavailableError, UnavailableError
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.observe.logs import DecisionLog, configure_logging
from samtykke_gateway.observe.metrics import GatewayMetrics
from samtykke_gateway.state import ConsentStateService, open_state

__all__ = ["ReloadingApp", "serve"]

log = logging.getLogger("samtykke_gateway.serve")


def _state_key(config: GatewayConfig) -> tuple[Any, ...]:
    return (config.state_url, config.state_key_prefix, config.revocation_file, config.jti_replay,
            config.check_revocation, config.state_feed, config.leeway_seconds)


class _Generation:
    """One config's app, gateway and state, with its in-flight request count."""

    def __init__(self, config: GatewayConfig, gateway: Gateway, app: SidecarApp, state: ConsentStateService) -> None:
        self.config = config
        self.gateway = gateway
        self.app = app
        self.state = state
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()


class ReloadingApp:
    """ASGI app that forwards to the current :class:`SidecarApp` and swaps it on reload.

    :param config_path: the TOML file, re-read by :meth:`reload`.
    :param config: the already validated first config (read from ``config_path`` if omitted).
    :param metrics: registry kept across reloads (new if omitted).
    :param tracer: optional OpenTelemetry tracer for every generation.
    :param listen_url: where the server listens (``http://host:port``), for the start log line.
    """

    def __init__(self, config_path: str | Path, *, config: GatewayConfig | None = None,
                 metrics: GatewayMetrics | None = None, tracer: Any = None, listen_url: str | None = None) -> None:
        self.config_path = str(config_path)
        self.listen_url = listen_url
        self._first_config = config or load_config(self.config_path)
        self.metrics = metrics or GatewayMetrics()
        self.observer = DecisionLog(self.metrics)
        self.tracer = tracer
        self.current: _Generation | None = None
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[Any]] = set()

    async def _build(self, config: GatewayConfig, state: ConsentStateService | None,
                     previous: Gateway | None = None) -> _Generation:
        new_state = state or open_state(config, metrics=self.metrics)
        gateway = Gateway(config, state=new_state, observer=self.observer, carry_keys_from=previous)
        app = SidecarApp(config, gateway=gateway, metrics=self.metrics, tracer=self.tracer)
        try:
            if state is None:
                await new_state.start()
            await gateway.start(require_new_keys=previous is not None)
        except BaseException:
            await app.shutdown()
            await gateway.close()
            if state is None:
                await new_state.close()
            raise
        self.metrics.bind_issuers(gateway.issuers)  # a refused reload keeps reporting the running ones
        return _Generation(config, gateway, app, new_state)

    async def start(self) -> None:
        self.current = await self._build(self._first_config, None)
        where = f" on {self.listen_url}" if self.listen_url else ""
        log.info("gateway started%s", where, extra={"event": "start", "config": self.config_path,
                                                     "listen": self.listen_url or ""})

    async def reload(self) -> bool:
        """Re-read the config file and swap it in. :returns: ``True`` when swapped."""
        async with self._reload_lock:
            old = self.current
            try:
                config = load_config(self.config_path)
                check_sidecar_config(config)
            except ConfigError as exc:
                self.metrics.reload(ok=False)
                log.error("config reload refused: %s", exc, extra={"event": "reload", "result": "refused"})
                return False
            except Exception as exc:  # noqa: BLE001 - a bug in validation must not kill the server
                # class only: an exception's text or repr can quote the file (a UnicodeDecodeError
                # carries every byte of it, database passwords included)
                self.metrics.reload(ok=False)
                log.error("config reload refused: reading the config failed (%s)", type(exc).__name__,
                          extra={"event": "reload", "result": "refused"})
                return False
            keep_state = old is not None and _state_key(old.config) == _state_key(config)
            try:
                new = await self._build(config, old.state if keep_state and old is not None else None,
                                        old.gateway if old is not None else None)
            except KeysUnavailableError as exc:  # an added or changed issuer's keys did not load
                self.metrics.reload(ok=False)
                log.error("config reload refused, the running config stays: %s", exc.detail,
                          extra={"event": "reload", "result": "refused"})
                return False
            except Exception as exc:  # noqa: BLE001 - any start failure refuses the reload
                self.metrics.reload(ok=False)
                log.error("config reload refused: the new gateway did not start (%s)", _why(exc),
                          extra={"event": "reload", "result": "refused"})
                return False
            self.current = new
            self.metrics.reload(ok=True)
            kept = sorted(set(new.gateway.issuers) - new.gateway.new_key_sources)
            log.info("config reloaded (cached keys kept for: %s)", ", ".join(kept) or "none",
                     extra={"event": "reload", "result": "ok", "config": self.config_path})
            _warn_memory_state(config)
            if old is not None:
                task = asyncio.get_running_loop().create_task(self._retire(old, close_state=not keep_state))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
                task.add_done_callback(_retire_done)
            return True

    async def _retire(self, gen: _Generation, *, close_state: bool) -> None:
        await gen.idle.wait()
        await gen.app.shutdown()
        await gen.gateway.close()
        if close_state:
            await gen.state.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            await task
        gen, self.current = self.current, None
        if gen is not None:
            await gen.app.shutdown()
            await gen.gateway.close()
            await gen.state.close()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        gen = self.current
        if gen is None:  # not started (or shutting down): refuse rather than guess (no store: no record)
            status, headers, body = render_error(
                UnavailableError("the gateway is not running (starting or shutting down)", reason="unavailable"),
                correlation_id=new_id())
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        gen.inflight += 1
        gen.idle.clear()
        try:
            await gen.app(scope, receive, send)
        finally:
            gen.inflight -= 1
            if gen.inflight == 0:
                gen.idle.set()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.error("gateway did not start: %s", _why(exc))
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                self._install_sighup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _install_sighup(self) -> None:
        loop = asyncio.get_running_loop()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            task.add_done_callback(_reload_done)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no SIGHUP
            log.info("SIGHUP reload not available in this process")


def serve(config_path: str, *, host: str, port: int, workers_note: bool = False) -> int:
    """Validate the config, then run the sidecar until SIGINT/SIGTERM (reload on SIGHUP).

    Environment: ``SAMTYKKE_GATEWAY_LOG_LEVEL`` (default ``INFO``), ``SAMTYKKE_GATEWAY_TRACING=1``
    for OpenTelemetry spans (extra ``otel``).

    :returns: exit code (2 when the config is invalid or tracing was asked for but is not installed).
    """
    import uvicorn

    configure_logging(os.environ.get("SAMTYKKE_GATEWAY_LOG_LEVEL", "INFO").upper())
    try:
        config = load_config(config_path)
        check_sidecar_config(config)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    _warn_memory_state(config)
    tracer = None
    if os.environ.get("SAMTYKKE_GATEWAY_TRACING") == "1":
        from samtykke_gateway.observe.tracing import get_tracer

        try:
            tracer = get_tracer()
        except RuntimeError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    app = ReloadingApp(config_path, config=config, tracer=tracer, listen_url=f"http://{listen}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                server_header=False, proxy_headers=False, log_config=None, **bounded_http_options())
    return 0


#: Most bytes of one request head (request line and header fields, names and values; chunk
#: trailers count too) before the connection is answered 400 and closed.
MAX_HEAD_BYTES = 64 * 1024
#: Most seconds from a connection's first moment (or a request's first byte) until its header
#: block is complete; a client trickling headers (slowloris) is disconnected after this.
HEAD_TIMEOUT_SECONDS = 10.0
#: Most seconds an idle keep-alive connection stays open after an answer (uvicorn's
#: ``timeout_keep_alive``).
KEEP_ALIVE_SECONDS = 5.0
#: Most seconds without a byte of a request body that has begun, while the server is reading
#: (a client that stops half-way through its body is disconnected after this).
BODY_IDLE_TIMEOUT_SECONDS = 30.0
#: After an early answer (given before the request body ended) the connection is half-closed and
#: what the client still sends is read and dropped for at most this long / this many bytes, then
#: closed: closing at once with unread bytes makes the kernel send a reset, and a client still
#: sending its body can lose the answer to it (RFC 9112 §9.6, "lingering close").
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


def bounded_http_options(max_head_bytes: int = MAX_HEAD_BYTES,
                         head_timeout_seconds: float = HEAD_TIMEOUT_SECONDS,
                         keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
                         body_idle_timeout_seconds: float = BODY_IDLE_TIMEOUT_SECONDS,
                         linger_seconds: float = LINGER_SECONDS,
                         linger_bytes: int = LINGER_BYTES) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments that bound request heads in size and time, and
    connections in time.

    uvicorn's httptools protocol reads a header block of any size and waits for it as long as
    the client trickles it (a review held a connection for minutes, and had a 10 MB header block
    authorised and forwarded); its h11 protocol bounds the size only. Both keep a connection
    open for as long as a client trickles the rest of a request body the server has already
    answered (each byte cancels the keep-alive timer, which is armed again only by the next
    answer: a fault run held connections for 60 s and more, until the process ran out of file
    descriptors). With httptools installed (extra ``fast``) a subclass

    * counts head bytes as the parser reports them (400 and close over ``max_head_bytes``) and
      closes a connection whose head is not complete within ``head_timeout_seconds``;
    * closes a connection whose request body has begun but receives no byte for
      ``body_idle_timeout_seconds`` while the server is reading (not while uvicorn holds the
      client back because the app has not read what came so far);
    * closes the connection once an answer is complete while its request body has not ended
      (an early answer: 400, 401, 405, 408, 413, ...; the gateway's own early answers also say
      ``Connection: close``, which every server honours, h11 included) — a lingering close:
      the answer is followed by a FIN, what the client still sends is dropped for at most
      ``linger_seconds`` / ``linger_bytes``, then the socket closes (an immediate close with
      unread bytes sends a reset that can destroy the answer before the client reads it).

    Without httptools: h11 with ``h11_max_incomplete_event_size``. Idle keep-alive connections
    are closed after ``keep_alive_seconds`` (uvicorn's ``timeout_keep_alive``) either way. A
    front proxy's own limits still belong in front of the gateway.

    :returns: ``{"http": protocol class, "timeout_keep_alive": s}`` or ``{"http": "h11",
        "h11_max_incomplete_event_size": n, "timeout_keep_alive": s}``.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return {"http": "h11", "h11_max_incomplete_event_size": max_head_bytes,
                "timeout_keep_alive": keep_alive_seconds}

    class _LingeringTransport:
        """The real transport, except that ``close()`` while a request body is still arriving
        half-closes it and lets the protocol drain (see ``linger_seconds``)."""

        __slots__ = ("_half_closed", "_protocol", "_transport")
        _transport: asyncio.Transport
        _protocol: Any  # the BoundedHttpToolsProtocol below
        _half_closed: bool

        def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
            self._transport = transport
            self._protocol = protocol
            self._half_closed = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

        def is_closing(self) -> bool:
            return self._half_closed or self._transport.is_closing()

        def close(self) -> None:
            if self._half_closed or self._transport.is_closing():
                return
            if self._protocol._body_pending and self._transport.can_write_eof():
                self._half_closed = True
                self._transport.write_eof()  # after the answer already buffered
                self._protocol._start_linger()
            else:
                self._transport.close()

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _head_bytes = 0  # as the parser reports them (url, names, values)
        _raw_head_bytes = 0  # as received while a head is open (llhttp buffers a long value)
        _in_head = True  # between requests, or inside a request head
        _head_timer: asyncio.TimerHandle | None = None
        _body_pending = False  # a request head is complete and its body has not ended
        _body_timer: asyncio.TimerHandle | None = None
        _raw_transport: asyncio.Transport | None = None
        _lingering: bool = False
        _linger_timer: asyncio.TimerHandle | None = None
        _lingered_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._raw_transport = transport
            super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # answered already: drop what the client still sends, bounded
                self._lingered_bytes += len(data)
                if self._lingered_bytes > linger_bytes:
                    self._end_linger()
                return
            if self._in_head:
                self._raw_head_bytes += len(data)
                if self._head_timer is None:  # bytes between requests (even a bare CRLF) start a head
                    self._arm()
            super().data_received(data)
            if self._in_head and self._raw_head_bytes > max_head_bytes + 65536 and not self.transport.is_closing():
                self.send_400_response("Request head too large")  # writes the 400 and closes
            elif self._body_pending:
                self._arm_body()  # body bytes came: the idle deadline starts again
            elif self._body_timer is not None:
                self._disarm_body()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._raw_head_bytes = 0
            self._body_pending = False

        def on_response_complete(self) -> None:
            if self._body_pending and not self.transport.is_closing():
                # answered before the request body ended: what is left would only be read and
                # dropped, for as long as the client cares to trickle it
                self.transport.close()
            super().on_response_complete()

        def eof_received(self) -> None:
            if self._lingering:  # the client finished sending: nothing more to drop
                self._end_linger()
                return
            super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._disarm_body()
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            super().connection_lost(exc)

        def _start_linger(self) -> None:
            self._lingering = True
            self._disarm()
            self._disarm_body()
            if self._raw_transport is None:
                return
            self._raw_transport.resume_reading()  # uvicorn may have paused it for the app
            self._linger_timer = asyncio.get_running_loop().call_later(linger_seconds, self._end_linger)

        def _end_linger(self) -> None:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            if self._raw_transport is not None and not self._raw_transport.is_closing():
                self._raw_transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._in_head = True
            if self._head_timer is None:
                self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_head = False
            self._body_pending = True  # until on_message_complete (at once for a request without one)
            super().on_headers_complete()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > max_head_bytes:  # uvicorn answers a parser error 400, closes
                raise ValueError("request head too large")

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = asyncio.get_running_loop().call_later(head_timeout_seconds, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def _arm_body(self) -> None:
            self._disarm_body()
            self._body_timer = asyncio.get_running_loop().call_later(body_idle_timeout_seconds, self._body_timeout)

        def _disarm_body(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timeout(self) -> None:
            self._body_timer = None
            if self.transport is None or self.transport.is_closing() or not self._body_pending:
                return
            if self.flow is not None and self.flow.read_paused:
                self._arm_body()  # uvicorn holds the client back (the app has not read yet)
                return
            self.transport.close()  # the app's receive() now says http.disconnect

    return {"http": BoundedHttpToolsProtocol, "timeout_keep_alive": keep_alive_seconds}


def _warn_memory_state(config: GatewayConfig) -> None:
    warning = memory_state_warning(config)
    if warning:
        log.warning(warning, extra={"event": "config"})


def _reload_done(task: asyncio.Task[Any]) -> None:
    """Retrieve a SIGHUP reload's outcome, so asyncio never logs "Task exception was never
    retrieved" with the exception's repr (which can quote the config file)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("config reload failed (%s)", type(exc).__name__, extra={"event": "reload", "result": "refused"})


def _retire_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing the previous config's gateway failed (%s)", type(task.exception()).__name__)


def _why(exc: BaseException) -> str:
    """A start failure for the log: our own messages (config key paths, store reasons) and OS
    errors (file paths) in full; anything else by class only (its text could quote data)."""
    if isinstance(exc, ConfigError | GatewayError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
