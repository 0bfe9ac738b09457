"""Altinn 2 consent token claims → :class:`Consent` (docs/protocol.md §3.1, Altinn 2 samtykke guide).

Accepted variants (all seen in official examples):

* ``Services`` as array or single string; claim name ``ServiceCodes`` instead of ``Services``;
* separators ``_`` or ``,``: ``"4629_2"``, ``"4629,2"``, ``"4629,2,inntektsaar=2015"``;
* several metadata pairs in one entry: ``"4630,2,fraOgMed=2017-06,tilOgMed=2017-08"``;
* ``DelegatedDate``/``ValidToDate`` as epoch seconds, ``"yyyy-MM-dd HH:mm:ss"`` or
  ``"dd.MM.yyyy HH:mm:ss"`` (no zone: *Decision* Europe/Oslo local time), or ISO 8601.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from itertools import repeat
from typing import Any
from zoneinfo import ZoneInfo

from samtykke_gateway.exceptions import InvalidConsentError
from samtykke_gateway.identifiers import is_org_number, party_from_digits
from samtykke_gateway.tokens.memo import remember, remembered
from samtykke_gateway.tokens.model import Consent, ConsentRight

__all__ = ["consent_from_altinn2_claims", "parse_altinn_date", "parse_service_entry"]

_OSLO = ZoneInfo("Europe/Oslo")
_ENTRY = re.compile(r"([0-9]{1,10})[_,]([0-9]{1,10})(?:[_,](.+))?", re.S)
# The common shapes in one match: no metadata, or one pair whose value has no separator (the
# general path below would read such an entry the same way, in three regex calls).
_SIMPLE_ENTRY = re.compile(
    r"([0-9]{1,10})[_,]([0-9]{1,10})(?:[_,]([A-Za-z][A-Za-z0-9]{0,63})=([^\x00-\x1f_,]{0,256}))?"
)
_PAIR_SPLIT = re.compile(r"[_,](?=[A-Za-z][A-Za-z0-9]{0,63}=)")
_PAIR = re.compile(r"([A-Za-z][A-Za-z0-9]{0,63})=([^\x00-\x1f]{0,256})")
_LOCAL_FORMATS = ("%Y-%m-%d %H:%M:%S", "%d.%m.%Y %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_MAX_SERVICES = 256
_GUID = re.compile(
    r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
)
# Already in the canonical form _canonical_guid makes (the usual case): kept as it is.
_CANONICAL_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _bad(detail: str) -> InvalidConsentError:
    return InvalidConsentError(detail, reason="bad_consent_claims")


def _canonical_guid(code: str) -> str:
    """``AuthorizationCode`` with or without dashes, any case → ``8-4-4-4-12`` lower case, so
    revocation and one-time use compare one form."""
    h = code.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_service_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``"4630,2,fraOgMed=2017-06,tilOgMed=2017-08"`` → (``"4630_2"``, {fraogmed: .., tilogmed: ..}).

    Metadata keys are lower-cased (compared case-insensitively, as Altinn 3 migration does).
    :raises InvalidConsentError: (403, ``bad_consent_claims``) for an entry of any other shape.
    """
    simple = _SIMPLE_ENTRY.fullmatch(entry)
    if simple is not None:
        code, edition, key, value = simple.groups()
        return f"{code}_{edition}", {} if key is None else {key.lower(): value}
    return _parse_entry(entry)


def _parse_entry(entry: str) -> tuple[str, dict[str, str]]:
    """:func:`parse_service_entry` for any shape (several pairs, separators in values)."""
    m = _ENTRY.fullmatch(entry)
    if m is None:
        raise _bad("a Services entry is not '<serviceCode>_<editionCode>[_key=value...]'")
    service = f"{m.group(1)}_{m.group(2)}"
    metadata: dict[str, str] = {}
    rest = m.group(3)
    if rest is not None:
        for part in _PAIR_SPLIT.split(rest):
            pm = _PAIR.fullmatch(part)
            if pm is None:
                raise _bad("a Services metadata pair is not 'key=value'")
            key = pm.group(1).lower()
            if key in metadata and metadata[key] != pm.group(2):
                raise _bad("a Services entry repeats a metadata key")
            metadata[key] = pm.group(2)
    return service, metadata


