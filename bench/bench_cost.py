"""Cost per request (issue 13): every row of the issue's table in one run, with its ratio.

Run (from the repository root, venv active; needs ``wrk``)::

    python bench/bench_cost.py [--duration 5] [--rounds 3] [--pool 3000]
                               [--baseline-tree PATH] [--profile TARGET --profile-seconds 10]

Every server is its own process on 127.0.0.1: the sidecar exactly as deployed
(``samtykke-gateway serve --config …``: uvloop, the bounded httptools protocol, JSON logs at
INFO — to a file here — with the per-decision line), the others one uvicorn worker each
(``--loop uvloop --http httptools``, the helpers of ``bench_proxy.py``); wrk ``-t2 -c32`` unless a row says
otherwise; the targets of one table run interleaved, once per round, and the table shows
medians. Rows (issue 13's table; target ratio in brackets):

1. middleware form, cached Altinn 2 pair, ``memory://``, 3.5 KB body vs the bare app [≥ 0.5×];
2. middleware form, cached Altinn 3 token, SQLite store, 0.7 KB body vs the same app bare
   [≥ 0.5×];
3. middleware form, cached Altinn 2 pair, SQLite (``synchronous=FULL``, group commit), 3.5 KB
   vs the bare app [≥ 0.4×];
4. sidecar (SQLite, cached Altinn 2 pair) vs the aiohttp no-check proxy, 3.5 KB [≥ 1.0×];
5. sidecar (SQLite, cached Altinn 3 token) vs the aiohttp no-check proxy, 0.7 KB [≥ 1.0×];
6. sidecar (``memory://``, cached Altinn 2 pair), 1 connection: p50 added over direct
   [≤ +0.3 ms];
7. sidecar (SQLite, ``--pool`` distinct Altinn 2 pairs, so the verifier's cache fills and
   misses) at 256 connections: peak RSS [≤ 100 MB].

The 0.7 KB body is the 2022 specified-tax-base answer cut to its first two ``grunnlag``
entries (``proxy_apps.SMALL_BODY``, 699 B), served by a second upstream process.

``--baseline-tree PATH`` (another checkout, e.g. ``git worktree add /tmp/base <commit>``): its
sidecar and middleware targets run as extra ``baseline …`` targets in the same rounds, and the
table gets a column "now / baseline" (A/B of a change). ``--only a,b`` keeps the targets whose
names start with one of the prefixes (the rows that need a missing target print ``-``).

``granian sidecar sqlite a2``: the same served sidecar (``ReloadingApp``, logs at INFO) under
granian instead of uvicorn, measured beside it (issue 13 asks whether another ASGI server
serves it markedly faster; runs when granian is installed: ``pip install granian``).

``--profile NAME`` instead: start that one target, load it with wrk (-c8 by default) and record
it with py-spy (``--format raw --gil``: folded stacks of the thread holding the GIL, so a
thread waiting in ``fsync`` or ``epoll`` is not counted) for ``--profile-seconds``; prints the
share of samples by component (``bench/profile_components.py``) and µs per request (share ×
the process's CPU seconds / requests served; CPU spent outside the GIL — SQLite's own commit
work, OpenSSL — is in the process's CPU but not in the samples, so it is spread over the rows).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_proxy import (  # noqa: E402
    PATH,
    POOL_LUA,
    Target,
    _median,
    check,
    run_rounds,
    serving,
    uvicorn_process,
    wrk,
)

from bench_proxy import free_port  # noqa: E402

from samtykke_gateway.cli.demo import demo_config_text  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402
from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402

PERSON = "12879397780"
BANK = "999999999"
SCOPE = "skatteetaten:spesifisertsummertskattegrunnlag"
SERVICES = ["4628_210607_inntektsaar=2022"]
A3_RESOURCE = "ske-spesifisert-summert-skattegrunnlag"
LIFETIME = 3600

# (name, factory, upstream: "big"/"small"/None, audit: "sqlite"/"memory"/None, tokens: "a2"/"a3"/"pool"/None)
TARGETS: list[tuple[str, str, str | None, str | None, str | None]] = [
    ("aiohttp", "aiohttp_proxy", "big", None, "a2"),
    ("aiohttp small", "aiohttp_proxy", "small", None, "a3"),
    ("sidecar sqlite a2", "serve", "big", "sqlite", "a2"),
    ("sidecar sqlite a3 small", "serve", "small", "sqlite", "a3"),
    ("granian sidecar sqlite a2", "granian", "big", "sqlite", "a2"),
    ("bare", "bare_app", None, None, "a2"),
    ("middleware memory a2", "middleware_app", None, "memory", "a2"),
    ("middleware sqlite a2", "middleware_app", None, "sqlite", "a2"),
    ("bare small", "bare_app", "small", None, "a3"),
    ("middleware sqlite a3 small", "middleware_app", "small", "sqlite", "a3"),
]
ONE_CONNECTION = [
    ("direct", None, "big", None, "a2"),
    ("aiohttp no-check", "aiohttp_proxy", "big", None, "a2"),
    ("sidecar memory a2", "serve", "big", "memory", "a2"),
]
MANY_CONNECTIONS = [("sidecar sqlite pool", "serve", "big", "sqlite", "pool")]

# (row label, target, base, kind, goal): kind "ratio" = req/s target / base ≥ goal
ROWS = [
    ("middleware form, cached A2 pair, `memory://`, vs the bare app", "middleware memory a2", "bare", 0.5),
    ("middleware form, cached A3 token, SQLite, 0.7 KB body, vs the same app bare",
     "middleware sqlite a3 small", "bare small", 0.5),
    ("middleware form, SQLite (`synchronous=FULL`, group commit), A2 pair, vs the bare app",
     "middleware sqlite a2", "bare", 0.4),
    ("sidecar (SQLite, A2 pair) vs the aiohttp no-check proxy, 3.5 KB", "sidecar sqlite a2", "aiohttp", 1.0),
    ("sidecar (SQLite) vs the aiohttp no-check proxy, 0.7 KB, cached A3 token",
     "sidecar sqlite a3 small", "aiohttp small", 1.0),
]


@contextlib.contextmanager
def serve_process(config: Path, env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """``(port, pid)`` of ``samtykke-gateway serve --config config`` (the served sidecar exactly
    as deployed: JSON logs at INFO to stderr, here a file; the decision log line per request;
    the bounded httptools protocol; uvloop); stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from samtykke_gateway.cli.main import main; sys.exit(main())",
           "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as err:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMTYKKE_GATEWAY_LOG_LEVEL": "INFO", **env}
        # cwd = the tree whose code runs (``python -c`` puts it first on sys.path)
        proc = subprocess.Popen(cmd, env=full_env, cwd=full_env["PYTHONPATH"].split(os.pathsep)[0],
                                stdout=subprocess.DEVNULL, stderr=err)
    with serving(proc, port):
        yield port, proc.pid


