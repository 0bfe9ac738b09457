"""Render a local HTML file in Debian's headless Chromium and report what a person would see.

Chromium is driven over ``--remote-debugging-pipe`` (the DevTools protocol as NUL-separated
JSON on file descriptors 3 and 4): standard library only, no websocket client, no browser
download. :func:`render` returns the DOM after load, a PNG screenshot, a printed PDF, the
console/log errors and every network request the page made.

Without ``/usr/bin/chromium`` the caller skips with a clear reason, except under ``CI=true`` or
``SAMTYKKE_REQUIRE_SERVICES=1``, where it fails (.ci/run installs the ``chromium`` package).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--remote-debugging-pipe",
)


def chromium_or_skip() -> str:
    path = os.environ.get("SAMTYKKE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if os.path.exists(path):
        return path
    message = "Debian's chromium is not installed (apt-get install chromium); the browser test needs it"
    if os.environ.get("CI") == "true" or os.environ.get("SAMTYKKE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Rendered:
    dom: str
    png: bytes
    pdf: bytes
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class _Pipe:
    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int, deadline: float):
        self.proc, self.write_fd, self.read_fd, self.deadline = proc, write_fd, read_fd, deadline
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"DevTools {method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium exited (code {self.proc.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return dict(json.loads(message))


def _onto_3_and_4(read_fd: int, write_fd: int) -> None:
    # via fds >= 10 first, so placing one cannot close the other
    high_read, high_write = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10), fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(high_read, 3)
    os.dup2(high_write, 4)


def render(path: Path, *, timeout_seconds: float = 60.0) -> Rendered:
    """Load ``path`` (file://) in a fresh headless Chromium; wait for ``load``; read it back."""
    chromium = chromium_or_skip()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    with tempfile.TemporaryDirectory(prefix="samtykke-chromium-") as profile:
        # fds 3 and 4 in the child: Chromium reads commands on 3 and writes on 4
        proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: _onto_3_and_4(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r, time.monotonic() + timeout_seconds)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
            pipe.events.clear()
            url = path.resolve().as_uri()
            pipe.send("Page.navigate", {"url": url}, session)
            pipe.wait_event("Page.loadEventFired")
            dom = pipe.send("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                 "returnByValue": True}, session)["result"]["value"]
            png = base64.b64decode(pipe.send("Page.captureScreenshot", {"format": "png"}, session)["data"])
            pdf = base64.b64decode(pipe.send("Page.printToPDF", {"printBackground": True}, session)["data"])
            rendered = Rendered(dom=dom, png=png, pdf=pdf)
            for event in pipe.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent":
                    rendered.requests.append(params["request"]["url"])
                elif method == "Runtime.exceptionThrown":
                    rendered.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                    rendered.errors.append(json.dumps(params.get("args", []))[:500])
                elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                    rendered.errors.append(params["entry"].get("text", "")[:500])
            # the navigation itself is the one request a self-contained page may cause
            rendered.requests = [u for u in rendered.requests if u != url]
            return rendered
        finally:
            with contextlib.suppress(OSError):
                os.write(to_browser_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def png_colours(png: bytes) -> int:
    """How many distinct RGB colours an 8-bit RGB(A), non-interlaced PNG holds (screenshot check)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    channels = 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, _height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data)
            assert depth == 8 and interlace == 0 and colour_type in (2, 6), "unexpected PNG format"
            channels = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row_start in range(0, len(raw), stride + 1):
        filter_type, line = raw[row_start], bytearray(raw[row_start + 1:row_start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if filter_type == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filter_type == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filter_type == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif filter_type == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, channels * 7))  # every 7th pixel
        previous = line
    return len(colours)
