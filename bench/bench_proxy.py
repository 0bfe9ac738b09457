"""Throughput, latency and memory of the sidecar against plain proxies (issue 4).

Run (from the repository root, venv active; needs ``wrk``, optionally ``nginx``)::

    python bench/bench_proxy.py [--duration 10] [--connections 32] [--threads 2] [--pool 6000]
                                [--only direct,aiohttp,...] [--skip-extra]

Every server is its own uvicorn process (``--loop uvloop --http httptools``, one worker) on
127.0.0.1, so the 2-core machine runs wrk, one proxy and the upstream side by side, as a real
deployment would. Targets (all serve the published 2022 specified-tax-base body, 3.5 KB):

* ``direct``         — wrk → upstream;
* ``nginx``          — wrk → nginx (``worker_processes 1``, keepalive to the upstream) → upstream;
* ``httpx``          — minimal Starlette + httpx proxy, no checks;
* ``httpx-aiohttp``  — the same with httpx over the httpx-aiohttp transport;
* ``aiohttp``        — minimal Starlette + aiohttp-client proxy, no checks;
* ``sidecar``        — this gateway: Maskinporten + Altinn 2 consent token verified (RS256,
  keys from the dev issuer's JWKS over HTTP), policy, scoping by the ``sbl`` package,
  disclosure record in SQLite (default ``synchronous=FULL``, group commit) before release;
  ``same`` = one token pair for the whole run (the verifier's cache hits after the first
  request), ``pool`` = 6000 distinct pairs cycled per wrk thread over disjoint halves, so the
  10 000-entry LRU cache never hits (every request pays two RSA verifications);
  ``memory://`` runs show the store's share;
* ``bare`` / ``middleware`` — the middleware form: an in-process Starlette app serving the body,
  without / with :class:`ConsentMiddleware` (same checks as the sidecar, no proxy hop).

Afterwards: added p99 latency at 1 connection (no queueing), the sidecar's RSS at 256
connections, and scoping alone (MB/s over the published examples). Ratios are against
``direct`` measured in the same run. Tokens are minted with a one-hour lifetime so they stay
valid for the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402

PERSON = "12879397780"
BANK = "999999999"
PATH = f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{PERSON}"
SCOPE = "skatteetaten:spesifisertsummertskattegrunnlag"
SERVICES = ["4628_210607_inntektsaar=2022"]
LIFETIME = 3600

STATIC_LUA = """
wrk.headers["Authorization"] = "Bearer {bearer}"
wrk.headers["AltinnSamtykke"] = "{consent}"
"""

POOL_LUA = """
local counter = 1
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
local pool = {}
local i = 0
function init(args)
  local all = {}
  for line in io.lines("%(file)s") do
    local a, b = line:match("([^ ]+) ([^ ]+)")
    table.insert(all, {a, b})
  end
  local n = %(threads)d
  local half = math.floor(#all / n)
  local first = (id - 1) * half + 1
  for k = first, first + half - 1 do table.insert(pool, all[k]) end
end
function request()
  i = i + 1
  local p = pool[(i %% #pool) + 1]
  wrk.headers["Authorization"] = "Bearer " .. p[1]
  wrk.headers["AltinnSamtykke"] = p[2]
  return wrk.format(nil)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextlib.contextmanager
def serving(proc: subprocess.Popen[bytes], port: int) -> Iterator[None]:
    """Wait until ``proc`` listens on ``port``; on exit SIGINT it (kill after 10 s)."""
    try:
        wait_port(port)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def uvicorn_process(factory: str, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """``(port, pid)`` of ``uvicorn bench/proxy_apps.py:<factory>``; stopped on exit."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        f"proxy_apps:{factory}",
        "--factory",
        "--app-dir",
        str(ROOT / "bench"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
        "--no-proxy-headers",
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    # cwd = the tree whose code runs: ``python -m`` puts the working directory first on
    # sys.path, ahead of PYTHONPATH (a --baseline-tree run from this checkout's root would
    # otherwise import this checkout's package, and the A/B compare a tree with itself)
    proc = subprocess.Popen(cmd, env=full_env, cwd=full_env["PYTHONPATH"].split(os.pathsep)[0])
    with serving(proc, port):
        yield port, proc.pid


@contextlib.contextmanager
def nginx_process(upstream_port: int, tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt; fastcgi_temp_path {tmp}/ft;
  uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"])
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its children (nginx master + worker), in KiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kb(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk(
    url: str, script: Path, *, duration: int, connections: int, threads: int
) -> tuple[float, float, float, str]:
    """(requests/s, p50 ms, p99 ms, error summary) of one bounded wrk run."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"non-2xx {m.group(1)}")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(m.group(1).strip())
    return rps, p50, p99, "; ".join(errors) or "-"


def check(url: str, headers: dict[str, str]) -> None:
    """One request before measuring: the target must answer 200 with the expected body."""
    r = httpx.get(url, headers=headers, timeout=10)
    if r.status_code != 200 or b'"inntektsaar":"2022"' not in r.content.replace(b" ", b""):
        raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")


def scoping_alone(rounds: int = 7, n: int = 300) -> list[tuple[str, float, float]]:
    """(example, best MB/s, median MB/s) of :func:`scope_body` (decode, apply, exact encode) per
    published example, ``rounds`` rounds of ``n`` calls; MB = 10^6 bytes of *input*."""
    from samtykke_gateway.cli.demo import demo_config
    from samtykke_gateway.dev.examples import example_body
    from samtykke_gateway.scoping.package import ScopeContext, scope_body

    cfg = demo_config(issuer_url="http://x", upstream_url="http://x")
    cases = [
        ("spesifisertsummertskattegrunnlag-2022.json", "ssg-sbl", ScopeContext()),
        ("spesifisertsummertskattegrunnlag-2018-oppgjoer.json", "ssg-sbl", ScopeContext()),
        ("summertskattegrunnlag-2021.json", "ssg-sbl", ScopeContext()),
        ("inntekt-2018-07.json", "inntekt-sbl", ScopeContext("2018-06", "2018-08")),
    ]
    out = []
    for name, package, ctx in cases:
        body = example_body(name)
        pkg = cfg.rights_packages[package]
        speeds = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(n):
                scope_body(body, pkg, ctx)
            speeds.append(n * len(body) / (time.perf_counter() - start) / 1e6)
        out.append((f"{name} ({len(body):,} B, {package})", max(speeds), statistics.median(speeds)))
    return out


@dataclass
class Target:
    name: str
    port: int
    pid: int
    script: Path
    runs: list[tuple[float, float, float, str]]
    rss_kb: int = 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_rounds(
    targets: list[Target], *, rounds: int, duration: int, connections: int, threads: int
) -> None:
    """Round-robin: every target once per round, so background load hits all alike."""
    for t in targets:  # warm-up: pools, caches, allocator
        wrk(
            f"http://127.0.0.1:{t.port}{PATH}",
            t.script,
            duration=2,
            connections=connections,
            threads=threads,
        )
    for n in range(rounds):
        for t in targets:
            with RssSampler(t.pid) as rss:
                run = wrk(
                    f"http://127.0.0.1:{t.port}{PATH}",
                    t.script,
                    duration=duration,
                    connections=connections,
                    threads=threads,
                )
            t.runs.append(run)
            t.rss_kb = max(t.rss_kb, rss.peak)
            print(
                f"round {n + 1} {t.name:28s} {run[0]:9.0f} req/s  p50 {run[1]:6.2f} ms  p99 {run[2]:7.2f} ms  "
                f"RSS {rss.peak / 1024:5.1f} MB  errors {run[3]}",
                file=sys.stderr,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the table shows medians"
    )
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--pool", type=int, default=6000, help="distinct token pairs for the *-pool runs"
    )
    ap.add_argument("--only", default="", help="comma-separated target names (prefix match)")
    ap.add_argument(
        "--skip-extra", action="store_true", help="no 1-connection / 256-connection / scoping runs"
    )
    ap.add_argument(
        "--baseline-tree",
        metavar="PATH",
        help="another checkout (e.g. `git worktree add /tmp/base <commit>`): its sidecar runs as "
        "extra targets 'baseline sidecar sqlite same/pool' in the same rounds (A/B of a change)",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    only = [s for s in args.only.split(",") if s]

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(o) for o in only)

    dev = DevIssuer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    targets: list[Target] = []
    lat: dict[str, Target] = {}
    scoping: list[tuple[str, float, float]] = []
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        issuer = stack.enter_context(ThreadedServer(dev.asgi_app()))
        bearer = dev.mint_maskinporten(consumer=BANK, scope=SCOPE, lifetime_seconds=LIFETIME)
        consent = dev.mint_altinn2(
            subject=PERSON, consumer=BANK, services=SERVICES, lifetime_seconds=LIFETIME
        )
        headers = {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": consent}
        static = tmp / "static.lua"
        static.write_text(STATIC_LUA.format(bearer=bearer, consent=consent))
        pool_file = tmp / "pool.txt"
        t0 = time.perf_counter()
        with pool_file.open("w") as f:
            for _ in range(args.pool):
                b = dev.mint_maskinporten(consumer=BANK, scope=SCOPE, lifetime_seconds=LIFETIME)
                c = dev.mint_altinn2(
                    subject=PERSON, consumer=BANK, services=SERVICES, lifetime_seconds=LIFETIME
                )
                f.write(f"{b} {c}\n")
        print(
            f"minted {args.pool} token pairs in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
        pool = tmp / "pool.lua"
        pool.write_text(POOL_LUA % {"file": pool_file, "threads": args.threads})

        env = {"BENCH_ISSUER": issuer.url}
        up_port, up_pid = stack.enter_context(uvicorn_process("upstream", env))
        env["BENCH_UPSTREAM"] = f"http://127.0.0.1:{up_port}"

        def add(name: str, factory: str | None, script: Path, audit: str | None = None) -> None:
            if not wanted(name):
                return
            if factory is None:
                port, pid = up_port, up_pid
            elif factory == "nginx":
                if shutil.which("nginx") is None:
                    return
                port, pid = stack.enter_context(nginx_process(up_port, tmp))
            else:
                extra = {"BENCH_AUDIT": audit} if audit else {}
                port, pid = stack.enter_context(uvicorn_process(factory, {**env, **extra}))
            check(f"http://127.0.0.1:{port}{PATH}", headers)
            targets.append(Target(name, port, pid, script, []))

        add("direct", None, static)
        add("nginx", "nginx", static)
        add("httpx", "httpx_proxy", static)
        add("httpx-aiohttp", "httpx_aiohttp_proxy", static)
        add("aiohttp", "aiohttp_proxy", static)
        for audit in ("sqlite", "memory"):
            for label, script in (("same", static), ("pool", pool)):
                url = f"sqlite:///{tmp}/sidecar-{label}.db" if audit == "sqlite" else "memory://"
                add(f"sidecar {audit} {label}", "sidecar", script, url)
        if args.baseline_tree:
            for label, script in (("same", static), ("pool", pool)):
                name = f"baseline sidecar sqlite {label}"
                if wanted(name):
                    extra = {"BENCH_AUDIT": f"sqlite:///{tmp}/baseline-{label}.db",
                             "PYTHONPATH": str(Path(args.baseline_tree).resolve())}
                    port, pid = stack.enter_context(uvicorn_process("sidecar", {**env, **extra}))
                    check(f"http://127.0.0.1:{port}{PATH}", headers)
                    targets.append(Target(name, port, pid, script, []))
        add("bare app (middleware form)", "bare_app", static)
        for audit in ("sqlite", "memory"):
            for label, script in (("same", static), ("pool", pool)):
                url = f"sqlite:///{tmp}/middleware-{label}.db" if audit == "sqlite" else "memory://"
                add(f"middleware {audit} {label}", "middleware_app", script, url)
        run_rounds(
            targets,
            rounds=args.rounds,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
        )

        if not args.skip_extra:
            one = [
                t
                for t in targets
                if t.name
                in ("direct", "sidecar sqlite same", "sidecar sqlite pool", "sidecar memory same")
            ]
            one = [Target(t.name + " @1", t.port, t.pid, t.script, []) for t in one]
            print("\n1 connection, 1 thread (no queueing)", file=sys.stderr)
            run_rounds(one, rounds=args.rounds, duration=args.duration, connections=1, threads=1)
            lat = {t.name: t for t in one}
            big = [
                Target(t.name + " @256", t.port, t.pid, t.script, [])
                for t in targets
                if t.name in ("sidecar sqlite pool", "aiohttp")
            ]
            print("\n256 connections", file=sys.stderr)
            run_rounds(big, rounds=1, duration=args.duration, connections=256, threads=args.threads)
            targets += big
            scoping = scoping_alone()
    load_after = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)

    def med(t: Target, i: int) -> float:
        return _median([r[i] for r in t.runs])

    by_name = {t.name: t for t in targets}
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"{args.rounds} rounds × {args.duration} s, medians; wrk -t{args.threads} -c{args.connections}"
    )
    print(
        "\n| target | req/s | × direct | × aiohttp | × httpx | p50 ms | p99 ms | peak RSS MB | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for t in targets:
        rps = med(t, 0)

        def ratio(base: str, rps: float = rps) -> str:
            b = by_name.get(base)
            return f"{rps / med(b, 0):.2f}" if b else "-"

        errors = "; ".join(sorted({r[3] for r in t.runs if r[3] != "-"})) or "-"
        print(
            f"| {t.name} | {rps:,.0f} | {ratio('direct')} | {ratio('aiohttp')} | {ratio('httpx')} | "
            f"{med(t, 1):.2f} | {med(t, 2):.2f} | {t.rss_kb / 1024:.1f} | {errors} |"
        )
    bare = by_name.get("bare app (middleware form)")
    if bare:
        for t in targets:
            if t.name.startswith("middleware"):
                print(f"\n{t.name}: {med(t, 0) / med(bare, 0):.2f}× the bare app (target ≥ 0.85×)")
    if lat:
        direct = lat.get("direct @1")  # absent when --only leaves out direct
        print()
        for name, t in lat.items():
            added = f"{med(t, 2) - med(direct, 2):+.2f} ms" if direct else "- (no direct run)"
            print(
                f"{name}: p50 {med(t, 1):.2f} ms, p99 {med(t, 2):.2f} ms, "
                f"p99 added over direct {added} (target ≤ 5 ms)"
            )
    if scoping:
        print(
            "\n| scoping alone (decode, apply, exact encode) | best MB/s | median MB/s |\n|---|---:|---:|"
        )
        for name, best, median in scoping:
            print(f"| {name} | {best:.0f} | {median:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
