"""One consent model for both generations (SPEC §1, §3).

An Altinn 2 consent token and an Altinn 3 ``authorization_details`` entry both become a
:class:`Consent`; the Maskinporten access token that identifies the caller becomes a
:class:`MaskinportenToken`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..identifiers import Party

__all__ = ["Consent", "ConsentKind", "ConsentRight", "MaskinportenToken"]

ConsentKind = Literal["altinn2", "altinn3"]


@dataclass(frozen=True, slots=True)
class ConsentRight:
    """One consented resource with its metadata.

    ``resource``: Altinn 2 service ``"{serviceCode}_{editionCode}"`` or Altinn 3 resource id.
    ``metadata``: lower-cased key → tuple of values, as consented (Altinn does not validate
    values; the gateway parses them strictly where a route constrains them).
    """

    resource: str
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Consent:
    """A verified consent.

    ``valid_to`` / ``delegated``: epoch seconds (UTC). ``consumer``/``supplier``: 9-digit org
    numbers (``CoveredBy``/``HandledBy`` in Altinn 2, ``to`` in Altinn 3; Altinn 3 suppliers
    come from the Maskinporten token). ``issuer``/``key_id``: of the token that carried it.
    """

    kind: ConsentKind
    consent_id: str
    subject: Party
    consumer: str
    valid_to: float
    rights: tuple[ConsentRight, ...]
    issuer: str
    key_id: str | None
    supplier: str | None = None
    delegated: float | None = None

    def rights_for(self, resources: Iterable[str]) -> tuple[ConsentRight, ...]:
        """The rights whose resource is one of ``resources`` (order kept)."""
        wanted = set(resources)
        return tuple(r for r in self.rights if r.resource in wanted)


@dataclass(frozen=True, slots=True)
class MaskinportenToken:
    """A verified Maskinporten access token (Digdir ``maskinporten_protocol_token``).

    ``scopes``: the space-separated ``scope`` claim as a set. ``client_id`` is for the log
    only, never for authorisation. ``expires_at``: epoch seconds.
    """

    issuer: str
    key_id: str | None
    consumer: str
    scopes: frozenset[str]
    expires_at: float
    supplier: str | None = None
    delegation_source: str | None = None
    client_id: str | None = None
    jti: str | None = None
    consent: Consent | None = None
