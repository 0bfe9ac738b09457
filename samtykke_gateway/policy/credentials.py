"""The credentials a request carries: the Maskinporten bearer token (RFC 6750 §2.1) and the
Altinn 2 consent token header, read from the header map (docs/protocol.md §4 steps 1 and 6),
and the consent-token reason codes (framework-free)."""

from __future__ import annotations

from collections.abc import Mapping

from samtykke_gateway.exceptions import BadRequestError, MissingTokenError

__all__ = ["CONSENT_TOKEN_REASONS", "bearer_token", "consent_header_token"]

#: Reason of a failed Altinn 2 consent-token verification (403) for each reason the verifier
#: gives a bearer (401): the consent token is a consent problem, never the bearer's
#: (docs/protocol.md §4).
CONSENT_TOKEN_REASONS = {
    "malformed_token": "consent_token_malformed",
    "alg_not_allowed": "consent_token_alg_not_allowed",
    "crit_not_supported": "consent_token_crit_not_supported",
    "unknown_key": "consent_token_unknown_key",
    "bad_signature": "consent_token_bad_signature",
    "wrong_issuer": "consent_token_wrong_issuer",
    "wrong_audience": "consent_token_wrong_audience",
    "token_expired": "consent_token_expired",
    "token_not_yet_valid": "consent_token_not_yet_valid",
    "bad_time_claim": "consent_token_bad_time_claim",
}


def bearer_token(headers: Mapping[str, list[str]]) -> str:
    """The RFC 6750 §2.1 bearer token from ``Authorization``.

    :raises MissingTokenError: (401) no Authorization header.
    :raises BadRequestError: (400) more than one Authorization header.
    :raises InvalidTokenError: never here; a non-Bearer scheme is treated as missing.
    """
    values = headers.get("authorization", [])
    if not values:
        raise MissingTokenError("no bearer token (Authorization: Bearer ...)", reason="missing_token")
    if len(values) > 1:
        raise BadRequestError("more than one Authorization header", reason="duplicate_header")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingTokenError("Authorization must use the Bearer scheme", reason="missing_token")
    return token


def consent_header_token(headers: Mapping[str, list[str]], name: str) -> str | None:
    """The Altinn 2 consent token from header ``name`` (quotes and a ``Bearer`` prefix removed),
    ``None`` when absent or empty.

    :raises BadRequestError: (400, ``duplicate_header``) the header is repeated.
    """
    values = headers.get(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestError("more than one consent token header", reason="duplicate_header")
    value = values[0].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip()
    if value.lower().startswith("bearer "):
        value = value[7:].strip()
    return value or None
