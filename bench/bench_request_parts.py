"""CPU per request of the disclosure record and the consent-state hook, before/after in one run.

The *base* code (default: commit ``7f774a2``, before the per-request work on issue 4) is
materialised from git into a throw-away package (``git show REV:path``), so old and new run
interleaved in one process at the same load; numbers are process CPU time
(``time.process_time``, all threads) per operation, best and median over rounds, and the
ratio new/base per round (median).

    python bench/bench_request_parts.py [--rounds 9] [--n 3000] [--base 7f774a2] [--sqlite-n 3000]

Cases:

* ``prepare`` — :func:`~samtykke_gateway.audit.chain.prepare` of one record (canonical JSON,
  normalised time, projected columns);
* ``memory append`` — ``MemoryStore.append`` (prepare + chain hash + row) back to back;
* ``sqlite append c=32`` — ``SqliteStore.append`` from 32 tasks (WAL, ``synchronous=FULL``,
  group commit; CPU of the event loop *and* the writer thread, per append; fsync waits are
  not CPU) and the same at ``c=1``;
* ``state plain`` / ``state limited`` / ``state one-time`` — ``ConsentStateService
  .before_forward`` + ``after_response`` on the memory backend: a route with revocation and
  ``jti`` logging only (the same token again: the common case), one with ``daily_limit``, one
  ``one_time`` (a fresh consent id per request).

The records are the shape the middleware writes (3 parameter dicts, 2 released paths, ~950
bytes of canonical JSON), each with its own current time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_FILES = (
    "exceptions.py",
    "ids.py",
    "audit/base.py",
    "audit/record.py",
    "audit/chain.py",
    "audit/memory.py",
    "audit/sqlite.py",
    "state/backend.py",
    "state/memory.py",
    "state/revocation_file.py",
    "state/service.py",
)


def load_base(rev: str, into: Path) -> types.ModuleType:
    """``samtykke_gateway`` at ``rev`` (the modules above only) as package ``_samtykke_base``."""
    pkg = into / "_samtykke_base"
    for sub in ("", "audit", "state"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    for name in BASE_FILES:
        text = subprocess.run(
            ["git", "show", f"{rev}:samtykke_gateway/{name}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
        (pkg / name).write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("_samtykke_base")


class Impl:
    """One version's classes and functions."""

    def __init__(self, label: str, package: str) -> None:
        self.label = label
        self.record_cls = importlib.import_module(f"{package}.audit.record").DisclosureRecord
        self.prepare = importlib.import_module(f"{package}.audit.chain").prepare
        self.MemoryStore = importlib.import_module(f"{package}.audit.memory").MemoryStore
        self.SqliteStore = importlib.import_module(f"{package}.audit.sqlite").SqliteStore
        self.MemoryBackend = importlib.import_module(f"{package}.state.memory").MemoryBackend
        self.Service = importlib.import_module(f"{package}.state.service").ConsentStateService


def records(impl: Impl, n: int) -> list[Any]:
    start = datetime.now(UTC).replace(tzinfo=None)
    out = []
    for i in range(n):
        at = (start + timedelta(microseconds=137 * i)).isoformat(timespec="microseconds") + "Z"
        out.append(impl.record_cls(
            time=at, correlation_id=f"kgpahjmnobcdefgh-{i:x}", decision="allow", reason="ok",
            status=200, method="GET",
            path="/api/formueinntekt/spesifisertsummertskattegrunnlag/sbl/2022/01817899701",
            route="spesifisertsummertskattegrunnlag", token_kind="altinn3",
            consent_id="3f2504e0-4f89-11d3-9a0c-0305e82c3301", jti="6f1c1d7e-7d8e-4c36-9a2e-5b1f",
            issuer="https://test.maskinporten.no/", key_id="kid-1",
            consent_issuer="https://platform.tt02.altinn.no/", consent_key_id="kid-2",
            subject="01817899701", consumer="310000001", supplier="310000002",
            client_id="client-1", resource="ske-spesifisertsummertskattegrunnlag",
            rights_package="sbl", metadata={"inntektsaar": ["2022"]},
            requested_params={"fraOgMed": ["2022-01"]}, effective_params={"fraOgMed": ["2022-01"]},
            upstream_status=200,
            released_paths=["skattepliktig.personidentifikator", "grunnlag[].beloep"],
            released_bytes=3512, released_sha256="ab" * 32,
        ))
    return out


