"""What the durable disclosure log costs per request (issue 5): the same sidecar with its log in
``memory://``, SQLite and PostgreSQL, measured in one run.

Run (repository root, venv active; needs ``wrk``; PostgreSQL from ``--postgres`` or
``SAMTYKKE_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``)::

    python bench/bench_disclosure_log.py [--duration 10] [--rounds 3] [--connections 32]

Setup, all on 127.0.0.1: the dev issuer's JWKS (a thread of this process, idle after the first
key fetch), the example upstream (own uvicorn process, uvloop/httptools) and three
``samtykke-gateway serve --config FILE`` processes that differ only in ``[audit] url``:
``memory://``; ``sqlite:///tmp/.../d.db`` (defaults: WAL, ``synchronous=FULL``, group commit);
``postgresql://...?schema=bench_<random>`` (dropped afterwards; ``synchronous_commit=on``,
group commit). uvicorn picks uvloop and httptools when installed. Logs at WARNING.
Request: ``GET`` the 2022 specified summarised tax base (``sbl`` package) with one Altinn 3
token (Maskinporten + ``authorization_details``), the same token for every request - the token
cache hits, so the difference between the variants is the disclosure log (plus noise).

``wrk`` (``-t2 -cN -dD --latency``) drives each variant in turn, ``--rounds`` times
(interleaved, so background load on the shared 2-CPU box hits all alike), then once more with
one connection (latency without queueing). Tables: the median over rounds of each figure;
ratios and added latency are computed per round against ``memory://`` of the same round, then
their median is shown. Afterwards every variant's ``/metrics`` decision count must equal its log's
record count (``verify`` walks the SQLite and PostgreSQL chains), wrk must report no non-2xx
and no socket errors; otherwise the script exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
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
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402
from samtykke_gateway.observe.metrics import parse_text  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402

PERSON = "12879397780"
BANK = "999999999"
PATH = f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{PERSON}"
SCOPE = "skatteetaten:spesifisertsummertskattegrunnlag"
RESOURCE = "ske-spesifisert-summert-skattegrunnlag"
LUA = 'wrk.headers["Authorization"] = "Bearer {bearer}"\n'
UPSTREAM = (
    "import sys, uvicorn; from samtykke_gateway.dev.examples import ExampleUpstream; "
    "uvicorn.run(ExampleUpstream().app, host='127.0.0.1', port=int(sys.argv[1]), loop='uvloop', "
    "http='httptools', log_level='warning', access_log=False)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], port: int, *, ready: str = "/", env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``args`` until ``http://127.0.0.1:port{ready}`` answers; yields the pid; SIGTERM after."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{args[:4]} exited {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=0.5)
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{args[:4]} did not start")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: str


def wrk(url: str, script: Path, *, duration: int, connections: int, threads: int) -> Run:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout

    def find(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise SystemExit(f"unexpected wrk output:\n{out}")
        return m.group(1)

    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"non-2xx {m.group(1)}")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(m.group(1).strip())
    return Run(float(find(r"Requests/sec:\s+([0-9.]+)")), _ms(find(r"^\s+50%\s+(\S+)")),
               _ms(find(r"^\s+99%\s+(\S+)")), int(find(r"^\s+(\d+) requests in")), "; ".join(errors))


@dataclass
class Variant:
    name: str
    audit_url: str
    port: int = 0
    runs: list[Run] = field(default_factory=list)
    single: list[Run] = field(default_factory=list)
    decisions: int = 0
    append_ms: float = 0.0
    stored: int | None = None



def metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    return parse_text(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


def total(parsed: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for s, v in parsed.get(name, []) if all(s.get(k) == x for k, x in labels.items()))


def records_in(url: str) -> int | None:
    """Records in the log after a chain walk; ``None`` for ``memory://``; exits on a broken chain."""
    if url.startswith("memory"):
        return None
    from samtykke_gateway.audit import open_store

    async def run() -> int:
        store = open_store(url)
        await store.open()
        try:
            result = await store.verify()
        finally:
            await store.close()
        if not result.ok:
            raise SystemExit(f"{url}: chain broken: {result.problem}")
        return result.checked

    return asyncio.run(run())


