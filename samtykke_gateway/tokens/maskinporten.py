"""Maskinporten access token claims → :class:`MaskinportenToken` (Digdir
``maskinporten_protocol_token``, ``maskinporten_func_samtykke``; docs/protocol.md §3.2)."""

from __future__ import annotations

from typing import Any

from samtykke_gateway.exceptions import InvalidTokenError
from samtykke_gateway.identifiers import org_from_iso6523
from samtykke_gateway.tokens.altinn3 import consent_from_authorization_details
from samtykke_gateway.tokens.memo import remember, remembered
from samtykke_gateway.tokens.model import MaskinportenToken

__all__ = ["maskinporten_from_claims"]

_MAX_SCOPE_CHARS = 4096


def _bad(detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason="bad_maskinporten_claims")


def _opt_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 512:
        raise _bad(f"{name} is not a string")
    return value


def maskinporten_from_claims(
    claims: dict[str, Any], *, issuer: str, key_id: str | None, expires_at: float
) -> MaskinportenToken:
    """Verified Maskinporten claims → :class:`MaskinportenToken`, with the Altinn 3 consent
    (``authorization_details``) parsed when present.

    The result is remembered on verified ``claims`` (see :mod:`.memo`): a token the verifier's
    cache has seen before is not parsed again.

    :raises InvalidTokenError: (401) ``consumer`` missing or not ISO 6523 ``0192:<orgno>``,
        ``scope`` not a string, ``supplier`` malformed.
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
    supplier = None
    if claims.get("supplier") is not None:
        supplier = org_from_iso6523(claims["supplier"])
        if supplier is None:
            raise _bad("supplier is not an ISO 6523 organisation")
    details = claims.get("authorization_details")
    consent = (
        None
        if details is None
        else consent_from_authorization_details(details, issuer=issuer, key_id=key_id)
    )
    scopes = frozenset(scope.split(" "))
    if "" in scopes:  # doubled, leading or trailing spaces
        scopes = scopes - {""}
    # Plain short strings (or absent) inline; _opt_str decides anything else, in this order.
    delegation_source = claims.get("delegation_source")
    if delegation_source is not None and (
        type(delegation_source) is not str or len(delegation_source) > 512
    ):
        delegation_source = _opt_str(claims, "delegation_source")
    client_id = claims.get("client_id")
    if client_id is not None and (type(client_id) is not str or len(client_id) > 512):
        client_id = _opt_str(claims, "client_id")
    jti = claims.get("jti")
    if jti is not None and (type(jti) is not str or len(jti) > 512):
        jti = _opt_str(claims, "jti")
    iat = claims.get("iat")
    issued_at = float(iat) if type(iat) is int or type(iat) is float else None
    token = MaskinportenToken(
        issuer,
        key_id,
        consumer,
        scopes,
        expires_at,
        supplier,
        delegation_source,
        client_id,
        jti,
        consent,
        issued_at,
    )
    return remember(claims, "maskinporten", options, token)
