"""Regression tests from review 4 (fixed): a client that leaves while the server is draining its write buffer gets an end record
that says the stream completed (stream_end), with bytes the client never received."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.proxy_support import STREAM_PATH, served
from tests.support import a3_headers

pytestmark = pytest.mark.anyio




def _read_a_little_and_leave(port: int, target: str, auth: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        got = 0
        while got < 200_000:
            got += len(sock.recv(65536))
        time.sleep(1.0)  # the server's buffer is full; it waits to drain
        return got      # closing with unread data: the client left


@pytest.mark.parametrize("mode", ["middleware", "sidecar"])
async def test_client_gone_during_drain_is_recorded_cut(mode, dev_issuer, issuer_url) -> None:
    async with served(mode, issuer_url) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        got = await asyncio.to_thread(_read_a_little_and_leave, port, STREAM_PATH + "?case=bigfinal",
                                      a3_headers(dev_issuer)["Authorization"])
        for _ in range(300):
            ends = [r for r in gw.records if r.reason in ("stream_end", "stream_cut")]
            if ends:
                break
            await asyncio.sleep(0.02)
        [end] = ends
        print(mode, "client received", got, "bytes; end record:", end.reason, end.detail, end.released_bytes)
        assert end.reason == "stream_cut", "the record says the client got the whole stream"
