"""Disclosure-store benchmark: appends/s and per-append latency, memory vs SQLite vs PostgreSQL.

Every case runs ``concurrency`` tasks that each append records back to back for ``--seconds``;
an append's latency is from the call to its return (i.e. until the record is durable).
Ratios are against the memory store at the same concurrency.

    python bench/bench_audit.py [--seconds 3] [--repeat 3] [--postgres URL] [--dir DIR]

PostgreSQL uses ``--postgres`` or ``SAMTYKKE_TEST_POSTGRES_URL`` and a throw-away schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

from samtykke_gateway.audit import DisclosureRecord, open_store


@dataclass
class Result:
    name: str
    concurrency: int
    appends: int
    seconds: float
    latencies_ms: list[float]
    verify_rows: int = 0
    verify_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]


def _record(i: int) -> DisclosureRecord:
    return DisclosureRecord(
        time=time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        correlation_id=f"bench-{i}",
        decision="allow",
        reason="ok",
        status=200,
        method="GET",
        path="/api/inntekt/01817899701",
        route="inntekt",
        token_kind="altinn3",
        consent_id=str(uuid.uuid4()),
        jti=str(uuid.uuid4()),
        issuer="https://test.maskinporten.no/",
        key_id="kid-1",
        subject="01817899701",
        consumer="310000001",
        supplier="310000002",
        client_id="client-1",
        resource="ske-inntekt",
        rights_package="bank",
        metadata={"inntektsaar": ["2024"]},
        requested_params={"fraOgMed": ["2024-01"], "tilOgMed": ["2024-12"]},
        effective_params={"fraOgMed": ["2024-01"], "tilOgMed": ["2024-12"]},
        upstream_status=200,
        released_paths=[
            "arbeidsinntektMaaned[].aarMaaned",
            "arbeidsinntektMaaned[].inntekt[].beloep",
        ],
        released_bytes=4096,
        released_sha256="ab" * 32,
    )


async def run_case(name: str, url: str, concurrency: int, seconds: float) -> Result:
    store = open_store(url)
    await store.open()
    latencies: list[float] = []
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < stop_at:
            counter += 1
            record = _record(counter)
            t0 = time.perf_counter()
            await store.append(record)
            latencies.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0)  # memory appends never yield; let the other tasks run

    try:
        for _ in range(min(50, 5 * concurrency)):  # warm-up: connections, pages, JIT-free paths
            await store.append(_record(0))
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        verify_started = time.perf_counter()
        result = await store.verify()
        verify_seconds = time.perf_counter() - verify_started
        if not result.ok:
            raise RuntimeError(f"{name}: chain broken after benchmark: {result}")
    finally:
        await store.close()
    return Result(
        name, concurrency, len(latencies), elapsed, latencies, result.checked, verify_seconds
    )


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres", default=os.environ.get("SAMTYKKE_TEST_POSTGRES_URL"))
    parser.add_argument("--dir", default=None, help="directory for the SQLite files")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds over all cases; the median round is shown"
    )
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir)
    schema = f"bench_audit_{uuid.uuid4().hex[:10]}"
    sep = "&" if args.postgres and "?" in args.postgres else "?"
    cases: list[tuple[str, str]] = [
        ("memory", "memory://"),
        ("sqlite FULL, group commit", f"sqlite:///{workdir}/gc.db"),
        ("sqlite FULL, no group commit", f"sqlite:///{workdir}/nogc.db?max_batch=1"),
        ("sqlite NORMAL, group commit", f"sqlite:///{workdir}/normal.db?synchronous=NORMAL"),
    ]
    if args.postgres:
        cases += [
            ("postgres, group commit", f"{args.postgres}{sep}schema={schema}"),
            ("postgres, no group commit", f"{args.postgres}{sep}schema={schema}_1&max_batch=1"),
        ]
    else:
        print("(no PostgreSQL URL: set SAMTYKKE_TEST_POSTGRES_URL or --postgres)")

    print(
        f"SQLite files in {workdir}; {args.seconds:g} s per case; Python {sys.version.split()[0]}"
    )
    rounds: dict[tuple[str, int], list[Result]] = {}
    try:
        for _ in range(args.repeat):  # interleaved, so a noisy minute hits every case alike
            for concurrency in args.concurrency:
                for name, url in cases:
                    result = await run_case(name, url, concurrency, args.seconds)
                    rounds.setdefault((name, concurrency), []).append(result)
    finally:
        if args.postgres:
            for s in (schema, f"{schema}_1"):
                _drop_schema(args.postgres, s)

    header = f"{'store':<30} {'conc':>4} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    header += f" {'rate/mem':>9} {'p50/mem':>8} {'verify rows/s':>14} {'rate range':>16}"
    print(header)
    print("-" * len(header))
    results: list[Result] = []
    for concurrency in args.concurrency:
        rows = []
        for name, _ in cases:
            runs = sorted(rounds[(name, concurrency)], key=lambda r: r.rate)
            rows.append((runs[len(runs) // 2], runs[0].rate, runs[-1].rate))
        base = rows[0][0]
        for r, low, high in rows:
            results.append(r)
            print(
                f"{r.name:<30} {r.concurrency:>4} {r.rate:>10,.0f} {r.pct(0.5):>8.3f}"
                f" {r.pct(0.99):>8.3f} {r.rate / base.rate:>9.4f}"
                f" {r.pct(0.5) / base.pct(0.5):>8.1f}x"
                f" {r.verify_rows / max(r.verify_seconds, 1e-9):>14,.0f}"
                f" {low:>7,.0f}-{high:<7,.0f}"
            )
        print()
    mean_ms = statistics.fmean(results[0].latencies_ms) if results else 0.0
    print(f"(memory mean append {mean_ms * 1000:.1f} µs: serialisation + SHA-256 only)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
