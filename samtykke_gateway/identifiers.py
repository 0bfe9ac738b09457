"""Norwegian identifiers as they appear in consent tokens and requests.

Person ids (fødselsnummer, D-number, synthetic Tenor persons with month + 80) are 11 ASCII
digits; organisation numbers are 9 ASCII digits (synthetic test orgs start with 2 or 3).
Identifiers are compared as exact ASCII digit strings (docs/protocol.md §4 step 7): never through
``int()``, which accepts full-width digits, whitespace and underscores.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

__all__ = [
    "ISO6523_AUTHORITY",
    "Party",
    "is_org_number",
    "is_person_id",
    "org_from_iso6523",
    "party_from_digits",
    "party_from_urn",
]

#: The ISO 6523 authority of a Norwegian organisation number in Maskinporten and Altinn 3 claims.
ISO6523_AUTHORITY = "iso6523-actorid-upis"
_ISO6523_ID = re.compile(r"0192:([0-9]{9})")
_URN = re.compile(r"urn:altinn:(person|organization):identifier-no:([0-9]{9}|[0-9]{11})")

PartyKind = Literal["person", "organization"]


class Party(msgspec.Struct, frozen=True, gc=False):
    """A data subject or party: ``kind`` is ``"person"`` (11 digits) or ``"organization"`` (9).

    Frozen, compared and hashed by value like the frozen dataclass it was, but built in C
    (one per consent on every first-sight request).
    """

    kind: PartyKind
    id: str


def is_person_id(value: object) -> bool:
    """True for exactly 11 ASCII digits (checksum not enforced: test persons vary).

    ``isascii() and isdigit()`` is ``[0-9]+`` (the only ASCII digits), without the regex call.
    """
    return isinstance(value, str) and len(value) == 11 and value.isascii() and value.isdigit()


def is_org_number(value: object) -> bool:
    """True for exactly 9 ASCII digits."""
    return isinstance(value, str) and len(value) == 9 and value.isascii() and value.isdigit()


def party_from_digits(value: object) -> Party | None:
    """``"01029413157"`` → person, ``"999999999"`` → organisation, anything else → ``None``."""
    if is_person_id(value):
        return Party("person", value)  # type: ignore[arg-type]
    if is_org_number(value):
        return Party("organization", value)  # type: ignore[arg-type]
    return None


def party_from_urn(value: object) -> Party | None:
    """Altinn 3 party URN (``urn:altinn:person:identifier-no:<11>`` or
    ``urn:altinn:organization:identifier-no:<9>``) → :class:`Party`; mismatched length → ``None``.
    """
    if not isinstance(value, str):
        return None
    m = _URN.fullmatch(value)
    if m is None:
        return None
    kind, digits = m.group(1), m.group(2)
    if (kind == "person") != (len(digits) == 11):
        return None
    return Party("person" if kind == "person" else "organization", digits)


def org_from_iso6523(value: Any) -> str | None:
    """Maskinporten ``consumer``/``supplier`` (``{"authority": "iso6523-actorid-upis",
    "ID": "0192:<orgno>"}``) or an Altinn 3 ``to`` in either that form or the URN form
    ``urn:altinn:organization:identifier-no:<orgno>`` → 9-digit org number, else ``None``.
    """
    if isinstance(value, dict):
        if value.get("authority") != ISO6523_AUTHORITY:
            return None
        ident = value.get("ID")
        if not isinstance(ident, str):
            return None
        m = _ISO6523_ID.fullmatch(ident)
        return m.group(1) if m else None
    party = party_from_urn(value)
    if party is not None and party.kind == "organization":
        return party.id
    return None
