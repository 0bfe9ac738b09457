"""Run an ASGI app under uvicorn in a background thread on loopback.

Used by the dev issuer (JWKS over HTTP), the demo and the tests that need a *real* HTTP server
on 127.0.0.1. Port 0 picks a free port; :attr:`ThreadedServer.url` reports the bound one.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["ThreadedServer"]


class ThreadedServer:
    """``with ThreadedServer(app) as server: httpx.get(server.url + "/x")``.

    :param app: any ASGI 3 application.
    :param host: bind address; loopback only by default.
    :param port: TCP port; 0 = any free port.
    :param start_timeout_seconds: how long :meth:`start` waits for the socket.
    :raises RuntimeError: the server did not start in time.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout_seconds: float = 10.0,
        **uvicorn_options: Any,
    ) -> None:
        # proxy_headers off: uvicorn would otherwise trust X-Forwarded-For from 127.0.0.1 and
        # rewrite the client address the gateway's own X-Forwarded-* logic must see (as `serve`).
        options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on",
                                   "proxy_headers": False}
        options.update(uvicorn_options)
        self._config = uvicorn.Config(app, host=host, port=port, **options)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._timeout = start_timeout_seconds
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