def parse_altinn_date(value: Any, *, claim: str) -> float:
    """An Altinn 2 date claim → epoch seconds.

    Accepts int/float epoch seconds, ``"yyyy-MM-dd HH:mm:ss"``, ``"dd.MM.yyyy HH:mm:ss"`` and
    ``"yyyy-MM-ddTHH:mm:ss"`` (Europe/Oslo when no zone), or ISO 8601 with an offset.
    :raises InvalidConsentError: (403, ``bad_consent_claims``) otherwise.
    """
    if type(value) is int and 0 <= value <= 253402300799:  # the usual case, in one test
        return float(value)
    if isinstance(value, bool):
        raise _bad(f"{claim} has the wrong type")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value <= 253402300799:
            raise _bad(f"{claim} is out of range")
        return float(value)
    if not isinstance(value, str) or len(value) > 40 or not value.isascii():
        raise _bad(f"{claim} has the wrong type")
    text = value.strip()
    if text.isdigit():
        return parse_altinn_date(int(text), claim=claim)
    for fmt in _LOCAL_FORMATS:
        try:
            naive = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return naive.replace(tzinfo=_OSLO).timestamp()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(f"{claim} is not a recognised date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_OSLO)
    return parsed.timestamp()


def consent_from_altinn2_claims(
    claims: dict[str, Any], *, issuer: str, key_id: str | None, allow_test_tokens: bool = True
) -> Consent:
    """Verified Altinn 2 consent token claims → :class:`Consent` of kind ``"altinn2"``.

    Metadata of several entries for the same service is merged (``4804_210607_fraOgMed=..``
    and ``4804_210607_tilOgMed=..`` form one right).

    The result is remembered on verified ``claims`` (see :mod:`.memo`): a token the verifier's
    cache has seen before is not parsed again.

    :param allow_test_tokens: ``False`` in production profiles: a token with ``actual_iss``
        (Altinn test-generator marker) is refused.
    :raises InvalidConsentError: (403) missing/ill-typed identity claims or unparsable entries.
    """
    options = (issuer, key_id, allow_test_tokens)
    known: Consent | None = remembered(claims, "altinn2", options)
    if known is not None:
        return known
    if not allow_test_tokens and "actual_iss" in claims:
        raise InvalidConsentError(
            "test-generator consent tokens are not accepted in this profile",
            reason="test_token_refused",
        )
    code = claims.get("AuthorizationCode")
    if type(code) is str and _CANONICAL_GUID.fullmatch(code) is not None:
        consent_id = code
    elif isinstance(code, str) and _GUID.fullmatch(code) is not None:
        consent_id = _canonical_guid(code)
    else:
        raise _bad("AuthorizationCode is missing or not a GUID")
    subject = party_from_digits(claims.get("OfferedBy"))
    if subject is None:
        raise _bad("OfferedBy is missing or not a person id / org number")
    consumer = claims.get("CoveredBy")
    if not is_org_number(consumer):
        raise _bad("CoveredBy is missing or not an org number")
    supplier = claims.get("HandledBy")
    if supplier is not None and not is_org_number(supplier):
        raise _bad("HandledBy is not an org number")
    if "ValidToDate" not in claims:
        raise _bad("ValidToDate is missing")
    valid_to = parse_altinn_date(claims["ValidToDate"], claim="ValidToDate")
    delegated = (
        parse_altinn_date(claims["DelegatedDate"], claim="DelegatedDate")
        if claims.get("DelegatedDate") is not None
        else None
    )
    services = claims.get("Services", claims.get("ServiceCodes"))
    if "Services" in claims and "ServiceCodes" in claims:
        raise _bad("both Services and ServiceCodes are present")
    if isinstance(services, str):
        services = [services]
    elif not isinstance(services, list) or not services or len(services) > _MAX_SERVICES:
        raise _bad("Services is missing or not a list of strings")
    # service -> lower-cased key -> values (tuples: a right's metadata is used as is).
    merged: dict[str, dict[str, tuple[str, ...]]] = {}
    pairs: Iterable[tuple[str, str]]
    for entry in services:
        if not isinstance(entry, str):
            raise _bad("Services is missing or not a list of strings")
        simple = _SIMPLE_ENTRY.fullmatch(entry)  # parse_service_entry's fast path, inlined
        if simple is None:
            # Every entry must be a string before any is refused for its shape.
            if not all(map(isinstance, services, repeat(str))):
                raise _bad("Services is missing or not a list of strings")
            service, metadata = _parse_entry(entry)
            pairs = metadata.items()
        else:
            service_code, edition, key, value = simple.groups()
            service = f"{service_code}_{edition}"
            if key is None:
                pairs = ()
            else:
                target = merged.get(service)
                if target is None:
                    merged[service] = {key.lower(): (value,)}
                    continue
                pairs = ((key.lower(), value),)
        target = merged.get(service)
        if target is None:
            target = merged[service] = {}
        for key, value in pairs:
            values = target.get(key)
            if values is None:
                target[key] = (value,)
            elif value not in values:
                target[key] = (*values, value)
    rights = tuple([ConsentRight(service, md) for service, md in merged.items()])
    consent = Consent(
        kind="altinn2",
        consent_id=consent_id,
        subject=subject,
        consumer=consumer,  # type: ignore[arg-type]
        supplier=supplier,
        valid_to=valid_to,
        delegated=delegated,
        rights=rights,
        issuer=issuer,
        key_id=key_id,
    )
    return remember(claims, "altinn2", options, consent)
