"""Typed one-pass reading of the usual Maskinporten claims set (with or without an Altinn 3
consent) — a fast path in front of the strict readers (issue 3, speed).

The strict path reads a payload in three steps: :func:`~samtykke_gateway.tokens.jose.strict_json_object`
(JSON → dict, duplicate names refused, depth bounded), then
:func:`~samtykke_gateway.tokens.maskinporten.maskinporten_from_claims` and
:func:`~samtykke_gateway.tokens.altinn3.consent_from_authorization_details` (dict → models,
~25 type checks in Python). Here the payload is decoded by :mod:`msgspec` straight into
:class:`MaskinportenClaims` — types checked in C, in the same pass — and the models are built
from its attributes. Nothing is decided here: :func:`decode_maskinporten` and
:func:`maskinporten_from_typed` return ``None`` for anything they cannot prove the strict path
would read to the same result, and the caller then runs the strict path, which decides (with
its own error). So a refusal always comes from the strict code, with its reason.

Why an accepted payload reads alike (pinned by property tests in
``tests/tokens/test_typed.py``):

* the schema is closed (``forbid_unknown_fields`` on every level) and typed without ``Any``,
  so nesting is bounded by the schema (depth 6 ≤ the strict bound 32);
* no backslash in the payload: no escapes, so every string is its raw UTF-8 bytes (msgspec
  refuses invalid UTF-8 and raw control characters, as the strict reader does);
* **no duplicate member names**: msgspec would keep the last value silently. Re-encoding the
  result (``omit_defaults``: fields absent from the payload are left out) can only give back
  bytes that are *no longer* than the payload — strings are written back as they came (msgspec
  escapes only ``"``, ``\\`` and control characters, none of which can be in the payload),
  integers in their shortest form (``-0`` → ``0``), no whitespace, each member once, and a
  member whose value is ``null`` (a field's default) is dropped. A repeated name adds at least
  5 bytes to the payload that the re-encoding does not have, so **equal length** proves there
  was none (and no whitespace, no ``-0``, no explicit ``null``); anything shorter is left to
  the strict path;
* the only numbers are the integer ``exp``/``nbf``/``iat`` (floats and booleans are refused by
  the types), range-checked by the caller exactly like the strict verifier.

The claims declared on the models (:mod:`~samtykke_gateway.tokens.claims`: ``supplier``,
``jti``, ``handledBy``, ...) are fields added to the fixed schema classes at import (``_Claims``
and ``_Detail``) and read by :func:`_declared` exactly as ``read_claim`` reads them for the
strict path; that costs about 1 µs per first-sight token over naming each claim here
(9.7 vs 8.5 µs for a usual consent token, ``timeit``, same run).

Then :func:`msgspec.to_builtins` of the result equals the strict reader's dict (tested), which
is what the verifier's cache keeps.
"""

from __future__ import annotations

from typing import Any

import msgspec

from samtykke_gateway.identifiers import ISO6523_AUTHORITY, party_from_urn
from samtykke_gateway.tokens.altinn3 import (
    _ID,
    _RESOURCE,
    _RESOURCE_TYPE,
    CONSENT_MEMBERS,
    CONSENT_TYPE,
    actions_of,
    merge_right,
)
from samtykke_gateway.tokens.claims import Claim, instant_seconds
from samtykke_gateway.tokens.maskinporten import MASKINPORTEN_CLAIMS
from samtykke_gateway.tokens.model import Consent, ConsentRight, MaskinportenToken

__all__ = ["MaskinportenClaims", "decode_maskinporten", "maskinporten_from_typed"]

_STRUCT = {"forbid_unknown_fields": True, "omit_defaults": True, "gc": False}


class _Org(msgspec.Struct, **_STRUCT):  # type: ignore[call-arg]
    """ISO 6523 organisation (``consumer``, ``supplier``, Altinn 3 ``to``)."""

    authority: str
    ID: str


class _Resource(msgspec.Struct, **_STRUCT):  # type: ignore[call-arg]
    type: str
    value: str