@contextlib.contextmanager
def granian_process(config: Path, env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """``(port, pid)`` of the served sidecar (``proxy_apps.served_sidecar``: what ``serve``
    builds) under granian (one worker, uvloop, HTTP/1): the server comparison of issue 13."""
    port = free_port()
    cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws",
           "--log-level", "warning", "--no-access-log", "--working-dir", str(ROOT / "bench"),
           "proxy_apps:served_sidecar"]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_CONFIG": str(config), "BENCH_LOG": str(log), **env}
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, env=full_env, cwd=full_env["PYTHONPATH"].split(os.pathsep)[0],
                                stdout=subprocess.DEVNULL, stderr=err)
    with serving(proc, port):
        yield port, proc.pid


def mint(dev: DevIssuer, tokens: str) -> dict[str, str]:
    if tokens == "a3":
        details = [
            DevIssuer.altinn3_consent(
                subject=PERSON, consumer=BANK, rights=[(A3_RESOURCE, {"inntektsaar": "2022"})]
            )
        ]
        bearer = dev.mint_maskinporten(
            consumer=BANK, scope=SCOPE, authorization_details=details, lifetime_seconds=LIFETIME
        )
        return {"Authorization": f"Bearer {bearer}"}
    bearer = dev.mint_maskinporten(consumer=BANK, scope=SCOPE, lifetime_seconds=LIFETIME)
    consent = dev.mint_altinn2(
        subject=PERSON, consumer=BANK, services=SERVICES, lifetime_seconds=LIFETIME
    )
    return {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": consent}


def headers_lua(headers: dict[str, str]) -> str:
    return "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=3000, help="distinct A2 pairs for the RSS row")
    ap.add_argument("--only", default="", help="comma-separated target name prefixes")
    ap.add_argument("--skip-extra", action="store_true", help="no 1- and 256-connection rows")
    ap.add_argument("--baseline-tree", metavar="PATH")
    ap.add_argument("--profile", metavar="TARGET", help="py-spy one target instead (see above)")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-connections", type=int, default=8)
    ap.add_argument("--profile-out", metavar="FILE", help="keep py-spy's folded stacks here")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    only = [s for s in args.only.split(",") if s]

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(o) for o in only)

    dev = DevIssuer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    load = [os.getloadavg()[0]]
    targets: list[Target] = []
    one: list[Target] = []
    many: list[Target] = []
    with contextlib.ExitStack() as stack:
        issuer = stack.enter_context(ThreadedServer(dev.asgi_app()))
        scripts: dict[str, Path] = {}
        checks: dict[str, dict[str, str]] = {}
        for kind in ("a2", "a3"):
            checks[kind] = mint(dev, kind)
            scripts[kind] = tmp / f"{kind}.lua"
            scripts[kind].write_text(headers_lua(checks[kind]))
        env = {"BENCH_ISSUER": issuer.url}
        up: dict[str, tuple[int, int]] = {}
        for body in ("big", "small"):
            up[body] = stack.enter_context(uvicorn_process("upstream", {**env, "BENCH_BODY": body}))

        def start(spec: tuple[str, str | None, str | None, str | None, str | None],
                  tree: Path | None = None) -> Target:
            name, factory, body, audit, tokens = spec
            script = scripts[tokens or "a2"] if tokens != "pool" else tmp / "pool.lua"
            check_headers = checks["a2" if tokens in (None, "pool") else tokens]
            if factory is None:
                port, pid = up[body or "big"]
            else:
                extra = {"BENCH_BODY": body or "big"}
                if body in ("big", "small"):
                    extra["BENCH_UPSTREAM"] = f"http://127.0.0.1:{up[body][0]}"
                if audit == "sqlite":
                    extra["BENCH_AUDIT"] = f"sqlite:///{tmp}/{name.replace(' ', '-')}-{'b' if tree else 'n'}.db"
                else:
                    extra["BENCH_AUDIT"] = "memory://"
                if tree is not None:
                    extra["PYTHONPATH"] = str(tree)
                if factory in ("serve", "granian"):
                    label = ("b-" if tree else "n-") + name.replace(" ", "-")
                    config = tmp / f"{label}.toml"
                    config.write_text(demo_config_text(
                        issuer_url=issuer.url, upstream_url=extra["BENCH_UPSTREAM"],
                        audit_url=extra["BENCH_AUDIT"], absolute_files=True))
                    serve_env = {"PYTHONPATH": extra["PYTHONPATH"]} if tree is not None else {}
                    server = serve_process if factory == "serve" else granian_process
                    port, pid = stack.enter_context(server(config, serve_env, tmp / f"{label}.log"))
                else:
                    port, pid = stack.enter_context(uvicorn_process(factory, {**env, **extra}))
            check(f"http://127.0.0.1:{port}{PATH}", check_headers)
            return Target(("baseline " if tree else "") + name, port, pid, script, [])

        if args.profile:
            spec = next(s for s in TARGETS + ONE_CONNECTION if s[0] == args.profile)
            t = start(spec)
            return profile(t, args, tmp)

        baseline = Path(args.baseline_tree).resolve() if args.baseline_tree else None
        for spec in TARGETS:
            if spec[1] == "granian" and importlib.util.find_spec("granian") is None:
                continue  # optional: pip install granian
            if wanted(spec[0]):
                targets.append(start(spec))
            if baseline and spec[1] in ("serve", "middleware_app") and wanted("baseline " + spec[0]):
                targets.append(start(spec, baseline))
        if not args.skip_extra:
            for spec in ONE_CONNECTION:
                if wanted(spec[0]):
                    one.append(start(spec))
            if wanted(MANY_CONNECTIONS[0][0]):
                t0 = time.perf_counter()
                pool_file = tmp / "pool.txt"
                with pool_file.open("w") as f:
                    for _ in range(args.pool):
                        h = mint(dev, "a2")
                        f.write(f"{h['Authorization'][7:]} {h['AltinnSamtykke']}\n")
                (tmp / "pool.lua").write_text(
                    POOL_LUA % {"file": pool_file, "threads": args.threads}
                )
                print(f"minted {args.pool} pairs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                many.append(start(MANY_CONNECTIONS[0]))
        run_rounds(targets, rounds=args.rounds, duration=args.duration,
                   connections=args.connections, threads=args.threads)
        load.append(os.getloadavg()[0])
        if one:
            print("\n1 connection, 1 thread (no queueing)", file=sys.stderr)
            run_rounds(one, rounds=args.rounds, duration=args.duration, connections=1, threads=1)
        if many:
            print("\n256 connections", file=sys.stderr)
            run_rounds(many, rounds=1, duration=args.duration, connections=256, threads=args.threads)
        load.append(os.getloadavg()[0])
    shutil.rmtree(tmp, ignore_errors=True)

    def med(t: Target, i: int) -> float:
        return _median([r[i] for r in t.runs])

    by_name = {t.name: t for t in targets + one + many}
    print(f"\nload average (1 min) at start {load[0]:.2f}, after the 32-connection rounds "
          f"{load[1]:.2f}, at the end {load[-1]:.2f}; {args.rounds} rounds × {args.duration} s, "
          f"medians; wrk -t{args.threads} -c{args.connections}; {os.cpu_count()} CPUs")
    print("\n| target | req/s | p50 ms | p99 ms | peak RSS MB | errors |"
          + (" now / baseline |" if baseline else ""))
    print("|---|---:|---:|---:|---:|---|" + ("---:|" if baseline else ""))
    for t in targets + one + many:
        errors = "; ".join(sorted({r[3] for r in t.runs if r[3] != "-"})) or "-"
        ab = ""
        if baseline:
            b = by_name.get("baseline " + t.name)
            ab = f" {med(t, 0) / med(b, 0):.2f} |" if b else " |"
        at = " @1" if t in one else " @256" if t in many else ""
        print(f"| {t.name}{at} | {med(t, 0):,.0f} | {med(t, 1):.2f} | {med(t, 2):.2f} | "
              f"{t.rss_kb / 1024:.1f} | {errors} |{ab}")

    print("\n| issue 13 row | measured | target | verdict |\n|---|---|---|---|")
    for label, name, base, goal in ROWS:
        t, b = by_name.get(name), by_name.get(base)
        if t is None or b is None:
            print(f"| {label} | - | ≥ {goal}× | not run |")
            continue
        r = med(t, 0) / med(b, 0)
        print(f"| {label} | **{r:.2f}×** ({med(t, 0):,.0f} vs {med(b, 0):,.0f} req/s) | ≥ {goal}× | "
              f"{'met' if r >= goal else 'missed'} |")
    d, s = by_name.get("direct"), by_name.get("sidecar memory a2")
    if d and s:
        added = med(s, 1) - med(d, 1)
        n = by_name.get("aiohttp no-check")
        floor = f"; the aiohttp no-check proxy adds {med(n, 1) - med(d, 1):+.2f} ms" if n else ""
        print(f"| sidecar, 1 connection, added p50 over direct, `memory://` | **{added:+.2f} ms** "
              f"(p50 {med(s, 1):.2f} vs {med(d, 1):.2f} ms; p99 {med(s, 2):.2f} vs {med(d, 2):.2f}{floor}) "
              f"| ≤ +0.3 ms | {'met' if added <= 0.3 else 'missed'} |")
    else:
        print("| sidecar, 1 connection, added p50 over direct | - | ≤ +0.3 ms | not run |")
    p = by_name.get("sidecar sqlite pool")
    if p:
        mb = p.rss_kb / 1024
        print(f"| RSS at 256 connections (sidecar, SQLite, {args.pool} distinct A2 pairs) | "
              f"**{mb:.1f} MB** ({med(p, 0):,.0f} req/s) | ≤ 100 MB | {'met' if mb <= 100 else 'missed'} |")
    else:
        print("| RSS at 256 connections | - | ≤ 100 MB | not run |")
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(t: Target, args: argparse.Namespace, tmp: Path) -> int:
    """py-spy one served target under wrk; prints the component breakdown in µs per request."""
    from profile_components import breakdown

    url = f"http://127.0.0.1:{t.port}{PATH}"
    wrk(url, t.script, duration=2, connections=args.profile_connections, threads=1)  # warm-up
    out = Path(args.profile_out) if args.profile_out else tmp / "profile.txt"
    cpu0 = _cpu_seconds(t.pid)
    spy = subprocess.Popen(
        ["py-spy", "record", "--format", "raw", "--rate", "250", "--nonblocking", "--gil",
         "-d", str(args.profile_seconds), "-o", str(out), "-p", str(t.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    rps, _p50, _p99, errors = wrk(url, t.script, duration=args.profile_seconds,
                                connections=args.profile_connections, threads=1)
    cpu = _cpu_seconds(t.pid) - cpu0
    spy.wait(timeout=60)
    requests = rps * args.profile_seconds
    print(f"{t.name}: {rps:,.0f} req/s at -c{args.profile_connections}, errors {errors}; "
          f"process CPU {cpu:.2f} s over {requests:,.0f} requests = "
          f"{cpu / requests * 1e6:.0f} µs per request; load {os.getloadavg()[0]:.2f}")
    breakdown(out, cpu_us_per_request=cpu / requests * 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
