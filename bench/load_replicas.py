"""Two sidecar replicas sharing Redis under load: every decision checked (issue 6).

Run (repository root, venv active, Redis on 127.0.0.1:6379)::

    python bench/load_replicas.py [--duration 60] [--concurrency 48] [--redis redis://127.0.0.1:6379/0]
                                  [--json out.json]

Starts, all on 127.0.0.1: the dev issuer's JWKS (in this process), the example upstream (its own
uvicorn process) and two ``samtykke-gateway serve`` processes with the same config: state in
Redis under a fresh key prefix (deleted afterwards), the specified-tax-base route
``one_time = true``, disclosure log ``memory://``, logs at WARNING. Then for ``--duration``
seconds ``--concurrency`` workers send a mix, each request to a random replica:

* ``valid``    — income API, Altinn 2 pair, consent not revoked → 200;
* ``revoked``  — revoked before the run with ``samtykke-gateway revoke`` (Altinn 2 on the income
  route, Altinn 3 on the one-time route) → 403 ``consent_revoked``;
* ``one_time`` — a fresh Altinn 3 consent on the one-time route, sent 3 times *at once*, spread
  over both replicas → exactly one 200, the others 403 ``consent_spent``;
* ``late``     — income API consents revoked by the CLI a third into the run: a request that
  ended before the revoke started must be 200, one that started after it returned must be 403
  ``consent_revoked``; requests overlapping the revoke may be either (counted apart).

Anything else is a *mismatch*; any 5xx is counted too. Afterwards the replicas' ``/metrics`` are
summed (decisions must equal requests sent, state-backend errors must be 0) and Redis is asked
whether every one-time consent is recorded as spent. Exit 1 on any mismatch or 5xx. Tokens are
minted before the run (lifetime 15 min) so signing does not compete with the gateways for the
2 CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402
from samtykke_gateway.observe.metrics import parse_text  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402

BANK = "999999999"
INCOME_PERSON = "01029413157"
TAX_PERSON = "12879397780"
INCOME_PATH = f"/api/innrapportert/inntektsmottaker/sbl/{INCOME_PERSON}/oppgave/inntekt?fraOgMed=2018-07"
TAX_PATH = f"/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/{TAX_PERSON}"
LIFETIME = 900
ISSUER: DevIssuer | None = None  # set before the pool forks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _a2(consent_id: str) -> dict[str, str]:
    assert ISSUER is not None
    consent = ISSUER.mint_altinn2(subject=INCOME_PERSON, consumer=BANK, consent_id=consent_id,
                                  services=["4804_210607_fraOgMed=2018-06", "4804_210607_tilOgMed=2018-08"],
                                  lifetime_seconds=LIFETIME)
    bearer = ISSUER.mint_maskinporten(consumer=BANK, scope="skatteetaten:inntekt", lifetime_seconds=LIFETIME)
    return {"Authorization": f"Bearer {bearer}", "AltinnSamtykke": consent}


def _a3(consent_id: str) -> dict[str, str]:
    assert ISSUER is not None
    details = [DevIssuer.altinn3_consent(subject=TAX_PERSON, consumer=BANK, consent_id=consent_id,
                                         rights=[("ske-spesifisert-summert-skattegrunnlag", {"inntektsaar": "2022"})])]
    bearer = ISSUER.mint_maskinporten(consumer=BANK, scope="skatteetaten:spesifisertsummertskattegrunnlag",
                                      authorization_details=details, lifetime_seconds=LIFETIME)
    return {"Authorization": f"Bearer {bearer}"}


def _mint(job: tuple[str, str]) -> tuple[str, dict[str, str]]:
    kind, cid = job
    return cid, (_a2(cid) if kind == "a2" else _a3(cid))


@dataclass
class Tally:
    sent: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    server_errors: int = 0
    ambiguous: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    groups: int = 0

    def note(self, cls: str, seconds: float) -> None:
        self.sent += 1
        self.by_class[cls] = self.by_class.get(cls, 0) + 1
        self.latencies.setdefault(cls, []).append(seconds)

    def good(self, cls: str) -> None:
        self.ok[cls] = self.ok.get(cls, 0) + 1

    def bad(self, text: str) -> None:
        if len(self.mismatches) < 50:
            self.mismatches.append(text)
        else:
            self.mismatches.append("...")
            self.mismatches = self.mismatches[:51]


async def _send(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str, float, float, float]:
    started = time.monotonic()
    async with session.get(url, headers=headers) as response:
        body = await response.read()
    ended = time.monotonic()
    reason = ""
    if response.status != 200:
        try:
            reason = str(json.loads(body).get("reason", ""))
        except ValueError:
            reason = "?"
    elif not body.startswith(b"{"):
        reason = "non-json-200"
    return response.status, reason, ended - started, started, ended


class Load:
    def __init__(self, replicas: list[str], pools: dict[str, Any], tally: Tally) -> None:
        self.replicas = replicas
        self.valid: list[tuple[str, dict[str, str]]] = pools["valid"]
        self.revoked: list[tuple[str, dict[str, str]]] = pools["revoked"]
        self.late: list[tuple[str, dict[str, str]]] = pools["late"]
        self.one_time: list[tuple[str, dict[str, str]]] = pools["one_time"]
        self.one_time_used: list[str] = []
        self.tally = tally
        self.revoke_started: float | None = None  # monotonic
        self.revoke_window: tuple[float, float] | None = None  # (started, returned), monotonic
        self.rng = random.Random(6)

    def replica(self) -> str:
        return self.rng.choice(self.replicas)

    def check(self, cls: str, status: int, reason: str, ok: bool, label: str) -> None:
        if status >= 500:
            self.tally.server_errors += 1
        if ok:
            self.tally.good(cls)
        else:
            self.tally.bad(f"{cls}: got {status} {reason} ({label})")

    async def one(self, session: aiohttp.ClientSession) -> None:
        roll = self.rng.random()
        if roll < 0.45:
            cid, headers = self.rng.choice(self.valid)
            status, reason, secs, _, _ = await _send(session, self.replica() + INCOME_PATH, headers)
            self.tally.note("valid", secs)
            self.check("valid", status, reason, status == 200 and not reason, "want 200")
        elif roll < 0.60:
            cid, headers = self.rng.choice(self.revoked)
            path = INCOME_PATH if "AltinnSamtykke" in headers else TAX_PATH
            status, reason, secs, _, _ = await _send(session, self.replica() + path, headers)
            self.tally.note("revoked", secs)
            self.check("revoked", status, reason, (status, reason) == (403, "consent_revoked"), "want 403 consent_revoked")
        elif roll < 0.70:
            cid, headers = self.rng.choice(self.late)
            status, reason, secs, started, ended = await _send(session, self.replica() + INCOME_PATH, headers)
            self.tally.note("late", secs)
            window, revoke_started = self.revoke_window, self.revoke_started
            if revoke_started is None or ended < revoke_started:
                self.check("late", status, reason, status == 200, "before the revoke: want 200")
            elif window is not None and started > window[1]:
                self.check("late", status, reason, (status, reason) == (403, "consent_revoked"),
                           "after the revoke: want 403 consent_revoked")
            else:
                self.tally.ambiguous += 1
                self.check("late", status, reason, status == 200 or (status, reason) == (403, "consent_revoked"),
                           "during the revoke: want 200 or 403 consent_revoked")
        else:
            if not self.one_time:
                return await self.one(session) if self.rng.random() < 0.5 else None
            cid, headers = self.one_time.pop()
            self.one_time_used.append(cid)
            first = self.rng.randrange(2)
            urls = [self.replicas[(first + i) % 2] + TAX_PATH for i in range(3)]
            results = await asyncio.gather(*(_send(session, u, headers) for u in urls))
            self.tally.groups += 1
            statuses = [(s, r) for s, r, _, _, _ in results]
            for s, _reason, secs, _, _ in results:
                self.tally.note("one_time", secs)
                if s >= 500:
                    self.tally.server_errors += 1
            wins = statuses.count((200, ""))
            spent = statuses.count((403, "consent_spent"))
            if wins == 1 and spent == 2:
                for _ in range(3):
                    self.tally.good("one_time")
            else:
                self.tally.bad(f"one_time group: {statuses} (want one 200 and two 403 consent_spent)")
        return None


async def _run_load(load: Load, *, duration: float, concurrency: int, revoke_cmd: list[str]) -> None:
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=concurrency * 3, limit_per_host=concurrency * 3)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    await load.one(session)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    load.tally.bad(f"transport error {type(exc).__name__}")

        async def revoke_later() -> None:
            await asyncio.sleep(duration / 3)
            started = time.monotonic()
            load.revoke_started = started
            proc = await asyncio.create_subprocess_exec(*revoke_cmd, stdout=asyncio.subprocess.DEVNULL)
            code = await proc.wait()
            load.revoke_window = (started, time.monotonic())
            if code != 0:
                load.tally.bad(f"revoke CLI exited {code}")

        await asyncio.gather(revoke_later(), *(worker() for _ in range(concurrency)))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50_ms": round(q[49] * 1000, 1), "p95_ms": round(q[94] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


def main() -> int:
    global ISSUER
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--redis", default=os.environ.get("SAMTYKKE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--one-time-pool", type=int, default=6000, help="one-time consents minted up front")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args()
    if not 1 <= args.duration <= 600 or not 1 <= args.concurrency <= 512:
        parser.error("duration must be 1..600 s and concurrency 1..512 (bounded run)")

    ISSUER = DevIssuer()
    prefix = f"samtykke-load:{uuid.uuid4().hex[:10]}:"
    work = Path(tempfile.mkdtemp(prefix="samtykke-load-"))
    procs: list[subprocess.Popen[bytes]] = []
    print("minting tokens (2 processes) ...", flush=True)
    jobs = ([("a2", str(uuid.uuid4())) for _ in range(200)] + [("a2", str(uuid.uuid4()).upper()) for _ in range(40)]
            + [("a3", str(uuid.uuid4())) for _ in range(40)] + [("a2", str(uuid.uuid4())) for _ in range(20)]
            + [("a3", str(uuid.uuid4())) for _ in range(args.one_time_pool)])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        minted = pool.map(_mint, jobs, chunksize=64)
    pools = {"valid": minted[:200], "revoked": minted[200:280], "late": minted[280:300], "one_time": minted[300:]}

    try:
        with ThreadedServer(ISSUER.asgi_app()) as issuer:
            up_port = _free_port()
            up_log = work / "upstream.log"
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "import uvicorn; from samtykke_gateway.dev.examples import ExampleUpstream; "
                 f"uvicorn.run(ExampleUpstream().app, host='127.0.0.1', port={up_port}, log_level='warning')"],
                stdout=up_log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT))
            data = resources.files("samtykke_gateway.dev.data")
            (work / "inntekt-sbl-loennsinntekt-beskrivelse.txt").write_bytes(
                data.joinpath("inntekt-sbl-loennsinntekt-beskrivelse.txt").read_bytes())
            text = (data.joinpath("demo.toml").read_text().replace("${ISSUER_URL}", issuer.url)
                    .replace("${UPSTREAM_URL}", f"http://127.0.0.1:{up_port}").replace("${AUDIT_URL}", "memory://")
                    .replace('name = "spesifisertsummertskattegrunnlag"\n',
                             'name = "spesifisertsummertskattegrunnlag"\none_time = true\n'))
            config = work / "gateway.toml"
            config.write_text(text + f'\n[state]\nurl = "{args.redis}"\nkey_prefix = "{prefix}"\n')
            cli = [sys.executable, "-m", "samtykke_gateway.cli.main"]
            revoked_ids = [cid for cid, _ in pools["revoked"]]
            subprocess.run([*cli, "revoke", "--config", str(config), *revoked_ids], check=True,
                           stdout=subprocess.DEVNULL)
            ports = [_free_port(), _free_port()]
            replicas = []
            for i, port in enumerate(ports):
                log = work / f"replica{i}.log"
                procs.append(subprocess.Popen(
                    [*cli, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                    stdout=log.open("wb"), stderr=subprocess.STDOUT,
                    env={**os.environ, "SAMTYKKE_GATEWAY_LOG_LEVEL": "WARNING"}))
                replicas.append(f"http://127.0.0.1:{port}")
            for i, url in enumerate(replicas):
                _wait_ready(url, procs[i + 1], work / f"replica{i}.log")
            tally = Tally()
            load = Load(replicas, pools, tally)
            late_ids = [cid for cid, _ in pools["late"]]
            print(f"load: {args.duration:.0f} s, {args.concurrency} workers, replicas {replicas}", flush=True)
            started = time.monotonic()
            asyncio.run(_run_load(load, duration=args.duration, concurrency=args.concurrency,
                                  revoke_cmd=[*cli, "revoke", "--config", str(config), *late_ids]))
            elapsed = time.monotonic() - started
            decisions = 0.0
            state_errors = 0.0
            for url in replicas:
                parsed = parse_text(httpx.get(url + "/metrics").text)
                decisions += sum(v for _, v in parsed.get("samtykke_decisions_total", []))
                state_errors += sum(v for _, v in parsed.get("samtykke_state_errors_total", []))
            spent_in_redis = asyncio.run(_spent(args.redis, prefix, load.one_time_used))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        asyncio.run(_cleanup(args.redis, prefix))

    summary = {
        "command": "python bench/load_replicas.py " + " ".join(sys.argv[1:]),
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "requests": tally.sent,
        "requests_per_s": round(tally.sent / elapsed, 1),
        "by_class": tally.by_class,
        "correct_by_class": tally.ok,
        "one_time_groups": tally.groups,
        "late_revocation_overlapping_requests": tally.ambiguous,
        "mismatches": len([m for m in tally.mismatches if m != "..."]),
        "mismatch_examples": tally.mismatches[:10],
        "server_errors_5xx": tally.server_errors,
        "decisions_in_metrics": int(decisions),
        "state_backend_errors": int(state_errors),
        "one_time_spent_in_redis": f"{spent_in_redis}/{len(load.one_time_used)}",
        "latency": {cls: _percentiles(v) for cls, v in tally.latencies.items()},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    failed = (summary["mismatches"] or tally.server_errors or int(decisions) != tally.sent or state_errors
              or spent_in_redis != len(load.one_time_used))
    return 1 if failed else 0


async def _spent(url: str, prefix: str, ids: list[str]) -> int:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url, decode_responses=True)
    try:
        values = await client.mget([f"{prefix}once:{cid.lower()}" for cid in ids]) if ids else []
        return sum(1 for v in values if v == "spent")
    finally:
        await client.aclose()


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i:i + 1000])
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