class _Right(msgspec.Struct, kw_only=True, **_STRUCT):  # type: ignore[call-arg]
    resource: list[_Resource] | None = None
    action: list[str] | None = None
    metadata: dict[str, str] | None = None
    metaData: dict[str, str] | None = None  # noqa: N815 - the claim's spelling


class _DetailFixed(msgspec.Struct, kw_only=True, **_STRUCT):  # type: ignore[call-arg]
    """One ``authorization_details`` entry of the Altinn 3 consent's shape: the members every
    consent has; :data:`_Detail` adds the optional ones declared on the model."""

    type: str
    id: str
    from_: str = msgspec.field(name="from")
    to: _Org | str
    validTo: str  # noqa: N815
    consentRights: list[_Right]  # noqa: N815


class MaskinportenClaims(msgspec.Struct, kw_only=True, **_STRUCT):  # type: ignore[call-arg]
    """The claims a Maskinporten access token carries (docs/protocol.md §3.2, §3.3), nothing
    else: the fixed ones here; :data:`_Claims` adds those declared on the model."""

    iss: str
    exp: int
    nbf: int | None = None
    iat: int | None = None
    aud: str | list[str] | None = None
    scope: str
    consumer: _Org
    client_amr: str | None = None
    token_type: str | None = None
    authorization_details: list[_DetailFixed] | None = None


def typed_claim_type(claim: Claim) -> Any:
    """The schema type of a declared claim of ``claim.kind`` (absent or ``null``: ``None``)."""
    if claim.kind == "org":
        return _Org | str | None
    return str | None  # text, instant


def _with_declared(name: str, base: type[msgspec.Struct], declared: tuple[tuple[str, Claim], ...],
                   *more: tuple[str, Any, Any]) -> Any:
    """``base`` plus one optional field per declared claim (named as the claim), closed like
    every level of the schema."""
    fields = [(claim.name, typed_claim_type(claim), None) for _, claim in declared]
    return msgspec.defstruct(name, [*fields, *more], bases=(base,), kw_only=True, forbid_unknown_fields=True,
                              omit_defaults=True, gc=False)


_Detail: type[_DetailFixed] = _with_declared("_Detail", _DetailFixed, CONSENT_MEMBERS)
_Claims: type[MaskinportenClaims] = _with_declared(
    "MaskinportenClaims", MaskinportenClaims, MASKINPORTEN_CLAIMS,
    ("authorization_details", list[_Detail] | None, None),  # type: ignore[valid-type]
)

_DECODER = msgspec.json.Decoder(_Claims)
_ENCODER = msgspec.json.Encoder()


def decode_maskinporten(payload: bytes) -> MaskinportenClaims | None:
    """``payload`` (decoded JWS payload bytes) → :class:`MaskinportenClaims`, or ``None`` when
    the strict reader must decide (see the module docstring for why an accepted payload reads
    exactly as :func:`~samtykke_gateway.tokens.jose.strict_json_object` reads it)."""
    if 92 in payload:  # a backslash: escapes are the strict reader's business
        return None
    try:
        claims = _DECODER.decode(payload)
    except (msgspec.MsgspecError, RecursionError):
        return None
    if len(_ENCODER.encode(claims)) != len(payload):
        return None  # a repeated member, whitespace, an explicit null or -0: strict path
    return claims


class _Undecided(Exception):
    """Raised inside the builders: the strict path must decide this token."""




def _org(value: _Org | str) -> str:
    """:func:`~samtykke_gateway.identifiers.org_from_iso6523` for a typed value."""
    if type(value) is _Org:
        ident = value.ID
        if (
            value.authority != ISO6523_AUTHORITY
            or len(ident) != 14
            or not ident.startswith("0192:")
            or not ident.isascii()
            or not ident[5:].isdigit()
        ):
            raise _Undecided
        return ident[5:]
    party = party_from_urn(value)
    if party is None or party.kind != "organization":
        raise _Undecided
    return party.id


