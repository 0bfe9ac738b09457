"""Throughput of ``scope_body`` over the published example bodies.

Run: ``python bench/bench_scoping.py [--seconds 0.5]``. For each body in
``samtykke_gateway/dev/data/*.json`` it prints MB/s (input bytes per second, 10**6) for

- ``baseline``: ``json.loads`` + ``json.dumps(separators=(",", ":"), ensure_ascii=False)``
  + ``.encode()`` of the same body (stdlib round trip, numbers not exact);
- ``exact``: the exact path alone (stdlib decode with exact numbers, walk, exact encode), what
  ``scope_body`` falls back to when its orjson fast path cannot prove the numbers exact;
- ``scope_body`` with the example package that fits the body (or a release-everything
  package), its time per call, and ``scope/base`` = the ratio to the baseline;
- ``all examples``: one call per published example per repetition, total bytes over total time;
- a 1 MB body made of repeated income rows, the size where per-call overhead stops mattering.

The functions run interleaved in short rounds (about ``--seconds`` per body in all); each
figure is the best round (the one least disturbed by other load on the machine), and the
median round in parentheses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samtykke_gateway.scoping.package import RightsPackage, ScopeContext, scope_body  # noqa: E402
from samtykke_gateway.scoping.exact_json import decode_json, encode_json  # noqa: E402

DATA = ROOT / "samtykke_gateway" / "dev" / "data"
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
) -> dict[str, tuple[float, float]]:
    """(best, median) MB/s per function (``size`` bytes per call): rounds of about
    ``seconds / rounds`` per function, interleaved; the best round is the least disturbed by
    other load on the machine."""
    round_seconds = seconds / rounds / len(functions)
    calls = {name: _calls_per_round(f, round_seconds) for name, f in functions.items()}
    per_call: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                function()
            per_call[name].append((time.perf_counter() - start) / calls[name])
    return {
        name: (size / min(times) / 1e6, size / statistics.median(times) / 1e6)
        for name, times in per_call.items()
    }


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
    examples = [(path.name, path.read_bytes()) for path in sorted(DATA.glob("*.json"))]
    print(
        f"{'body':48} {'bytes':>9} {'baseline MB/s':>15} {'exact MB/s':>15} "
        f"{'scope MB/s':>15} {'scope µs':>9} {'scope/base':>10}"
    )

    def row(name: str, size: int, functions: dict[str, Callable[[], object]]) -> None:
        measured = rates(functions, size, args.seconds)
        cells = " ".join(f"{best:6.1f} ({median:6.1f})" for best, median in measured.values())
        base, scope = measured["base"][0], measured["scope"][0]
        print(f"{name:48} {size:9} {cells} {size / scope:9.1f} {scope / base:9.2f}x", flush=True)

    def functions_for(
        pairs: list[tuple[RightsPackage, bytes]],
    ) -> dict[str, Callable[[], object]]:
        def baseline() -> None:
            for _package, body in pairs:
                json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()

        def exact() -> None:
            for package, body in pairs:
                scoped, _released = package.apply(decode_json(body), CONTEXT)
                encode_json(scoped, source=body)

        def scoped() -> None:
            for package, body in pairs:
                scope_body(body, package, CONTEXT)

        return {"base": baseline, "exact": exact, "scope": scoped}

    for name, body in [*examples, ("inntekt-x250 (generated)", large_income_body())]:
        row(name, len(body), functions_for([(package_for(name, available), body)]))
    pairs = [(package_for(name, available), body) for name, body in examples]
    row("all examples (one call each)", sum(len(body) for _, body in pairs), functions_for(pairs))


if __name__ == "__main__":
    main()
