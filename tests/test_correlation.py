"""Minted ids: unique, never a run of 9+ digits; client correlation ids accepted only when safe."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from samtykke_gateway.correlation import accept_correlation_id, new_id


def test_new_ids_are_unique_and_digit_run_free() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.search(r"[0-9]{9,}", i) is None for i in ids)
    assert all(accept_correlation_id(i) == i for i in ids[:100])


@given(st.text(max_size=80))
def test_accepted_correlation_ids_are_safe(value: str) -> None:
    accepted = accept_correlation_id(value)
    if accepted is not None:
        assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", accepted)
        assert re.search(r"[0-9]{9,}", accepted) is None
        assert re.search(r"[0-9]{11,}", re.sub(r"[._-]", "", accepted)) is None


def test_person_id_in_correlation_id_refused() -> None:
    assert accept_correlation_id("req-01029413157") is None
    assert accept_correlation_id("bank-req-abc.1") == "bank-req-abc.1"
    # written with separators (fresh-user review)
    for value in ("010294-13157x", "req.010294.13157", "0102_9413_157_a", "a-01029-41315-7"):
        assert accept_correlation_id(value) is None, value
    assert accept_correlation_id("order-2026-11-29-17") == "order-2026-11-29-17"  # 10 digits: kept
