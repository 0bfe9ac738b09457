"""One consent model for both generations (docs/protocol.md §1, §3).

An Altinn 2 consent token and an Altinn 3 ``authorization_details`` entry both become a
:class:`Consent`; the Maskinporten access token that identifies the caller becomes a
:class:`MaskinportenToken`.

The models are frozen :class:`msgspec.Struct` classes: immutable like frozen dataclasses, same
attributes, keyword or positional construction, equality and ``repr``, but built in C (about a
tenth of a frozen dataclass's ``__init__``, which is on every first-sight request) and not
tracked by the garbage collector (``gc=False``: they never form reference cycles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

import msgspec

from samtykke_gateway.identifiers import Party
from samtykke_gateway.tokens.claims import Claim

__all__ = ["Consent", "ConsentKind", "ConsentRight", "MaskinportenToken"]

ConsentKind = Literal["altinn2", "altinn3"]


class ConsentRight(msgspec.Struct, frozen=True, gc=False):
    """One consented resource with its metadata.

    ``resource``: Altinn 2 service ``"{serviceCode}_{editionCode}"`` or Altinn 3 resource id.
    ``metadata``: lower-cased key → tuple of values, as consented (Altinn does not validate
    values; the gateway parses them strictly where a route constrains them).
    ``actions``: Altinn 3 ``consentRights[].action``, lower-cased, sorted, each once
    (``("consent",)``, ``("read",)``, ``("read", "write")`` for a migrated consent); ``()`` for
    Altinn 2 (no actions) and for an Altinn 3 right that lists none — such a right covers
    nothing on a route (docs/protocol.md §3.3).
    """

    resource: str
    metadata: Mapping[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    actions: tuple[str, ...] = ()


class Consent(msgspec.Struct, frozen=True, gc=False):
    """A verified consent.

    ``valid_to`` / ``delegated``: epoch seconds (UTC). ``consumer``/``supplier``: 9-digit org
    numbers (``CoveredBy``/``HandledBy`` in Altinn 2, ``to`` in Altinn 3; Altinn 3 suppliers
    come from the Maskinporten token). ``issuer``/``key_id``: of the token that carried it.
    ``handled_by``: Altinn 3 ``handledBy`` (9-digit org number), the organisation that handles
    the consent for the recipient ``consumer``; ``None`` when absent (docs/protocol.md §3.3).

    A field annotated with a :class:`~samtykke_gateway.tokens.claims.Claim` is read from that
    member of the Altinn 3 consent entry by both Altinn 3 readers (strict and typed); a new
    optional member of a kind :mod:`~samtykke_gateway.tokens.claims` knows is one such field
    (with a default) and nothing else in ``tokens/``. Altinn 2 fills the fields from its own
    claims (:mod:`~samtykke_gateway.tokens.altinn2`; its ``HandledBy`` is the ``supplier``,
    ``handled_by`` stays ``None``).
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
    delegated: Annotated[float | None, Claim("consented", "instant")] = None
    handled_by: Annotated[str | None, Claim("handledBy", "org")] = None

    def rights_for(
        self, resources: Iterable[str], actions: Iterable[str] | None = None
    ) -> tuple[ConsentRight, ...]:
        """The rights whose resource is one of ``resources`` (order kept); with ``actions``
        (lower-cased), only those whose own actions include at least one of them."""
        wanted = set(resources)
        if actions is None:
            return tuple(r for r in self.rights if r.resource in wanted)
        accepted = set(actions)
        return tuple(
            r for r in self.rights if r.resource in wanted and not accepted.isdisjoint(r.actions)
        )


class MaskinportenToken(msgspec.Struct, frozen=True, gc=False):
    """A verified Maskinporten access token (Digdir ``maskinporten_protocol_token``).

    ``scopes``: the space-separated ``scope`` claim as a set. ``client_id`` is for the log
    only, never for authorisation. ``expires_at`` / ``issued_at`` (``iat``, ``None`` when
    absent): epoch seconds.

    A field annotated with a :class:`~samtykke_gateway.tokens.claims.Claim` is read from that
    claim by both Maskinporten readers (:mod:`~samtykke_gateway.tokens.maskinporten`, strict, and
    :mod:`~samtykke_gateway.tokens.typed`, the fast path); a new optional claim of a kind
    :mod:`~samtykke_gateway.tokens.claims` knows is one such field, with a default, added at
    the end (positional construction keeps working), and nothing else in ``tokens/``.
    """

    issuer: str
    key_id: str | None
    consumer: str
    scopes: frozenset[str]
    expires_at: float
    supplier: Annotated[str | None, Claim("supplier", "org")] = None
    delegation_source: Annotated[str | None, Claim("delegation_source")] = None
    client_id: Annotated[str | None, Claim("client_id")] = None
    jti: Annotated[str | None, Claim("jti")] = None
    consent: Consent | None = None
    issued_at: float | None = None
