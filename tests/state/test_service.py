"""The state hook's per-request memos (Oslo day, jti key) give exactly what they replace."""

from __future__ import annotations

import hashlib
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from samtykke_gateway.state import ConsentStateService, MemoryBackend

OSLO = ZoneInfo("Europe/Oslo")
# 2026-03-29 01:00Z (CET -> CEST) and 2026-10-25 01:00Z (CEST -> CET), midnights around them
EDGES = [1774746000.0, 1792890000.0, 1774738800.0, 1792879200.0, 1792882800.0, 1774735200.0]
TIMES = st.one_of(
    st.floats(0, 4_102_444_800, allow_nan=False),
    st.sampled_from(EDGES).flatmap(lambda e: st.floats(e - 90_000, e + 90_000)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(TIMES, min_size=1, max_size=30))
def test_oslo_day_memo_matches_the_calendar(times: list[float]) -> None:
    service = ConsentStateService(MemoryBackend())
    for now in sorted(times) + times:  # forwards (the usual case) and jumping around
        assert service._oslo_day(now) == datetime.fromtimestamp(now, OSLO).strftime("%Y-%m-%d")


def test_oslo_day_memo_rounds_like_fromtimestamp() -> None:
    # found by hypothesis: 0.2 µs before Oslo midnight fromtimestamp() has already rounded
    # to the next day
    service = ConsentStateService(MemoryBackend())
    for now in (1792879200.0, 1792969199.9999998, 1792969199.9999994, 1792969200.0):
        assert service._oslo_day(now) == datetime.fromtimestamp(now, OSLO).strftime("%Y-%m-%d")


def test_oslo_day_memo_at_the_edges() -> None:
    service = ConsentStateService(MemoryBackend())
    for edge in EDGES:
        for now in (edge - 1e-6, edge, edge + 1e-6, edge - 3600, edge + 3600):
            assert service._oslo_day(now) == datetime.fromtimestamp(now, OSLO).strftime("%Y-%m-%d")


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50))
def test_jti_key_memo_is_the_hash(jtis: list[str]) -> None:
    service = ConsentStateService(MemoryBackend())
    for jti in jtis + jtis:
        assert service._jti_key(jti) == hashlib.sha256(jti.encode()).hexdigest()[:32]


def test_jti_key_memo_is_bounded() -> None:
    service = ConsentStateService(MemoryBackend())
    for i in range(10_000):
        service._jti_key(f"jti-{i}")
    assert len(service._jti_keys) <= 4096
