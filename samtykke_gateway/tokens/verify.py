"""Signature and registered-claim verification of one JWS/JWT — docs/protocol.md §4 steps 1–4.

The order is fixed and fails closed at each step:

1. :func:`~samtykke_gateway.tokens.jose.parse_compact` (strict compact JWS, RFC 7515 §7.1);
2. ``alg`` exactly on the issuer's allow-list (asymmetric only: never ``none`` or ``HS*``,
   RFC 8725 §3.1); any ``crit`` refused — we understand no extension (RFC 7515 §4.1.11);
3. key from the issuer's :class:`~samtykke_gateway.tokens.keys.KeySet` by ``kid`` / ``x5t``; the key
   type must fit ``alg``. ``jku``/``x5u``/``jwk``/``x5c`` in the header are ignored;
4. signature (``cryptography``, padding/hash objects built once), then ``iss`` by exact string
   equality, then ``exp`` (required) / ``nbf`` / ``iat`` (optional) with leeway (RFC 7519 §4.1).

Verified tokens are cached per (issuer, token) and never served past ``exp + leeway``.
Failures raise :class:`~samtykke_gateway.exceptions.InvalidTokenError` with one of the reason
codes in :data:`REASONS`; details never contain the token or claim values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from cachetools import LRUCache
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from samtykke_gateway.exceptions import ConfigError, InvalidTokenError
from samtykke_gateway.tokens.jose import parse_compact_tuple, split_compact_fast
from samtykke_gateway.tokens.keys import KeySet
from samtykke_gateway.tokens.memo import VerifiedClaims, remember

__all__ = ["REASONS", "SUPPORTED_ALGORITHMS", "IssuerPolicy", "TokenVerifier", "VerifiedToken"]

#: Asymmetric JWS algorithms an issuer policy may allow (RFC 7518 §3.1).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
#: Every ``reason`` this module raises.
REASONS = (
    "malformed_token",
    "alg_not_allowed",
    "crit_not_supported",
    "unknown_key",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "token_expired",
    "token_not_yet_valid",
    "bad_time_claim",
)
#: 9999-12-31T23:59:59Z: the largest NumericDate accepted.
MAX_NUMERIC_DATE = 253402300799

_T = TypeVar("_T")
_SignatureCheck = Callable[[Any, bytes, bytes], bool]


def _rsa_check(pad: padding.AsymmetricPadding, digest: hashes.HashAlgorithm) -> _SignatureCheck:
    def check(key: Any, message: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, message, pad, digest)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


def _ecdsa_check(digest: hashes.HashAlgorithm, size: int) -> _SignatureCheck:
    scheme = ec.ECDSA(digest)

    def check(key: Any, message: bytes, signature: bytes) -> bool:
        # JWS carries raw r || s, each coordinate-sized (RFC 7518 §3.4); cryptography wants DER.
        if len(signature) != 2 * size:
            return False
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s), message, scheme)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


def _signature_checks() -> dict[str, _SignatureCheck]:
    """One ``check(key, signing_input, signature) -> bool`` per alg (RFC 7518 §3.3-§3.5).

    Padding and hash objects are built once here: PyJWT's algorithm objects rebuild them on
    every call, which cost more than the rest of the verification together. The key must be of
    the family ``alg`` names (:meth:`VerificationKey.allows` is checked first).
    """
    checks: dict[str, _SignatureCheck] = {}
    for bits, digest, ec_size in (
        ("256", hashes.SHA256(), 32),
        ("384", hashes.SHA384(), 48),
        ("512", hashes.SHA512(), 66),
    ):
        checks[f"RS{bits}"] = _rsa_check(padding.PKCS1v15(), digest)
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        checks[f"PS{bits}"] = _rsa_check(pss, digest)
        checks[f"ES{bits}"] = _ecdsa_check(digest, ec_size)
    return checks


_SIGNATURE_CHECKS = _signature_checks()


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """What a token from one issuer must satisfy.

    :ivar name: config key, ``"altinn"`` or ``"maskinporten"``.
    :ivar issuer: exact expected ``iss`` (``"altinn.no"``, ``"https://maskinporten.no/"``).
    :ivar algorithms: allow-list, e.g. ``("RS256",)``; subset of :data:`SUPPORTED_ALGORITHMS`.
    :ivar keys: the issuer's key set.
    :ivar leeway_seconds: clock skew tolerated on ``exp``/``nbf``/``iat`` (docs/protocol.md §4 step 4).
    :ivar audiences: when not empty, the token's ``aud`` (a string, or an array of strings;
        RFC 7519 §4.1.3) must name one of them, else ``wrong_audience`` (401). Maskinporten
        sets ``aud`` only when the client asked for an audience (docs/protocol.md §3.2); a data source that
        requires audience-restricted tokens configures ``[issuers.maskinporten] audience``.
    :raises ConfigError: empty or unsupported algorithm list, negative/non-finite leeway.
    """

    name: str
    issuer: str
    algorithms: tuple[str, ...]
    keys: KeySet
    leeway_seconds: float = 30
    audiences: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.algorithms) is not tuple or not self.algorithms:
            raise ConfigError(f"issuers.{self.name}.algorithms", "must be a non-empty tuple")
        for alg in self.algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigError(
                    f"issuers.{self.name}.algorithms",
                    f"{alg!r} is not an allowed asymmetric JWS algorithm",
                )
        if not self.issuer:
            raise ConfigError(f"issuers.{self.name}.issuer", "must not be empty")
        if not (math.isfinite(self.leeway_seconds) and 0 <= self.leeway_seconds <= 300):
            raise ConfigError(f"issuers.{self.name}.leeway_seconds", "must be within 0..300")


class VerifiedToken(msgspec.Struct, frozen=True, gc=False):
    """A token whose signature, issuer and validity window were checked.

    Shared between cache hits: treat ``header`` and ``claims`` as read-only. With the cache on,
    ``claims`` is a :class:`~samtykke_gateway.tokens.memo.VerifiedClaims` (a ``dict``) that the
    claim parsers remember their result on. A frozen :class:`msgspec.Struct`: built in C.

    :ivar header: JOSE header.
    :ivar claims: JWT claims set.
    :ivar issuer: the policy's ``name`` the token was verified under.
    :ivar key_id: ``kid`` (or ``x5t``) of the key that verified it, for the audit record.
    :ivar expires_at: ``exp`` in epoch seconds.
    """

    header: dict[str, Any]
    claims: dict[str, Any]
    issuer: str
    key_id: str | None
    expires_at: float


_Cache = LRUCache[tuple[str, str, str], tuple[VerifiedToken, IssuerPolicy, float]]


def _invalid(reason: str, detail: str) -> InvalidTokenError:
    return InvalidTokenError(detail, reason=reason)


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """RFC 7519 §2 NumericDate: int or finite float in [0, 9999-12-31]; bools refused.

    :returns: the value, or ``None`` when the claim is absent.
    """
    if name not in claims:
        return None
    value = claims[name]
    kind = type(value)
    if kind is not int and kind is not float:
        raise _invalid("bad_time_claim", f"The token {name} claim is not a number.")
    if not (0 <= value <= MAX_NUMERIC_DATE):  # NaN fails every comparison
        raise _invalid("bad_time_claim", f"The token {name} claim is out of range.")
    return float(value)


class TokenVerifier:
    """Verifies tokens against an :class:`IssuerPolicy`; caches successes.

    :param cache_size: most verified tokens remembered (LRU); ``0`` disables the cache.
    :param clock: epoch seconds (``time.time``); injected by tests.
    """

    def __init__(self, *, cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if cache_size < 0:
            raise ConfigError("token_cache_size", "must not be negative")
        self._clock = clock
        self._cache: _Cache | None = LRUCache(maxsize=cache_size) if cache_size else None

    async def verify(self, token: str, issuer: IssuerPolicy) -> VerifiedToken:
        """Verify ``token`` for ``issuer`` (docs/protocol.md §4 steps 1–4).

        :param token: compact JWS as received (ASCII string, at most 16 KiB).
        :param issuer: the policy to verify under; a token is never accepted under another
            issuer's policy, cached or not.
        :returns: :class:`VerifiedToken`.
        :raises InvalidTokenError: see :data:`REASONS` for the ``reason`` codes.
        :raises KeysUnavailableError: the issuer's keys could not be loaded at all.
        """
        cache = self._cache if type(token) is str else None
        if cache is not None:
            cache_key = (issuer.name, issuer.issuer, token)
            hit = cache.get(cache_key)
            if hit is not None:
                verified, policy, deadline = hit
                if policy is issuer and self._clock() < deadline:
                    return verified
                del cache[cache_key]

        header, claims, signing_input, signature = parse_compact_tuple(token)
        alg = _checked_alg(header, issuer)
        key = await issuer.keys.get(kid=header.get("kid"), x5t=header.get("x5t"))
        if not key.allows(alg):
            raise _invalid("alg_not_allowed", "The token alg does not fit the key type.")
        if not _SIGNATURE_CHECKS[alg](key.key, signing_input, signature):
            raise _invalid("bad_signature", "The token signature does not verify.")
        exp = self._checked_claims(claims, issuer)
        if cache is None:
            return VerifiedToken(header, claims, issuer.name, key.kid or key.x5t, exp)
        verified = VerifiedToken(
            header, VerifiedClaims(claims), issuer.name, key.kid or key.x5t, exp
        )
        cache[(issuer.name, issuer.issuer, token)] = (
            verified,
            issuer,
            exp + issuer.leeway_seconds,
        )
        return verified

    def verify_typed(
        self,
        token: str,
        issuer: IssuerPolicy,
        decode: Callable[[bytes], Any],
        build: Callable[..., _T | None],
        memo: str,
    ) -> _T | None:
        """:meth:`verify` and a claims parser in one synchronous pass, for the usual token of a
        known shape: the parser's result, or ``None`` whenever the strict path must decide.

        ``decode(payload)`` reads the payload into a typed claims object with ``iss``, ``exp``,
        ``nbf``, ``iat`` and ``aud`` attributes, or returns ``None`` when it cannot prove the
        strict reader would read it alike (:mod:`~samtykke_gateway.tokens.typed`);
        ``build(claims, issuer=, key_id=, expires_at=)`` is the claims parser named ``memo``
        (its result is remembered on the cached claims under the options
        ``(issuer, key_id, expires_at)``), ``None`` where the strict parser could differ.

        Every check of :meth:`verify` is made, the signature last: with a cheap check failing
        (or a token already in the cache, a key not at hand, a header seen for the first time)
        this returns ``None`` before any signature work, and the caller's strict path
        (:meth:`verify`, then the strict parser) runs once and decides. When all of them pass
        and only the signature fails, :meth:`verify` would fail at the signature too, with the
        same error, which is raised here.

        :raises InvalidTokenError: ``bad_signature``, exactly as :meth:`verify` would.
        """
        if type(token) is not str:
            return None
        cache = self._cache
        if cache is not None and (issuer.name, issuer.issuer, token) in cache:
            return None  # the strict path serves (or expires) the cached entry
        parts = split_compact_fast(token)
        if parts is None:
            return None
        header, payload, signing_input, signature = parts
        alg = header.get("alg")
        if type(alg) is not str or alg not in issuer.algorithms or "crit" in header:
            return None
        key = issuer.keys.peek(header.get("kid"), header.get("x5t"))
        if key is None or not key.allows(alg):
            return None
        claims = decode(payload)
        if claims is None:
            return None
        # _checked_claims on the typed claims (int NumericDates only: the types say so).
        if claims.iss != issuer.issuer:
            return None
        if issuer.audiences and not _audience_matches(claims.aud, issuer.audiences):
            return None
        exp, nbf, iat = claims.exp, claims.nbf, claims.iat
        if not 0 <= exp <= MAX_NUMERIC_DATE:
            return None
        if nbf is not None and not 0 <= nbf <= MAX_NUMERIC_DATE:
            return None
        if iat is not None and not 0 <= iat <= MAX_NUMERIC_DATE:
            return None
        now = self._clock()
        leeway = issuer.leeway_seconds
        if (
            exp <= now - leeway
            or (nbf is not None and nbf > now + leeway)
            or (iat is not None and iat > now + leeway)
        ):
            return None
        expires_at = float(exp)
        key_id = key.kid or key.x5t
        result = build(claims, issuer=issuer.name, key_id=key_id, expires_at=expires_at)
        if result is None:
            return None
        if not _SIGNATURE_CHECKS[alg](key.key, signing_input, signature):
            raise _invalid("bad_signature", "The token signature does not verify.")
        if cache is not None:
            verified_claims = VerifiedClaims(msgspec.to_builtins(claims))
            remember(verified_claims, memo, (issuer.name, key_id, expires_at), result)
            verified = VerifiedToken(
                dict(header), verified_claims, issuer.name, key_id, expires_at
            )
            cache[(issuer.name, issuer.issuer, token)] = (
                verified,
                issuer,
                expires_at + issuer.leeway_seconds,
            )
        return result

    def _checked_claims(self, claims: dict[str, Any], issuer: IssuerPolicy) -> float:
        """``iss`` exact, then ``exp`` (required) / ``nbf`` / ``iat`` with leeway; returns exp."""
        iss = claims.get("iss")
        if type(iss) is not str or iss != issuer.issuer:
            raise _invalid("wrong_issuer", f"The token was not issued by the {issuer.name} issuer.")
        if issuer.audiences and not _audience_matches(claims.get("aud"), issuer.audiences):
            raise _invalid("wrong_audience", "The token's aud does not name this data source.")
        # Integer NumericDates in range (what issuers write) inline; _numeric_date decides the rest.
        exp: Any = claims.get("exp")
        if type(exp) is int and 0 <= exp <= MAX_NUMERIC_DATE:
            exp = float(exp)
        else:
            exp = _numeric_date(claims, "exp")
            if exp is None:
                raise _invalid("bad_time_claim", "The token has no exp claim.")
        nbf: Any = claims.get("nbf")
        if type(nbf) is not int or not 0 <= nbf <= MAX_NUMERIC_DATE:
            nbf = _numeric_date(claims, "nbf") if "nbf" in claims else None
        iat: Any = claims.get("iat")
        if type(iat) is not int or not 0 <= iat <= MAX_NUMERIC_DATE:
            iat = _numeric_date(claims, "iat") if "iat" in claims else None
        now = self._clock()
        leeway = issuer.leeway_seconds
        if exp <= now - leeway:
            raise _invalid("token_expired", "The token has expired.")
        if nbf is not None and nbf > now + leeway:
            raise _invalid("token_not_yet_valid", "The token is not valid yet (nbf).")
        if iat is not None and iat > now + leeway:
            raise _invalid("token_not_yet_valid", "The token was issued in the future (iat).")
        expires_at: float = exp
        return expires_at


_MAX_AUDIENCES = 32


def _audience_matches(aud: Any, audiences: tuple[str, ...]) -> bool:
    """RFC 7519 §4.1.3: ``aud`` is one string or an array of strings; exact string comparison.
    Any other shape (absent, ``null``, number, nested array, over 32 entries) does not match."""
    if type(aud) is str:
        return aud in audiences
    if type(aud) is list and 0 < len(aud) <= _MAX_AUDIENCES:
        return all(type(a) is str for a in aud) and any(a in audiences for a in aud)
    return False


def _checked_alg(header: dict[str, Any], issuer: IssuerPolicy) -> str:
    """``alg`` exactly on the allow-list (RFC 8725 §3.1); no ``crit`` (RFC 7515 §4.1.11)."""
    alg = header.get("alg")
    if type(alg) is not str or alg not in issuer.algorithms:
        raise _invalid(
            "alg_not_allowed",
            f"The token alg is not on the allow-list of the {issuer.name} issuer.",
        )
    if "crit" in header:  # we understand no extension, so any crit is unknown
        raise _invalid("crit_not_supported", "The token names critical header extensions.")
    return alg