def postgres_available(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception as exc:  # noqa: BLE001 - any failure: the variant is skipped, and said so
        print(f"PostgreSQL variant skipped: {type(exc).__name__}", file=sys.stderr)
        return False


def report(variants: list[Variant], attr: str, title: str, *, append: bool = False) -> None:
    """Markdown table: medians over rounds of each figure; ratios and added latency are taken
    per round against ``memory://`` in the *same* round, then the median of those."""
    med = statistics.median
    base: list[Run] = getattr(variants[0], attr)
    print(f"\n{title}, median over rounds:\n")
    head = "| disclosure log | req/s | vs memory | p50 ms | p99 ms | added p50 ms | added p99 ms |"
    print(head + (" mean append ms | records (chain) |" if append else ""))
    print("|---" + "|---:" * (8 if append else 6) + "|")
    for v in variants:
        runs: list[Run] = getattr(v, attr)
        ratio = med(r.rps / b.rps for r, b in zip(runs, base, strict=True))
        if v is variants[0]:
            added = "— | —"
        else:
            added = (f"{med(r.p50 - b.p50 for r, b in zip(runs, base, strict=True)):+.2f} | "
                     f"{med(r.p99 - b.p99 for r, b in zip(runs, base, strict=True)):+.2f}")
        line = (f"| {v.name} | {med(r.rps for r in runs):,.0f} | {ratio:.2f} | {med(r.p50 for r in runs):.2f} | "
                f"{med(r.p99 for r in runs):.2f} | {added} |")
        if append:
            stored = "—" if v.stored is None else f"{v.stored:,} OK"
            line += f" {v.append_ms:.2f} | {stored} |"
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows the median")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--single-duration", type=int, default=5, help="seconds per 1-connection run")
    ap.add_argument("--postgres", default=os.environ.get("SAMTYKKE_TEST_POSTGRES_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    dev = DevIssuer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-disclosure-"))
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in args.postgres else "?"
    variants = [Variant("memory://", "memory://"), Variant("SQLite", f"sqlite:///{tmp / 'd.db'}")]
    if postgres_available(args.postgres):
        variants.append(Variant("PostgreSQL", f"{args.postgres}{sep}schema={schema}"))
    load_before = os.getloadavg()
    failures: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            issuer = stack.enter_context(ThreadedServer(dev.asgi_app()))
            details = [DevIssuer.altinn3_consent(subject=PERSON, consumer=BANK, rights=[(RESOURCE, {"inntektsaar": "2022"})])]
            bearer = dev.mint_maskinporten(consumer=BANK, scope=SCOPE, authorization_details=details,
                                           lifetime_seconds=3600)
            script = tmp / "a3.lua"
            script.write_text(LUA.format(bearer=bearer))
            up_port = free_port()
            stack.enter_context(process([sys.executable, "-c", UPSTREAM, str(up_port)], up_port))
            from tests.state_support import write_config  # the packaged demo config as a file

            for v in variants:
                v.port = free_port()
                config = write_config(tmp / f"{v.port}.toml", issuer_url=issuer.url,
                                      upstream_url=f"http://127.0.0.1:{up_port}", audit_url=v.audit_url)
                cmd = [sys.executable, "-m", "samtykke_gateway.cli.main", "serve", "--config", str(config),
                       "--host", "127.0.0.1", "--port", str(v.port)]
                stack.enter_context(process(cmd, v.port, ready="/readyz",
                                            env={"SAMTYKKE_GATEWAY_LOG_LEVEL": "WARNING"}))
                r = httpx.get(f"http://127.0.0.1:{v.port}{PATH}", headers={"Authorization": f"Bearer {bearer}"},
                              timeout=10)
                if r.status_code != 200 or b'"inntektsaar":"2022"' not in r.content.replace(b" ", b""):
                    raise SystemExit(f"{v.name}: {r.status_code} {r.text[:300]}")
            for v in variants:  # warm-up
                wrk(f"http://127.0.0.1:{v.port}{PATH}", script, duration=2, connections=args.connections,
                    threads=args.threads)
            for n in range(args.rounds):
                for v in variants:
                    run = wrk(f"http://127.0.0.1:{v.port}{PATH}", script, duration=args.duration,
                              connections=args.connections, threads=args.threads)
                    v.runs.append(run)
                    print(f"round {n + 1} {v.name:11s} {run.rps:8.0f} req/s  p50 {run.p50:6.2f} ms  "
                          f"p99 {run.p99:7.2f} ms  {run.errors or 'no errors'}", file=sys.stderr)
                    if run.errors:
                        failures.append(f"{v.name} round {n + 1}: {run.errors}")
                for v in variants:  # one connection: latency without queueing
                    run = wrk(f"http://127.0.0.1:{v.port}{PATH}", script, duration=args.single_duration,
                              connections=1, threads=1)
                    v.single.append(run)
                    print(f"round {n + 1} {v.name:11s} 1 conn {run.rps:6.0f} req/s  p50 {run.p50:6.2f} ms  "
                          f"p99 {run.p99:7.2f} ms  {run.errors or 'no errors'}", file=sys.stderr)
                    if run.errors:
                        failures.append(f"{v.name} 1 conn round {n + 1}: {run.errors}")
            for v in variants:
                parsed = metrics(v.port)
                decisions = total(parsed, "samtykke_decisions_total")
                ok = total(parsed, "samtykke_decisions_total", decision="allow", reason="ok")
                count = total(parsed, "samtykke_disclosure_write_seconds_count", ok="true")
                v.append_ms = 1000 * total(parsed, "samtykke_disclosure_write_seconds_sum", ok="true") / count
                if ok != decisions or count != decisions:
                    failures.append(f"{v.name}: {decisions:.0f} decisions, {ok:.0f} allowed ok, {count:.0f} appends")
                v.decisions = int(decisions)
        for v in variants:  # after the servers stopped: every decision has its record
            v.stored = records_in(v.audit_url)
            if v.stored is not None and v.stored != v.decisions:
                failures.append(f"{v.name}: {v.decisions} decisions but {v.stored} records")
    finally:
        if any(v.name == "PostgreSQL" for v in variants):
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"\n{args.rounds} interleaved rounds x {args.duration} s, wrk -t{args.threads} -c{args.connections};"
          f" load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    report(variants, "runs", f"{args.connections} connections", append=True)
    report(variants, "single", f"1 connection ({args.single_duration} s per round: latency without queueing)")
    print("\nall rounds (req/s, 32 conn): " + "; ".join(
        f"{v.name} " + ", ".join(f"{r.rps:,.0f}" for r in v.runs) for v in variants))
    if failures:
        print("\nFAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