def cpu(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


async def acpu(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.process_time()
    await fn()
    return time.process_time() - t0


def case_prepare(impl: Impl, n: int) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        recs = records(impl, n)
        prep = impl.prepare
        return cpu(lambda: [prep(r) for r in recs]) / n
    return run


def case_memory(impl: Impl, n: int) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        recs = records(impl, n)
        store = impl.MemoryStore()
        await store.open()

        async def go() -> None:
            for r in recs:
                await store.append(r)

        return await acpu(go) / n
    return run


def case_sqlite(impl: Impl, n: int, concurrency: int, tmp: Path) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        recs = records(impl, n)
        path = tmp / f"{impl.label}-{concurrency}-{time.monotonic_ns()}.db"
        store = impl.SqliteStore(path)
        await store.open()
        queue = list(reversed(recs))

        async def worker() -> None:
            while queue:
                await store.append(queue.pop())

        try:
            used = await acpu(lambda: asyncio.gather(*(worker() for _ in range(concurrency))))
            result = await store.verify()
            if not result.ok or result.checked != n:
                raise SystemExit(f"{impl.label}: sqlite chain does not verify: {result}")
        finally:
            await store.close()
            _remove_db(path)
        return used / n
    return run


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _grant(route: Any, jti: str, cid: str) -> Any:
    now = time.time()
    return NS(match=NS(route=route), maskinporten=NS(jti=jti, expires_at=now + 120),
              consent=NS(consent_id=cid, valid_to=now + 30 * 86400))


def case_state(impl: Impl, n: int, kind: str) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        service = impl.Service(impl.MemoryBackend())
        if kind == "plain":
            route = NS(name="inntekt", one_time=False, daily_limit=None)
            grants = [_grant(route, "jti-same-token", "3F2504E0-4F89-11D3-9A0C-0305E82C3301")] * n
        elif kind == "limited":
            route = NS(name="inntekt", one_time=False, daily_limit=10**9)
            grants = [_grant(route, "jti-same-token", "3F2504E0-4F89-11D3-9A0C-0305E82C3301")] * n
        else:
            route = NS(name="ssg", one_time=True, daily_limit=None)
            grants = [_grant(route, "jti-same-token", f"3F2504E0-4F89-11D3-9A0C-{i:012X}")
                      for i in range(n)]

        async def go() -> None:
            for g in grants:
                await service.before_forward(g)
                await service.after_response(g, released=True)

        return await acpu(go) / n
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=3000, help="operations per round (memory, state)")
    parser.add_argument("--sqlite-n", type=int, default=3000, help="appends per sqlite round")
    parser.add_argument("--base", default="7f774a2", help="git revision to compare against")
    parser.add_argument("--only", default="", help="comma-separated case name prefixes")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # "created a NEW, empty disclosure log" per round

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        load_base(args.base, tmp / "src")
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "samtykke_gateway"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.strip()
        impls = [Impl("base", "_samtykke_base"), Impl("new", "samtykke_gateway")]
        cases: dict[str, Callable[[Impl], Callable[[], Awaitable[float]]]] = {
            "prepare": lambda i: case_prepare(i, args.n),
            "memory append": lambda i: case_memory(i, args.n),
            "sqlite append c=32": lambda i: case_sqlite(i, args.sqlite_n, 32, tmp),
            "sqlite append c=1": lambda i: case_sqlite(i, max(200, args.sqlite_n // 10), 1, tmp),
            "state plain": lambda i: case_state(i, args.n, "plain"),
            "state limited": lambda i: case_state(i, args.n, "limited"),
            "state one-time": lambda i: case_state(i, args.n, "one-time"),
        }
        wanted = [c.strip() for c in args.only.split(",") if c.strip()]
        names = [c for c in cases if not wanted or any(c.startswith(w) for w in wanted)]
        print(f"base {args.base} vs new {head}{' + working tree' if dirty else ''}; "
              f"{args.rounds} rounds; CPU µs per operation; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        results: dict[tuple[str, str], list[float]] = {}

        async def run_all() -> None:
            for name in names:
                for impl in impls:  # warm-up
                    await cases[name](impl)()
                for r in range(args.rounds):
                    order = impls if r % 2 == 0 else impls[::-1]  # interleaved, alternating
                    for impl in order:
                        results.setdefault((name, impl.label), []).append(
                            await cases[name](impl)() * 1e6)

        asyncio.run(run_all())
        print("\n| case | base best | base median | new best | new median | new/base (median of rounds) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            b, n_ = results[(name, "base")], results[(name, "new")]
            ratio = statistics.median(x / y for x, y in zip(n_, b, strict=True))
            print(f"| {name} | {min(b):.2f} | {statistics.median(b):.2f} | {min(n_):.2f} | "
                  f"{statistics.median(n_):.2f} | {ratio:.2f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
