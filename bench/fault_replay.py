"""Replay issue 16's faults 1, 3 and 5 against real processes on 127.0.0.1 and print what happened.

Run (repository root, venv active; scenario 3 needs the ``redis-server`` binary)::

    python bench/fault_replay.py [--only 1,3,5] [--requests 200] [--hang-seconds 12] [--json out.json]

Everything listens on 127.0.0.1 and is stopped at the end; each phase is bounded in requests and
seconds (``--max-seconds`` for the whole run, default 180). The example upstream runs as its own
uvicorn process; every gateway is a ``samtykke-gateway serve`` process.

1. **Reload during a JWKS outage.** ``samtykke-gateway dev-issuer`` (its own process, keys in a
   temporary ``--keys-dir``; tokens minted here from the same keys) serves the JWKS; the gateway
   warms its keys, answers ``--requests`` valid Altinn 2 requests, then the issuer is stopped,
   SIGHUP is sent and the reload's outcome is read from the gateway's log; then ``--requests``
   valid requests again: the count of 200 vs 503 (and reasons). Fixed: all 200 (the key sets
   carry over a reload).
3. **Redis losing its data.** A ``redis-server`` of our own (``--save "" --appendonly no``):
   ``--requests`` one-time consents are spent (each 200), Redis is killed and started empty,
   and the same requests are replayed: *double deliveries* (a second 200) must be 0; the
   answers should be 503 ``consent_state_reset``. Then ``samtykke-gateway state confirm-reset``
   and one fresh consent (200 again). The same with ``--appendonly yes --appendfsync always``
   (3b): nothing lost, replays are 403 ``consent_spent``. Exit 1 when 3 or 3b delivered twice.
4. (not here.)
5. **A hanging JWKS endpoint.** A loopback JWKS server that answers with ``max-age=2`` and then
   switches to accepting connections and never answering; the gateway has
   ``max_ttl_seconds = 2``, ``fetch_timeout_seconds = 2``, ``refetch_cooldown_seconds = 5`` and
   no token cache. Latency p50/p99 (and statuses) of valid requests for ``--hang-seconds`` while
   it hangs, against a baseline while it answers. Fixed: p99 close to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from samtykke_gateway.dev.kit import load_dev_issuer  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402

BANK = "999999999"
INCOME_PERSON = "01029413157"
TAX_PERSON = "12879397780"
INCOME_PATH = f"/api/innrapportert/inntektsmottaker/sbl/{INCOME_PERSON}/oppgave/inntekt?fraOgMed=2018-07"
TAX_PATH = f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{TAX_PERSON}"
LIFETIME = 900
CLI = [sys.executable, "-m", "samtykke_gateway.cli.main"]


class Deadline(Exception):
    """The run's --max-seconds passed."""


