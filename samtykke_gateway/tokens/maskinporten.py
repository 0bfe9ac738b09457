"""Maskinporten access token claims → :class:`MaskinportenToken` (Digdir
``maskinporten_protocol_token``, ``maskinporten_func_samtykke``; docs/protocol.md §3.2)."""

from __future__ import annotations

from typing import Any

from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.identifiers import org_from_iso6523
from samtykke_gateway.tokens.altinn3 import consent_from_authorization_details
from samtykke_gateway.tokens.claims import claim_fields, read_claim
from samtykke_gateway.tokens.memo import remember, remembered
from samtykke_gateway.tokens.model import MaskinportenToken

__all__ = ["MASKINPORTEN_CLAIMS", "maskinporten_from_claims"]

_MAX_SCOPE_CHARS = 4096
#: the claims declared on :class:`MaskinportenToken` (``supplier``, ``delegation_source``,
#: ``client_id``, ``jti``, ...): ``(field, Claim)``, read alike by the typed fast path
MASKINPORTEN_CLAIMS = claim_fields(MaskinportenToken)


def _bad(detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason="bad_maskinporten_claims")


def maskinporten_from_claims(
    claims: dict[str, Any], *, issuer: str, key_id: str | None, expires_at: float
) -> MaskinportenToken:
    """Verified Maskinporten claims → :class:`MaskinportenToken`, with the Altinn 3 consent
    (``authorization_details``) parsed when present.

    The result is remembered on verified ``claims`` (see :mod:`.memo`): a token the verifier's
    cache has seen before is not parsed again.

    :raises InvalidTokenError: (401, ``bad_maskinporten_claims``) ``consumer`` missing or not
        ISO 6523 ``0192:<orgno>``, ``scope`` not a string, a claim declared on the model
        (``supplier``, ``jti``, ...) malformed.
    :raises InvalidConsentError: (403, ``bad_consent_claims``) a malformed Altinn 3 consent
        entry (the bearer is authentic; the consent is the problem, docs/protocol.md §4).
    """
    options = (issuer, key_id, expires_at)
    known: MaskinportenToken | None = remembered(claims, "maskinporten", options)
    if known is not None:
        return known
    consumer = org_from_iso6523(claims.get("consumer"))
    if consumer is None:
        raise _bad("consumer is missing or not an ISO 6523 organisation")
    scope = claims.get("scope")
    if not isinstance(scope, str) or len(scope) > _MAX_SCOPE_CHARS:
        raise _bad("scope is missing or not a string")
    # the simple claims, declared on the model (tokens/claims.py), before the consent: a
    # malformed bearer claim is 401 even when the consent is malformed too
    read = {field: read_claim(claims, claim, _bad) for field, claim in MASKINPORTEN_CLAIMS}
    details = claims.get("authorization_details")
    consent = (
        None
        if details is None
        else consent_from_authorization_details(details, issuer=issuer, key_id=key_id)
    )
    scopes = frozenset(scope.split(" "))
    if "" in scopes:  # doubled, leading or trailing spaces
        scopes = scopes - {""}
    iat = claims.get("iat")
    issued_at = float(iat) if type(iat) is int or type(iat) is float else None
    token = MaskinportenToken(issuer, key_id, consumer, scopes, expires_at, consent=consent,
                              issued_at=issued_at, **read)
    return remember(claims, "maskinporten", options, token)
