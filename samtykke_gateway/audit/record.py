"""The disclosure record (docs/protocol.md §7): one per request, allowed or denied; a streamed (unscoped)
answer has a second one for its end (reason ``stream_end`` or ``stream_cut``, same correlation
id), because what leaves can only be counted after it left.

A record answers "who received what about me, when, on which consent" (GDPR Art. 15). It is
the only place where personal identifiers (``subject``) may be stored; it never holds a raw
bearer or consent token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NO_DATA_REASONS", "OMITTED_WHEN_NONE", "DisclosureRecord", "released_data"]

#: Reasons of an allowed request whose answer released no data from the source: not a
#: disclosure (``audit export`` lists them apart, reports do not count them).
NO_DATA_REASONS = frozenset({"no_data_released", "upstream_status"})

#: Fields added after logs were first written: left out of the stored record while ``None``,
#: so a record without them is stored (and hashed) exactly as before they existed, and a
#: stored record without them reads back with ``None``.
OMITTED_WHEN_NONE = ("handled_by", "rows_withheld")


@dataclass(slots=True, kw_only=True)
class DisclosureRecord:
    """One disclosure decision.

    Times are UTC ISO 8601 strings with ``Z`` (``2026-11-29T09:04:19.123456Z``).
    ``decision`` is ``"allow"`` or ``"deny"``; ``reason`` the stable reason code of
    :mod:`samtykke_gateway.exceptions` (``"ok"`` when allowed).
    ``token_kind`` is ``"altinn2"``, ``"altinn3"``, ``"altinn3-migrated"`` or ``None``.
    ``consumer``/``supplier``/``subject`` are bare digit strings (org number / person id).
    ``handled_by``: when an Altinn 3 token was issued to the consent's handler (route
    ``accept_handled_by``): the handler's org number (the caller), while ``consumer`` is the
    consent's recipient (``to``); ``None`` otherwise (docs/protocol.md §3.3, §7).
    ``metadata`` is the consent metadata that applied (JSON object of str → list[str]).
    ``requested_params``/``effective_params``: query parameters as received / as forwarded.
    ``released_paths``: field paths that left the gateway (rights-package path language).
    ``rows_withheld``: rows a rights package's row filters removed whole from the answer, per
    filter path (``{"oppgaveInntektsmottaker[].inntekt[]": 5}``); ``None`` when none was.
    ``released_bytes``/``released_sha256``: size and SHA-256 hex of the body released (on a
    streamed answer's decision record 0 / ``None``; its end record has the bytes handed to the
    server, and ``detail`` = the reason code of what cut it off, for ``stream_cut``).
    """

    time: str
    correlation_id: str
    decision: str
    reason: str
    status: int
    method: str
    path: str
    route: str | None = None
    token_kind: str | None = None
    consent_id: str | None = None
    jti: str | None = None
    issuer: str | None = None
    key_id: str | None = None
    consent_issuer: str | None = None
    consent_key_id: str | None = None
    subject: str | None = None
    consumer: str | None = None
    supplier: str | None = None
    handled_by: str | None = None
    client_id: str | None = None
    resource: str | None = None
    rights_package: str | None = None
    metadata: dict[str, list[str]] = field(default_factory=dict)
    requested_params: dict[str, list[str]] = field(default_factory=dict)
    effective_params: dict[str, list[str]] = field(default_factory=dict)
    upstream_status: int | None = None
    released_paths: list[str] = field(default_factory=list)
    rows_withheld: dict[str, int] | None = None
    released_bytes: int = 0
    released_sha256: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (stable key order = field order), without the
        :data:`OMITTED_WHEN_NONE` fields that are ``None``."""
        out = dataclasses.asdict(self)
        for name in OMITTED_WHEN_NONE:
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisclosureRecord:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def released_data(record: DisclosureRecord) -> bool:
    """Whether ``record`` says data from the source left (a disclosure): an ``allow`` whose
    reason is not in :data:`NO_DATA_REASONS` and, on a scoped route, with released bytes (a
    log written before ``no_data_released`` existed recorded a scoped ``HEAD`` as ``ok`` with
    0 bytes). A streamed answer's decision record counts (its end record has the bytes)."""
    if record.decision != "allow" or record.reason in NO_DATA_REASONS:
        return False
    return record.rights_package is None or record.released_bytes > 0
