"""Altinn 3 consent (``authorization_details`` of type ``urn:altinn:consent``) → :class:`Consent`.

Source: Altinn 3 resource-owner consent guide (altinn-studio-docs
``content/authorization/guides/resource-owner/consent``), docs/protocol.md §3.3. Accepted variants:
``to`` as ISO 6523 object or URN string; ``metadata`` or ``metaData``; metadata keys in any
case; the same resource in several ``consentRights`` (allowed values are the union);
``consented``/``validTo`` with ``Z`` or an offset and up to 7 fraction digits. Exactly one
``urn:altinn:consent`` entry per token. Doc typos (``concent``) are never accepted.

Since issue 11 (docs/protocol.md §3.3): ``action`` is kept on each right (lower-cased; which
actions cover a read is the route's ``accepted_actions``, decided in
:mod:`~samtykke_gateway.policy.binding`); a right that lists no resource (``resource`` absent,
``null`` or ``[]``) grants nothing and does not void the others; ``handledBy`` (ISO 6523
object or URN string, like ``to``) is read into :attr:`Consent.handled_by`. A malformed
consent is :class:`~samtykke_gateway.exceptions.InvalidConsentError` (403): the bearer that
carries it is authentic.
"""

from __future__ import annotations

import re
from typing import Any

from samtykke_gateway.exceptions import InvalidConsentError
from samtykke_gateway.identifiers import org_from_iso6523, party_from_urn
from samtykke_gateway.tokens.claims import claim_fields, parse_instant, read_claim
from samtykke_gateway.tokens.model import Consent, ConsentRight

__all__ = ["ACTION_NAME", "CONSENT_MEMBERS", "CONSENT_TYPE", "consent_from_authorization_details", "parse_iso_instant"]

CONSENT_TYPE = "urn:altinn:consent"
#: the optional consent members declared on :class:`Consent` (``consented``, ``handledBy``,
#: ...): ``(field, Claim)``, read alike by the typed fast path
CONSENT_MEMBERS = claim_fields(Consent)
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,127}")
_RESOURCE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,127}")
_RESOURCE_TYPE = "urn:altinn:resource"
#: One ``consentRights[].action`` name: 1-64 printable ASCII characters, no space.
ACTION_NAME = re.compile(r"[!-~]{1,64}")
_MAX_RIGHTS = 64
_MAX_META = 64
_MAX_ACTIONS = 16


def _bad(detail: str) -> InvalidConsentError:
    return InvalidConsentError(detail, reason="bad_consent_claims")


def actions_of(raw: list[str]) -> tuple[str, ...] | None:
    """``consentRights[].action`` (a list of strings) → lower-cased, sorted, each once; ``None``
    when an entry is not 1-64 printable ASCII characters or there are more than 16."""
    if len(raw) > _MAX_ACTIONS:
        return None
    out = set()
    for action in raw:
        if type(action) is not str or ACTION_NAME.fullmatch(action) is None:
            return None
        out.add(action.lower())
    return tuple(sorted(out))


def parse_iso_instant(value: Any, *, claim: str) -> float:
    """ISO 8601 instant with ``Z`` or ``±HH:MM`` and 0–7 fraction digits → epoch seconds.

    :raises InvalidConsentError: (403, ``bad_consent_claims``) for anything else (no zone, wrong type).
    """
    return parse_instant(value, claim, _bad)


