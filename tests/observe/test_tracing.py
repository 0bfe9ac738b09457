"""Tracing (``samtykke_gateway/observe/tracing.py``): without the ``otel`` extra, a clear error."""

from __future__ import annotations

import sys

import pytest


def test_tracing_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtykke_gateway.observe.tracing import get_tracer

    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(RuntimeError, match=r"samtykke-gateway\[otel\]"):
        get_tracer()
