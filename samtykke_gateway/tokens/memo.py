"""Claims → model results remembered per verified claims *object* (the seen-before fast path).

:class:`~samtykke_gateway.tokens.verify.TokenVerifier` hands out the same
:class:`~samtykke_gateway.tokens.verify.VerifiedToken` — and so the same ``claims`` dict — for
the same token bytes while the token is valid (its cache never outlives ``exp``). Parsing
those claims into a :class:`~samtykke_gateway.tokens.model.Consent` /
:class:`~samtykke_gateway.tokens.model.MaskinportenToken` again would cost more than the cache
hit itself, so the parsers remember their result for that dict object.

Keyed by ``id(claims)``, and each entry holds a strong reference to its dict, checked with
``is``: an id cannot be reused while its entry exists, so a hit is the very object that was
parsed. A new verification (cache miss, cache disabled) makes a new dict and so a miss. Time
checks on the model (``valid_to``, ``expires_at``) are made by the caller per request and are
not affected. Bounded by clearing when full (an attacker can only cost us the saving).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

__all__ = ["ClaimsMemo"]

_T = TypeVar("_T")


class ClaimsMemo(Generic[_T]):
    """Results of one pure ``claims, **options -> model`` parser, per claims object.

    :param max_entries: entries kept before the memo is cleared.
    """

    def __init__(self, *, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._entries: dict[int, tuple[dict[str, Any], Hashable, _T]] = {}

    def get(self, claims: dict[str, Any], options: Hashable) -> _T | None:
        """The result remembered for this very ``claims`` object and equal ``options``."""
        entry = self._entries.get(id(claims))
        if entry is not None and entry[0] is claims and entry[1] == options:
            return entry[2]
        return None

    def put(self, claims: dict[str, Any], options: Hashable, result: _T) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[id(claims)] = (claims, options, result)