class Run:
    def __init__(self, work: Path, max_seconds: float) -> None:
        self.work = work
        self.ends = time.monotonic() + max_seconds
        self.procs: list[subprocess.Popen[bytes]] = []

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise Deadline()
        return left

    def spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.work / log_name).open("wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], run: Run, *, status: int = 200) -> None:
    deadline = time.monotonic() + min(30.0, run.left())
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited {proc.returncode} (logs in {run.work})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == status:
                return
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer {status} (logs in {run.work})")


def _a2(issuer: DevIssuer) -> dict[str, str]:
    consent = issuer.mint_altinn2(subject=INCOME_PERSON, consumer=BANK, consent_id=str(uuid.uuid4()),
                                  services=["4804_210607_fraOgMed=2018-06", "4804_210607_tilOgMed=2018-08"],
                                  lifetime_seconds=LIFETIME)
    bearer = issuer.mint_maskinporten(consumer=BANK, scope="skatteetaten:inntekt", lifetime_seconds=LIFETIME)
    return {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": consent}


def _a3(issuer: DevIssuer, consent_id: str) -> dict[str, str]:
    details = [DevIssuer.altinn3_consent(subject=TAX_PERSON, consumer=BANK, consent_id=consent_id,
                                         rights=[("ske-spesifisert-summert-skattegrunnlag", {"inntektsaar": "2022"})])]
    bearer = issuer.mint_maskinporten(consumer=BANK, scope="skatteetaten:spesifisertsummertskattegrunnlag",
                                      authorization_details=details, lifetime_seconds=LIFETIME)
    return {"Authorization": f"Bearer {bearer}"}


def _config(run: Run, name: str, *, issuer_url: str, upstream_url: str, extra: str = "",
            issuer_options: str = "", gateway_options: str = "", one_time: bool = False) -> Path:
    data = resources.files("samtykke_gateway.dev.data")
    (run.work / "inntekt-sbl-loennsinntekt-beskrivelse.txt").write_bytes(
        data.joinpath("inntekt-sbl-loennsinntekt-beskrivelse.txt").read_bytes())
    text = (data.joinpath("demo.toml").read_text().replace("${ISSUER_URL}", issuer_url)
            .replace("${UPSTREAM_URL}", upstream_url)
            .replace("${AUDIT_URL}", f"sqlite:///{name}.db"))
    if one_time:
        text = text.replace('name = "spesifisertsummertskattegrunnlag"\n',
                            'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')
    if issuer_options:
        for section in ("[issuers.altinn]\n", "[issuers.maskinporten]\n"):
            text = text.replace(section, section + issuer_options)
    if gateway_options:
        text = text.replace("[gateway]\n", "[gateway]\n" + gateway_options)
    path = run.work / f"{name}.toml"
    path.write_text(text + "\n" + extra)
    return path


def _serve(run: Run, config: Path, name: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    proc = run.spawn([*CLI, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                     f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/healthz", proc, run)
    return url, proc


async def _send_all(url: str, headers_list: list[dict[str, str]], *, concurrency: int,
                    request_timeout: float) -> list[tuple[int, str, float]]:
    """(status, reason, seconds) per request, ``concurrency`` at a time."""
    out: list[tuple[int, str, float]] = [(0, "", 0.0)] * len(headers_list)
    queue = list(enumerate(headers_list))
    async with httpx.AsyncClient(timeout=request_timeout, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while queue:
                i, headers = queue.pop()
                started = time.monotonic()
                try:
                    r = await client.get(url, headers=headers)
                    reason = "" if r.status_code == 200 else str(r.json().get("reason", "?"))
                    out[i] = (r.status_code, reason, time.monotonic() - started)
                except (httpx.HTTPError, ValueError) as exc:
                    out[i] = (0, type(exc).__name__, time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def _count(results: list[tuple[int, str, float]]) -> dict[str, int]:
    return dict(Counter(f"{s} {r}".strip() for s, r, _ in results))


def _latency(results: list[tuple[int, str, float]]) -> dict[str, float]:
    values = sorted(t for _, _, t in results)
    if len(values) < 2:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1)}


def _log_lines(path: Path, word: str) -> list[str]:
    return [line[:300] for line in path.read_text(errors="replace").splitlines() if word in line]


# -- 1: reload during a JWKS outage ------------------------------------------------------------

def scenario_reload(run: Run, upstream: str, n: int) -> dict[str, Any]:
    keys = run.work / "dev-keys"
    issuer = load_dev_issuer(keys)  # creates the keys the dev-issuer process serves
    port = _free_port()
    dev = run.spawn([*CLI, "dev-issuer", "--keys-dir", str(keys), "--port", str(port)], "s1-dev-issuer.log")
    issuer_url = f"http://127.0.0.1:{port}"
    _wait_http(issuer_url + "/maskinporten/jwk", dev, run)
    config = _config(run, "s1", issuer_url=issuer_url, upstream_url=upstream)
    url, gw = _serve(run, config, "s1-gateway")
    _wait_http(url + "/readyz", gw, run)
    tokens = [_a2(issuer) for _ in range(n)]
    before = asyncio.run(_send_all(url + INCOME_PATH, tokens, concurrency=8, request_timeout=min(10, run.left())))
    run.stop(dev)
    log = run.work / "s1-gateway.log"
    seen = len(_log_lines(log, "reload"))
    gw.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + min(15.0, run.left())
    while len(_log_lines(log, "reload")) == seen and time.monotonic() < deadline:
        time.sleep(0.05)
    reload_lines = _log_lines(log, "reload")[seen:]
    after = asyncio.run(_send_all(url + INCOME_PATH, tokens, concurrency=8, request_timeout=min(10, run.left())))
    ready = httpx.get(url + "/readyz", timeout=10)
    run.stop(gw)
    return {
        "valid_requests_before": _count(before),
        "reload_log": reload_lines or ["(no reload line within 15 s)"],
        "valid_requests_after_reload_with_jwks_down": _count(after),
        "readyz_after": {"status": ready.status_code, "checks": ready.json().get("checks")},
        "want": f"{n} x 200 after the reload",
    }


# -- 3: Redis restarted without persistence -----------------------------------------------------

class OwnRedis:
    def __init__(self, run: Run, name: str, args: list[str]) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.run, self.binary, self.args = run, binary, args
        self.dir = run.work / name
        self.dir.mkdir()
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.run.spawn([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                    "--dir", str(self.dir), *self.args], f"{self.dir.name}.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    def crash_and_restart(self) -> None:
        assert self.proc is not None
        self.run.stop(self.proc, signal.SIGKILL)
        self.start()


def scenario_redis(run: Run, upstream: str, issuer_url: str, issuer: DevIssuer, n: int,
                   *, persistent: bool) -> dict[str, Any]:
    name = "s3b" if persistent else "s3"
    args = (["--save", "", "--appendonly", "yes", "--appendfsync", "always"] if persistent
            else ["--save", "", "--appendonly", "no"])
    redis = OwnRedis(run, f"{name}-redis", args)
    redis.start()
    state = f'[state]\nurl = "{redis.url}"\nkey_prefix = "fault:"\n'
    config = _config(run, name, issuer_url=issuer_url, upstream_url=upstream, extra=state, one_time=True)
    url, gw = _serve(run, config, f"{name}-gateway")
    _wait_http(url + "/readyz", gw, run)
    tokens = [_a3(issuer, str(uuid.uuid4())) for _ in range(n)]
    spend = asyncio.run(_send_all(url + TAX_PATH, tokens, concurrency=8, request_timeout=min(10, run.left())))
    redis.crash_and_restart()
    replay = asyncio.run(_send_all(url + TAX_PATH, tokens, concurrency=8, request_timeout=min(10, run.left())))
    double = sum(1 for (first, _, _), (again, _, _) in zip(spend, replay, strict=True) if first == again == 200)
    ready = httpx.get(url + "/readyz", timeout=10).json()
    result: dict[str, Any] = {
        "redis": shlex.join(args),
        "spend": _count(spend),
        "replay_after_redis_crash_and_restart": _count(replay),
        "double_deliveries": double,
        "readyz_after": {k: v for k, v in ready.get("checks", {}).items() if k.startswith("consent_state")},
    }
    if not persistent:
        confirm = subprocess.run([*CLI, "state", "confirm-reset", "--config", str(config)], capture_output=True,
                                 text=True, timeout=min(30, run.left()), cwd=ROOT)
        fresh = asyncio.run(_send_all(url + TAX_PATH, [_a3(issuer, str(uuid.uuid4()))], concurrency=1,
                                      request_timeout=min(10, run.left())))
        result["confirm_reset_exit"] = confirm.returncode
        result["fresh_consent_after_confirm"] = _count(fresh)
        result["want"] = "0 double deliveries; replays 503 consent_state_reset; 200 after confirm-reset"
    else:
        result["want"] = "0 double deliveries; replays 403 consent_spent"
    run.stop(gw)
    return result


# -- 5: a hanging JWKS endpoint -----------------------------------------------------------------

class SwitchableJwks:
    """Loopback JWKS server: ``ok`` answers with ``max-age=2``; ``hang`` accepts and never answers."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.bodies = {f"/{role}/jwk": json.dumps(issuer.jwks(role)).encode() for role in ("altinn", "maskinporten")}
        self.mode = "ok"
        self.held = 0
        self.fetches = Counter[str]()
        self.loop = asyncio.new_event_loop()
        self.port = _free_port()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop).result(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.fetches[self.mode] += 1
            if self.mode == "hang":
                self.held += 1
                await self._stop.wait()  # never answers (until the scenario ends)
                return
            body = self.bodies.get(path)
            status = b"200 OK" if body is not None else b"404 Not Found"
            body = body or b"{}"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncache-control: max-age=2\r\n"
                         b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, IndexError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        """Release the held connections, let every handler finish, then stop the loop."""

        async def shutdown() -> None:
            self._server.close()
            self._stop.set()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def scenario_hanging_jwks(run: Run, upstream: str, hang_seconds: float) -> dict[str, Any]:
    issuer = DevIssuer()
    jwks = SwitchableJwks(issuer)
    jwks.start()
    try:
        options = ("min_ttl_seconds = 1\nmax_ttl_seconds = 2\ndefault_ttl_seconds = 2\n"
                   "fetch_timeout_seconds = 2\nrefetch_cooldown_seconds = 5\n")
        config = _config(run, "s5", issuer_url=f"http://127.0.0.1:{jwks.port}", upstream_url=upstream,
                         issuer_options=options, gateway_options="token_cache_entries = 0\n")
        url, gw = _serve(run, config, "s5-gateway")
        _wait_http(url + "/readyz", gw, run)
        tokens = [_a2(issuer) for _ in range(40)]

        async def for_seconds(seconds: float) -> list[tuple[int, str, float]]:
            out: list[tuple[int, str, float]] = []
            ends = time.monotonic() + seconds
            while time.monotonic() < ends:
                out += await _send_all(url + INCOME_PATH, tokens[:8], concurrency=8, request_timeout=15)
            return out

        baseline = asyncio.run(for_seconds(min(3.0, run.left())))
        jwks.mode = "hang"
        hanging = asyncio.run(for_seconds(min(hang_seconds, run.left())))
        run.stop(gw)
        return {
            "gateway": "fetch_timeout_seconds = 2, max_ttl_seconds = 2, refetch_cooldown_seconds = 5, no token cache",
            "baseline_jwks_answering": {**_latency(baseline), "statuses": _count(baseline)},
            f"jwks_hanging_{hang_seconds:g}s": {**_latency(hanging), "statuses": _count(hanging)},
            "jwks_fetches": dict(jwks.fetches),
            "connections_held_by_the_hanging_jwks": jwks.held,
            "want": "p99 while hanging close to the baseline; statuses 200",
        }
    finally:
        jwks.close()


@contextlib.contextmanager
def _upstream(run: Run) -> Iterator[str]:
    port = _free_port()
    proc = run.spawn([sys.executable, "-c", "import uvicorn; from samtykke_gateway.dev.examples import ExampleUpstream; "
                      f"uvicorn.run(ExampleUpstream().app, host='127.0.0.1', port={port}, log_level='warning')"],
                     "upstream.log")
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/", proc, run, status=404)
    yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="1,3,5", help="scenarios to run, e.g. 3 or 1,5")
    parser.add_argument("--requests", type=int, default=200, help="valid requests per phase (1, 3)")
    parser.add_argument("--hang-seconds", type=float, default=12.0, help="how long the JWKS hangs (5)")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="the whole run stops after this")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not only <= {"1", "3", "5"} or not 1 <= args.requests <= 5000 or not 1 <= args.hang_seconds <= 120 \
            or not 10 <= args.max_seconds <= 1800:
        parser.error("--only of 1,3,5; --requests 1..5000; --hang-seconds 1..120; --max-seconds 10..1800")

    work = Path(tempfile.mkdtemp(prefix="samtykke-fault-"))
    run = Run(work, args.max_seconds)
    results: dict[str, Any] = {"command": "python bench/fault_replay.py " + " ".join(sys.argv[1:]), "logs": str(work)}
    failed = False
    try:
        with _upstream(run) as upstream:
            if "1" in only:
                print("1: reload during a JWKS outage ...", flush=True)
                results["1_reload_during_jwks_outage"] = scenario_reload(run, upstream, args.requests)
            if "3" in only:
                if shutil.which("redis-server") is None:
                    results["3_redis_reset"] = "skipped: no redis-server binary"
                else:
                    from samtykke_gateway.dev.server import ThreadedServer

                    issuer = DevIssuer()
                    with ThreadedServer(issuer.asgi_app()) as jwks:
                        for persistent in (False, True):
                            key = "3b_redis_aof_always_crash" if persistent else "3_redis_no_persistence_restart"
                            print(f"{key} ...", flush=True)
                            results[key] = scenario_redis(run, upstream, jwks.url, issuer, args.requests,
                                                          persistent=persistent)
                            failed = failed or results[key]["double_deliveries"] > 0
            if "5" in only:
                print("5: hanging JWKS endpoint ...", flush=True)
                results["5_hanging_jwks"] = scenario_hanging_jwks(run, upstream, args.hang_seconds)
    except Deadline:
        results["stopped"] = f"--max-seconds {args.max_seconds:g} reached"
    finally:
        run.stop_all()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
