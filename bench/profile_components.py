"""Share of py-spy samples by component of a served request (issue 13's breakdown).

``python bench/profile_components.py FOLDED [--cpu-us N]`` reads py-spy's ``--format raw``
output (one folded stack per line: ``frame;frame;…;leaf count``, a frame being
``function (path:line)``) and gives each sample to the component of the **leaf-most** frame
that belongs to one (so hashlib called from the audit chain counts as the record, a
``logging`` call from the sidecar as logging). With ``--cpu-us`` (process CPU µs per
request, measured beside the profile) the shares are also shown as µs per request.
``bench_cost.py --profile TARGET`` runs this after recording.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (component, patterns on the frame's file path); the first component whose pattern matches the
# leaf-most frame wins, walking from the leaf to the root.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("logging (application log lines)", ("/logging/", "observe/logs.py")),
    ("metrics", ("observe/metrics.py", "prometheus_client/")),
    ("record + SHA-256 + enqueue (audit)", ("samtykke_gateway/audit/",)),
    ("state hook", ("samtykke_gateway/state/",)),
    ("scoping", ("samtykke_gateway/scoping/", "orjson")),
    ("decision: token checks (cached)", ("samtykke_gateway/tokens/",)),
    ("decision: gate, routing, binding", ("samtykke_gateway/policy/",)),
    ("tracing / hooks / correlation", ("observe/tracing.py", "observe/hooks.py", "correlation.py")),
    ("upstream client (aiohttp)", ("aiohttp/", "sidecar/proxy.py", "yarl/", "multidict/")),
    ("ASGI adapter (asgi/*, sidecar/app.py)", ("samtykke_gateway/asgi/", "sidecar/app.py",
                                              "sidecar/serve.py", "samtykke_gateway/runtime.py")),
    ("app (Starlette routing + endpoint)", ("starlette/", "proxy_apps.py")),
    ("server (uvicorn: HTTP parse, socket writes)", ("uvicorn/", "httptools")),
    ("event loop (asyncio/uvloop, tasks)", ("asyncio/", "uvloop", "contextvars")),
    ("SQLite writer thread", ("sqlite3", "threading.py")),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        file = m.group("file") if m else frame
        for name, patterns in COMPONENTS:
            if any(p in file for p in patterns):
                return name
    return "other"


def breakdown(path: Path, *, cpu_us_per_request: float | None = None) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[classify(stack)] += int(n)
    total = sum(counts.values()) or 1
    rows = [(name, n / total) for name, n in counts.most_common()]
    print(f"\n{total:,} samples (py-spy --gil: the thread holding the GIL)\n")
    print("| component | share of samples |" + (" µs per request |" if cpu_us_per_request else ""))
    print("|---|---:|" + ("---:|" if cpu_us_per_request else ""))
    for name, share in rows:
        us = f" {share * cpu_us_per_request:.0f} |" if cpu_us_per_request else ""
        print(f"| {name} | {share * 100:.1f} % |{us}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folded", type=Path)
    ap.add_argument("--cpu-us", type=float, help="process CPU µs per request")
    args = ap.parse_args()
    breakdown(args.folded, cpu_us_per_request=args.cpu_us)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
