"""Simple token claims declared once, on the model field they fill (docs/protocol.md §3.2, §3.3).

A field of :class:`~samtykke_gateway.tokens.model.MaskinportenToken` annotated
``Annotated[str | None, Claim("jti")]`` is read from the Maskinporten token's ``jti`` claim; a
field of :class:`~samtykke_gateway.tokens.model.Consent` annotated the same way is read from the
member of that name of the Altinn 3 consent entry (``authorization_details[]`` of type
``urn:altinn:consent``). Both readers take the list from :func:`claim_fields`: the strict
reader checks each value with :func:`read_claim`; the typed fast path
(:mod:`~samtykke_gateway.tokens.typed`) adds one field per claim to its closed msgspec schema
(:func:`~samtykke_gateway.tokens.typed.typed_claim_type`) and checks the decoded value the same way. So a new claim of one of
these kinds is one annotated field on the model and nothing else in ``tokens/``.

Kinds (an absent claim is ``None`` for every kind; every claim is optional):

- ``"text"``: a JSON string of at most ``max_chars`` characters; ``null`` is absent.
- ``"org"``: an organisation, ISO 6523 object ``{"authority": "iso6523-actorid-upis",
  "ID": "0192:<orgno>"}`` or URN ``urn:altinn:organization:identifier-no:<orgno>`` → the 9-digit
  organisation number; ``null`` is absent.
- ``"instant"``: ISO 8601 with ``Z`` or ``±HH:MM`` and 0–7 fraction digits → epoch seconds
  (float); present means it must be one (``null`` is refused).

A malformed value is refused by the reader's own error: 401 ``bad_maskinporten_claims`` for a
Maskinporten claim (the bearer is malformed), 403 ``bad_consent_claims`` for a consent member.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from samtykke_gateway.exceptions import GatewayError
from samtykke_gateway.identifiers import org_from_iso6523

__all__ = ["ISO_INSTANT", "Claim", "ClaimKind", "claim_fields", "instant_seconds", "parse_instant", "read_claim"]

ClaimKind = Literal["text", "org", "instant"]

#: ISO 8601 instant with ``Z`` or an offset and 0–7 fraction digits (the forms Python 3.11's
#: ``datetime.fromisoformat`` reads alike).
ISO_INSTANT = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,7}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)


@dataclass(frozen=True, slots=True)
class Claim:
    """Marks a model field as read from the claim (or consent member) ``name``, of ``kind``.

    ``max_chars``: the longest ``"text"`` value accepted (longer is malformed).
    """

    name: str
    kind: ClaimKind = "text"
    max_chars: int = 512


def claim_fields(model: type) -> tuple[tuple[str, Claim], ...]:
    """``(field name, Claim)`` for each field of ``model`` annotated with a :class:`Claim`, in
    declaration order."""
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for field, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Claim):
                out.append((field, meta))
    return tuple(out)


def instant_seconds(value: str) -> float | None:
    """An ISO 8601 instant (:data:`ISO_INSTANT`, at most 40 characters) → epoch seconds, or
    ``None`` when it is not one."""
    if len(value) > 40 or ISO_INSTANT.fullmatch(value) is None:
        return None
    try:
        # the pattern admits only forms Python 3.11's parser reads alike ("Z", 1-7 fraction
        # digits, the 7th truncated), so the validated text is parsed as is
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_instant(value: Any, name: str, bad: Callable[[str], GatewayError]) -> float:
    """An ISO 8601 instant (:data:`ISO_INSTANT`) → epoch seconds.

    :param name: the claim's name, for the error. :raises GatewayError: ``bad(detail)`` when
        ``value`` is not a string of at most 40 characters, not of that form, or no valid date.
    """
    seconds = instant_seconds(value) if type(value) is str else None
    if seconds is not None:
        return seconds
    # which failure, for the error
    if type(value) is not str or len(value) > 40:
        raise bad(f"{name} is missing or not a string")
    if ISO_INSTANT.fullmatch(value) is None:
        raise bad(f"{name} is not an ISO 8601 instant with offset")
    raise bad(f"{name} is not a valid date")


def read_claim(source: Mapping[str, Any], claim: Claim, bad: Callable[[str], GatewayError]) -> Any:
    """The value of ``claim`` in ``source`` (a claims set or a consent entry, as decoded JSON),
    checked for its kind: ``str`` (text, org number), ``float`` (instant) or ``None`` (absent).

    :raises GatewayError: ``bad(detail)`` for a malformed value.
    """
    name = claim.name
    if claim.kind == "instant":
        return parse_instant(source[name], name, bad) if name in source else None
    value = source.get(name)
    if value is None:
        return None
    if claim.kind == "org":
        org = org_from_iso6523(value)
        if org is None:
            raise bad(f"{name} is not an organisation")
        return org
    if type(value) is not str or len(value) > claim.max_chars:
        raise bad(f"{name} is not a string")
    return value
