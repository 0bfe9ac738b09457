"""Throughput of ``scope_body`` over the published example bodies.

Run: ``python bench/bench_scoping.py [--seconds 0.5]``. For each body in
``samtykke_gateway/data/*.json`` it prints MB/s (input bytes per second, 10**6) for

- ``baseline``: ``json.loads`` + ``json.dumps(separators=(",", ":"), ensure_ascii=False)``
  + ``.encode()`` of the same body (stdlib round trip, numbers not exact);
- ``scope_body`` with the example package that fits the body (or a release-everything
  package), plus ``scope/base`` = the ratio;
- a 1 MB body made of repeated income rows, the size where per-call overhead stops mattering.

Baseline and scope run interleaved in short rounds (about ``--seconds`` per body in all); each
figure is the best round, the one least disturbed by other load on the machine.
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


def _calls_per_round(function: Callable[[], object], round_seconds: float) -> int:
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = time.perf_counter() - start
        if elapsed > round_seconds / 10:
            return max(1, round(calls * round_seconds / elapsed))
        calls *= 2


def rates(
    functions: dict[str, Callable[[], object]], size: int, seconds: float, rounds: int = 60
) -> dict[str, float]:
    """MB/s per function (``size`` bytes per call): rounds of about ``seconds / rounds`` per
    function, interleaved, best round kept: the least disturbed by other load on the machine."""
    round_seconds = seconds / rounds / len(functions)
    calls = {name: _calls_per_round(f, round_seconds) for name, f in functions.items()}
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                function()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return {name: size / per_call / 1e6 for name, per_call in best.items()}


def large_income_body() -> bytes:
    document = json.loads((DATA / "inntekt-2018-07.json").read_bytes())
    month = document["oppgaveInntektsmottaker"][0]
    months: list[object] = []
    while len(json.dumps(months)) < 1_000_000:
        months.append(month)
    return json.dumps({"oppgaveInntektsmottaker": months}, indent=2).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per body")
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

        measured = rates({"base": baseline, "scope": scoped}, len(body), args.seconds)
        base, scope = measured["base"], measured["scope"]
        print(
            f"{name:48} {len(body):9} {base:7.1f}MB/s {scope:5.1f}MB/s {scope / base:9.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
