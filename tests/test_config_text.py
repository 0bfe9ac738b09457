"""Configuration text helpers (``samtykke_gateway/config_text.py``)."""

from __future__ import annotations

import pytest

from samtykke_gateway.config_text import url_without_password


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
    ("postgresql://svc:s3cret@[::1]:5432/db?sslmode=require", "postgresql://svc:***@[::1]:5432/db?sslmode=require"),
    ("redis://redis.internal:6379/0?password=s3cret&db=1", "redis://redis.internal:6379/0?password=***&db=1"),
    ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
])
def test_a_url_is_shown_with_every_password_masked_and_the_rest_kept(url: str, shown: str) -> None:
    assert url_without_password(url) == shown


def test_a_bad_port_still_masks_and_an_unparsable_url_is_not_shown() -> None:
    assert url_without_password("redis://:s3cret@host:notaport/0") == "redis://:***@host:notaport/0"
    assert url_without_password("http://[::1") == "(unparsable URL)"
