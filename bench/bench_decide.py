"""One decision (``Gate.decide``) in-process, with and without the decision memo (issue 13).

Run: ``python bench/bench_decide.py [--requests 20000] [--rounds 3]``.

Per request: a :class:`RawRequest` from the header block a client sends (a cached Altinn 2
pair, or a cached Altinn 3 token, and a few headers the
decision does not read), a fresh :class:`DisclosureRecord`, and ``Gate.decide``. The gates
share the demo config, key sets and token cache; ``memo 0`` is the full decision on every
request. Prints the best round's µs per request (wall time of this process).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_cost import PATH, mint  # noqa: E402

from samtykke_gateway.audit.record import DisclosureRecord  # noqa: E402
from samtykke_gateway.cli.demo import demo_config  # noqa: E402
from samtykke_gateway.dev.issuer import DevIssuer  # noqa: E402
from samtykke_gateway.dev.server import ThreadedServer  # noqa: E402
from samtykke_gateway.policy.decide import DEFAULT_MEMO_ENTRIES, Gate  # noqa: E402
from samtykke_gateway.policy.intake import RawRequest  # noqa: E402
from samtykke_gateway.runtime import Gateway  # noqa: E402

#: (name, tokens): bench_cost's tokens on its path (the tax base route, scoped)
CASES = [("cached A2 pair", "a2"), ("cached A3 token", "a3")]


async def _never_read(limit: int) -> bytes:
    raise AssertionError("no body route here")


async def run(issuer_url: str, dev: DevIssuer, requests: int, rounds: int) -> None:
    config = demo_config(issuer_url=issuer_url, upstream_url="http://upstream.invalid", audit_url="memory://")
    gateway = Gateway(config)
    await gateway.start()
    try:
        for name, tokens in CASES:
            headers = [(b"host", b"gateway.test"), (b"user-agent", b"wrk"), (b"accept", b"*/*"),
                       (b"x-request-id", b"bench")]
            headers += [(k.lower().encode(), v.encode()) for k, v in mint(dev, tokens).items()]
            for entries in (0, DEFAULT_MEMO_ENTRIES):
                gate = Gate(config, issuers=gateway.issuers, verifier=gateway.verifier, memo_entries=entries)
                best = float("inf")
                for _ in range(rounds):
                    started = time.perf_counter()
                    for _ in range(requests):
                        request = RawRequest("GET", PATH.encode(), b"", headers, "")
                        record = DisclosureRecord(time="", correlation_id="bench", decision="deny", reason="",
                                                  status=0, method="GET", path="")
                        await gate.decide(request, record, read_body=_never_read)
                    best = min(best, (time.perf_counter() - started) / requests * 1e6)
                print(f"{name:26} memo {entries:4}: {best:6.1f} µs per request (memo hits {gate.memo_hits})")
    finally:
        await gateway.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = DevIssuer()
    with ThreadedServer(dev.asgi_app()) as server:
        asyncio.run(run(server.url, dev, args.requests, args.rounds))


if __name__ == "__main__":
    main()
