"""Claims → model results remembered on the verified claims *object* (the seen-before path).

:class:`~samtykke_gateway.tokens.verify.TokenVerifier` hands out the same
:class:`~samtykke_gateway.tokens.verify.VerifiedToken` — and so the same ``claims`` object — for
the same token bytes while the token is valid (its cache never outlives ``exp``). Parsing those
claims into a :class:`~samtykke_gateway.tokens.model.Consent` /
:class:`~samtykke_gateway.tokens.model.MaskinportenToken` again would cost more than the cache
hit itself, so the parsers keep their result *on* that object: a :class:`VerifiedClaims` (a
``dict`` subclass with one slot), made by the verifier only when its cache is on.

The result lives exactly as long as the cached claims, so nothing is held for tokens the cache
has dropped, and nothing at all when the cache is disabled (a plain ``dict`` is never
remembered on). A new verification makes a new object and so a new parse. Time checks on the
model (``valid_to``, ``expires_at``) are made by the caller per request and are not affected.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

__all__ = ["VerifiedClaims", "remember", "remembered"]

_T = TypeVar("_T")


class VerifiedClaims(dict[str, Any]):
    """A verified JWT claims set (a ``dict``) with room for one parsed result.

    Treat as read-only, like every verified claims set.
    """

    __slots__ = ("_parsed",)
    _parsed: tuple[str, Hashable, Any]  # (parser, options, result); unset until parsed


def remembered(claims: dict[str, Any], parser: str, options: Hashable) -> Any:
    """The result ``parser`` remembered on this very ``claims`` object for equal ``options``,
    else ``None`` (always for a plain ``dict``)."""
    if type(claims) is VerifiedClaims:
        entry = getattr(claims, "_parsed", None)
        if entry is not None and entry[0] == parser and entry[1] == options:
            return entry[2]
    return None


def remember(claims: dict[str, Any], parser: str, options: Hashable, result: _T) -> _T:
    """Keep ``result`` on ``claims`` when it is a :class:`VerifiedClaims`; returns ``result``."""
    if type(claims) is VerifiedClaims:
        claims._parsed = (parser, options, result)
    return result
