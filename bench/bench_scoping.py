"""Throughput of ``scope_body`` over the published example bodies.

Run: ``python bench/bench_scoping.py [--seconds 0.5]``. For each body in
``samtykke_gateway/data/*.json`` it prints MB/s (input bytes per second, 10**6) for

- ``baseline``: ``json.loads`` + ``json.dumps(separators=(",", ":"), ensure_ascii=False)``
  + ``.encode()`` of the same body (stdlib round trip, numbers not exact);
- ``scope_body`` with the example package that fits the body (or a release-everything
  package), plus ``scope/base`` = the ratio;
- a 1 MB body made of repeated income rows, the size where per-call overhead stops mattering.

Each figure is the best of 50 short rounds (about ``--seconds`` in all), so that load from
other processes disturbs it as little as possible; baseline and scope run in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samtykke_gateway.scoping import RightsPackage, ScopeContext, scope_body  # noqa: E402

DATA = ROOT / "samtykke_gateway" / "data"
CONFIG = ROOT / "config" / "rights_packages.example.toml"
CONTEXT = ScopeContext(period_from="2018-01", period_to="2018-12")


def packages() -> dict[str, RightsPackage]:
    tables = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["rights_packages"]
    found = {
        name: RightsPackage.from_config(
            name, table, base_dir=CONFIG.parent, key_path=f"rights_packages.{name}"
        )
        for name, table in tables.items()
    }
    found["all"] = RightsPackage.from_config(
        "all",
        {"fields": ["personidentifikator", "inntektsaar", "skjermet", "grunnlag"]},
        base_dir=CONFIG.parent,
        key_path="rights_packages.all",
    )
    return found


def package_for(name: str, available: dict[str, RightsPackage]) -> RightsPackage:
    if name.startswith("inntekt"):
        return available["inntekt-sbl"]
    if name.startswith("spesifisert"):
        return available["spesifisertsummertskattegrunnlag-sbl"]
    return available["all"]


def rate(function: Callable[[], object], size: int, seconds: float) -> float:
    """MB/s of ``function`` processing ``size`` bytes per call: the best of 50 short rounds
    spread over about ``seconds`` (the best round is the least disturbed by other load)."""
    calls = 1
    while True:  # calibrate one round to about seconds / 50
        start = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 500:
            break
        calls *= 2
    calls = max(1, round(calls * seconds / 50 / elapsed))
    best = float("inf")
    for _ in range(50):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return size / best / 1e6


def large_income_body() -> bytes:
    document = json.loads((DATA / "inntekt-2018-07.json").read_bytes())
    month = document["oppgaveInntektsmottaker"][0]
    months: list[object] = []
    while len(json.dumps(months)) < 1_000_000:
        months.append(month)
    return json.dumps({"oppgaveInntektsmottaker": months}, indent=2).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    available = packages()
    bodies = [(path.name, path.read_bytes()) for path in sorted(DATA.glob("*.json"))]
    bodies.append(("inntekt-x250 (generated)", large_income_body()))
    print(f"{'body':48} {'bytes':>9} {'baseline':>9} {'scope':>9} {'scope/base':>10}")
    for name, body in bodies:
        package = package_for(name, available)

        def baseline(body: bytes = body) -> bytes:
            return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()

        def scoped(body: bytes = body, package: RightsPackage = package) -> object:
            return scope_body(body, package, CONTEXT)

        base = rate(baseline, len(body), args.seconds)
        scope = rate(scoped, len(body), args.seconds)
        print(
            f"{name:48} {len(body):9} {base:7.1f}MB/s {scope:5.1f}MB/s {scope / base:9.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
