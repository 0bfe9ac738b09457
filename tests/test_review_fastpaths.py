"""Review of the speed fast paths against their strict references: the divergences found.

Each test pins one input where a fast path could answer differently from its reference.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from samtykke_gateway.audit import chain
from samtykke_gateway.dev.issuer import DevIssuer, encode_token

from tests.support import (
    BANK,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    running_gateway,
    tax_base_path,
)


class _Midnight24(datetime):
    """``datetime`` whose ``fromisoformat`` reads ``T24:00:00`` as the next day's midnight
    (ISO 8601's end of day) when minutes, seconds and fraction are zero, as newer CPython
    parsers do; 3.11's refuses hour 24 outright."""

    @classmethod
    def fromisoformat(cls, text: str) -> Any:  # type: ignore[override]
        if len(text) >= 19 and text[10] == "T" and text[11:13] == "24":
            tail = text[13:]
            zero = tail.rstrip("Z")
            if zero.strip(":.0") or not zero.startswith(":00:00"):
                raise ValueError("hour must be in 0..23")
            day = datetime.fromisoformat(text[:10] + "T00" + tail)
            return day + timedelta(days=1)
        return datetime.fromisoformat(text)


def _reference_normalise(value: str) -> str:
    """7f774a2's ``normalise_time`` (the reference), with the patched parser."""
    parsed = _Midnight24.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _outcome(function: Any, value: str) -> Any:
    try:
        return function(value)
    except ValueError:
        return ValueError


@pytest.mark.parametrize(
    "value",
    ["2026-02-28T24:00:00.000000Z", "2026-02-28T24:00:00.500000Z", "2026-12-31T24:00:00.000001Z"],
)
def test_normalise_time_hour_24_takes_the_reference_path(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fast path validated only the first 19 characters: with a parser that reads
    # "T24:00:00" as the next midnight it returned "...T24:00:00.500000Z" unchanged, where
    # the reference refuses it (non-zero fraction) or normalises it to the next day.
    monkeypatch.setattr(chain, "datetime", _Midnight24)
    monkeypatch.setattr(chain, "_valid_second", "")
    assert _outcome(chain.normalise_time, value) == _outcome(_reference_normalise, value)
    assert _outcome(chain.normalise_time, value) == _outcome(_reference_normalise, value)


# --- held: signed tokens whose payload bytes only the strict reader may judge ------------------
# End to end through the middleware, after a good token has put the header segment in the
# parser's cache (so every case below takes the compact fast path first).

_OTHER_ORG = "310000002"


def _claims(dev: DevIssuer) -> dict[str, Any]:
    now = int(time.time())
    rights = [(TAX_BASE_RESOURCE, {"inntektsaar": "2022"})]
    return {
        "iss": dev.MASKINPORTEN_ISSUER,
        "scope": TAX_BASE_SCOPE,
        "consumer": {"authority": "iso6523-actorid-upis", "ID": f"0192:{BANK}"},
        "client_id": "c",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 120,
        "token_type": "Bearer",
        "authorization_details": [
            DevIssuer.altinn3_consent(subject=TAX_BASE_PERSON, consumer=BANK, rights=rights)
        ],
    }


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.anyio
async def test_signed_non_canonical_payloads_through_the_fast_path(
    dev_issuer: DevIssuer, issuer_url: str
) -> None:
    key = dev_issuer.key("maskinporten")
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    claims = _claims(dev_issuer)
    good = _compact(claims)
    other = b'"consumer":{"authority":"iso6523-actorid-upis","ID":"0192:' + _OTHER_ORG.encode()
    cases = {
        "canonical": (good, 200),
        "whitespace": (b" " + json.dumps(claims).encode() + b"\n", 200),
        "escaped name": (good.replace(b'"scope"', b'"\\u0073cope"'), 200),
        "float exp": (_compact({**claims, "exp": float(claims["exp"])}), 200),
        "duplicate consumer": (good[:-1] + b"," + other + b'"}}', 401),
        "duplicate exp": (good[:-1] + b',"exp":1}', 401),
        "NaN": (good[:-1] + b',"x":NaN}', 401),
        "BOM": (b"\xef\xbb\xbf" + good, 401),
        "lone surrogate": (good[:-1] + b',"x":"\\ud800"}', 401),
        "exp 2**64": (_compact({**claims, "exp": 2**64}), 401),
        "exp true": (_compact({**claims, "exp": True}), 401),
        "depth 33": (good[:-1] + b',"d":' + b"[" * 32 + b"]" * 32 + b"}", 401),
    }
    async with running_gateway("middleware", issuer_url) as gw:
        got = {}
        for name, (payload, _) in cases.items():
            token = encode_token(header, payload, key.private_key)
            response = await gw.client.get(
                tax_base_path("2022"), headers={"Authorization": f"Bearer {token}"}
            )
            got[name] = response.status_code
    assert got == {name: want for name, (_, want) in cases.items()}