def _instant(value: str) -> float:
    """:func:`~samtykke_gateway.tokens.claims.parse_instant` for an accepted value."""
    seconds = instant_seconds(value)
    if seconds is None:
        raise _Undecided
    return seconds


def _declared(decoded: msgspec.Struct, declared: tuple[tuple[str, Claim], ...]) -> dict[str, Any]:
    """field → value of each declared claim, as :func:`~samtykke_gateway.tokens.claims.read_claim`
    reads it (:class:`_Undecided` where that would refuse it)."""
    out: dict[str, Any] = {}
    for field, claim in declared:
        value = getattr(decoded, claim.name)
        if value is not None:
            kind = claim.kind
            if kind == "org":
                value = _org(value)
            elif kind == "instant":
                value = _instant(value)
            elif len(value) > claim.max_chars:
                raise _Undecided
        out[field] = value
    return out


def _rights(rights: list[_Right]) -> tuple[ConsentRight, ...]:
    """``altinn3._rights`` for typed rights (same merge, same result)."""
    if not rights or len(rights) > 64:
        raise _Undecided
    merged: dict[tuple[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = {}
    for right in rights:
        action = right.action
        actions = () if action is None else actions_of(action)
        if actions is None:
            raise _Undecided
        resources = right.resource
        if not resources:
            continue  # no resource: grants nothing, voids nothing (as the strict parser)
        raw = right.metadata
        if raw is None:
            raw = right.metaData
        elif right.metaData is not None:
            raise _Undecided
        metadata: dict[str, tuple[str, ...]] = {}
        if raw is not None:
            if len(raw) > 64:
                raise _Undecided
            for key, value in raw.items():
                lower = key.lower()
                if len(value) > 256 or lower in metadata:
                    raise _Undecided
                metadata[lower] = (value,)
        for res in resources:
            value = res.value
            if res.type != _RESOURCE_TYPE or _RESOURCE.fullmatch(value) is None:
                raise _Undecided
            merge_right(merged, (value, actions), metadata, shared=len(resources) > 1)
    return tuple([ConsentRight(res, md, acts) for (res, acts), md in merged.items()])


def _consent(details: list[_DetailFixed], issuer: str, key_id: str | None) -> Consent | None:
    entry = None
    for detail in details:
        if detail.type == CONSENT_TYPE:
            if entry is not None:
                raise _Undecided  # more than one consent: the strict path refuses it
            entry = detail
    if entry is None:
        return None
    consent_id = entry.id
    if _ID.fullmatch(consent_id) is None:
        raise _Undecided
    subject = party_from_urn(entry.from_)
    if subject is None:
        raise _Undecided
    consumer = _org(entry.to)
    valid_to = _instant(entry.validTo)
    declared = _declared(entry, CONSENT_MEMBERS)
    return Consent("altinn3", consent_id.lower(), subject, consumer, valid_to, _rights(entry.consentRights),
                   issuer, key_id, **declared)


def maskinporten_from_typed(
    claims: MaskinportenClaims, *, issuer: str, key_id: str | None, expires_at: float
) -> MaskinportenToken | None:
    """What :func:`~samtykke_gateway.tokens.maskinporten.maskinporten_from_claims` returns for
    the same claims, or ``None`` where it would refuse them or this cannot tell (the strict
    parser then decides)."""
    try:
        consumer = _org(claims.consumer)
        declared = _declared(claims, MASKINPORTEN_CLAIMS)
        details = claims.authorization_details
        consent = None if details is None else _consent(details, issuer, key_id)
    except _Undecided:
        return None
    scope = claims.scope
    if len(scope) > 4096:
        return None
    scopes = frozenset(scope.split(" "))
    if "" in scopes:
        scopes = scopes - {""}
    return MaskinportenToken(issuer, key_id, consumer, scopes, expires_at, consent=consent,
                             issued_at=None if claims.iat is None else float(claims.iat), **declared)