def _metadata(right: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """A right's metadata, keys lower-cased, each value as a one-value tuple (a new dict)."""
    if "metadata" in right:
        if "metaData" in right:
            raise _bad("consentRights entry has both metadata and metaData")
        raw = right["metadata"]
    else:
        raw = right.get("metaData")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > _MAX_META:
        raise _bad("consentRights metadata is not an object")
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(value) > 256:
            raise _bad("consentRights metadata values must be strings")
        lower = key.lower()
        if lower in out:
            raise _bad("consentRights metadata repeats a key (case-insensitively)")
        out[lower] = (value,)
    return out


def _rights(entry: dict[str, Any]) -> tuple[ConsentRight, ...]:
    raw = entry.get("consentRights")
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_RIGHTS:
        raise _bad("consentRights is missing or not a list")
    # (resource, actions) -> lower-cased key -> values (tuples, so a right's metadata is used
    # as is). Rights merge only with the same actions: a year consented for "write" alone must
    # not join a year consented for "read".
    merged: dict[tuple[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = {}
    for right in raw:
        if not isinstance(right, dict):
            raise _bad("consentRights entry is not an object")
        action = right.get("action")
        if action is None:
            actions: tuple[str, ...] | None = ()  # covers nothing: no action is accepted
        elif isinstance(action, list):
            actions = actions_of(action)
        else:
            actions = None
        if actions is None:
            raise _bad("consentRights action is not a list of action names")
        resources = right.get("resource")
        if resources is None or resources == []:
            continue  # a right without a resource grants nothing and voids nothing
        if not isinstance(resources, list):
            raise _bad("consentRights resource is not a list")
        metadata = _metadata(right)
        for res in resources:
            if not isinstance(res, dict) or res.get("type") != _RESOURCE_TYPE:
                raise _bad("consentRights resource is not a urn:altinn:resource")
            value = res.get("value")
            if not isinstance(value, str) or _RESOURCE.fullmatch(value) is None:
                raise _bad("consentRights resource value is not a resource id")
            merge_right(merged, (value, actions), metadata, shared=len(resources) > 1)
    return tuple([ConsentRight(res, md, actions) for (res, actions), md in merged.items()])


def merge_right(
    merged: dict[tuple[str, tuple[str, ...]], dict[str, tuple[str, ...]]],
    key: tuple[str, tuple[str, ...]],
    metadata: dict[str, tuple[str, ...]],
    *,
    shared: bool,
) -> None:
    """Add one ``consentRights`` entry's ``metadata`` (lower-cased key → one-value tuple) for
    ``key`` = (resource, actions) to ``merged``: the same resource with the same actions in
    several rights allows the union of their values per key (Altinn 3 validate-consent guide;
    docs/protocol.md §3.3, §5). ``shared``: the metadata dict also serves other resources of
    the same right, so it is copied before it can be merged into.
    """
    target = merged.get(key)
    if target is None:
        merged[key] = metadata.copy() if shared else metadata
        return
    for name, one in metadata.items():
        vals = target.get(name)
        if vals is None:
            target[name] = one
        elif one[0] not in vals:
            target[name] = (*vals, one[0])


def consent_from_authorization_details(
    details: Any, *, issuer: str, key_id: str | None
) -> Consent | None:
    """``authorization_details`` claim (RFC 9396) → :class:`Consent` of kind ``"altinn3"``.

    :returns: ``None`` when the claim is absent or holds no ``urn:altinn:consent`` entry.
    :raises InvalidConsentError: (403, ``bad_consent_claims``) more than one consent entry, or
        a malformed one.
    """
    if details is None:
        return None
    if not isinstance(details, list):  # RFC 9396 §2: a JSON array
        raise _bad("authorization_details is not a list")
    entry = None
    for d in details:
        if isinstance(d, dict) and d.get("type") == CONSENT_TYPE:
            if entry is not None:
                raise _bad("more than one urn:altinn:consent entry")
            entry = d
    if entry is None:
        return None
    consent_id = entry.get("id")
    if not isinstance(consent_id, str) or _ID.fullmatch(consent_id) is None:
        raise _bad("consent id is missing or malformed")
    subject = party_from_urn(entry.get("from"))
    if subject is None:
        raise _bad("consent 'from' is not a person or organisation URN")
    consumer = org_from_iso6523(entry.get("to"))
    if consumer is None:
        raise _bad("consent 'to' is not an organisation")
    valid_to = parse_instant(entry.get("validTo"), "validTo", _bad)
    # the optional members declared on the model (tokens/claims.py): handledBy, consented, ...
    read = {field: read_claim(entry, claim, _bad) for field, claim in CONSENT_MEMBERS}
    return Consent("altinn3", consent_id.lower(), subject, consumer, valid_to, _rights(entry), issuer,
                   key_id, **read)
