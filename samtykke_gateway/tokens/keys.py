"""One issuer's signing keys: an async, cached JWK Set (RFC 7517 §5) — docs/protocol.md §3.1, §3.2, §4 step 3.

:class:`KeySet` fetches the issuer's JWKS over HTTP with an injected :class:`httpx.AsyncClient`
(never blocking the event loop), optionally discovering it first from RFC 8414 authorization
server metadata (``jwks_uri``). Behaviour:

* lifetime from ``Cache-Control: max-age`` (RFC 9111 §5.2.2.1), clamped to
  ``[min_ttl_seconds, max_ttl_seconds]``; ``default_ttl_seconds`` when absent;
* refreshed in the background ahead of expiry; requests keep using the cached keys while a
  refresh runs or fails (stale-while-revalidate), for at most ``max_stale_seconds`` past the
  lifetime; with no usable key :meth:`KeySet.get` raises
  :class:`~samtykke_gateway.exceptions.KeysUnavailableError` (fail closed, 503);
* an unknown ``kid`` triggers at most one refetch per ``refetch_cooldown_seconds``, counted
  from the last such refetch or failed fetch only (a first load or a scheduled refresh does
  not start it: a key published just after one is found at once, ``docs/protocol.md §4``
  step 3); concurrent callers share one in-flight fetch;
* a failed fetch is logged with the URL (no userinfo, query or fragment) and its cause; the
  exception a client's answer is built from names neither;
* the document is bounded in bytes (``max_document_bytes``) and keys (``max_keys``); keys with
  ``use`` other than ``sig``, symmetric keys, private keys and unparsable keys are skipped; a
  ``kid`` (or thumbprint) published twice is ambiguous and never matches;
* lookup by ``kid``, then ``x5t``, then the SHA-1 thumbprint of each published ``x5c[0]``
  certificate (Altinn 2 uses the thumbprint as ``kid``). Certificates are not chain-validated:
  trust comes from the HTTPS endpoint (docs/protocol.md §3.1).

Nothing named in a token header (``jku``, ``x5u``, ``jwk``, ``x5c``) is ever fetched or used.
httpx, JSON and key-parsing exceptions are translated here; none leaves this module.
"""

from __future__ import annotations

import contextlib
import logging

import asyncio
import base64
import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK

from samtykke_gateway.exceptions import ConfigError, InvalidTokenError, KeysUnavailableError
from samtykke_gateway.tokens.jose import strict_json_object

__all__ = ["KeySet", "VerificationKey", "loggable_url", "x5t_of_der"]

log = logging.getLogger("samtykke_gateway.keys")

#: Longest ``kid`` / ``x5t`` accepted from a token header or a JWKS.
MAX_KEY_ID_LENGTH = 256
#: Smallest RSA modulus accepted from a JWKS.
MIN_RSA_BITS = 2048

_CURVES_BY_CRV = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_CURVE_BY_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_MAX_AGE = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?(\d{1,12})"?\s*(?:,|$)', re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$|=)", re.IGNORECASE)


def x5t_of_der(der: bytes) -> str:
    """``x5t`` of a DER certificate: base64url (unpadded) SHA-1 digest (RFC 7515 §4.1.7)."""
    digest = hashlib.sha1(der, usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public signature key from a JWKS.

    :ivar kid: published ``kid`` (``None`` when absent).
    :ivar x5t: published ``x5t``, or the thumbprint computed from ``x5c[0]``.
    :ivar kty: ``"RSA"`` or ``"EC"`` (RFC 7518 §6.1).
    :ivar key: a ``cryptography`` public key (``RSAPublicKey`` / ``EllipticCurvePublicKey``).
    :ivar alg: published ``alg`` (RFC 7517 §4.4); when set, the key is used for that alg only.
    """

    kid: str | None
    x5t: str | None
    kty: str
    key: Any
    alg: str | None = None
    _algs: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Decided once per key: allows() is on the per-request path.
        object.__setattr__(self, "_algs", _allowed_algorithms(self.kty, self.key, self.alg))

    def allows(self, alg: str) -> bool:
        """True when this key may verify a signature made with JWS ``alg`` (RFC 7518 §3.1).

        RS*/PS* need an RSA key, ES256/384/512 an EC key on P-256/P-384/P-521 respectively;
        a published ``alg`` must equal ``alg``.
        """
        return alg in self._algs


def _allowed_algorithms(kty: str, key: Any, alg: str | None) -> frozenset[str]:
    if kty == "RSA" and isinstance(key, rsa.RSAPublicKey):
        algs = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    elif kty == "EC" and isinstance(key, ec.EllipticCurvePublicKey):
        algs = {a for a, curve in _CURVE_BY_ALG.items() if curve == key.curve.name}
    else:
        algs = set()
    if alg is not None:
        algs &= {alg}
    return frozenset(algs)


@dataclass(frozen=True, slots=True)
class _Index:
    """Lookup tables of one loaded JWKS; ``None`` values mark ambiguous (duplicate) ids."""

    by_kid: dict[str, VerificationKey | None]
    by_x5t: dict[str, VerificationKey | None]
    count: int


class _DocumentError(Exception):
    """Internal: a fetched document is unusable. Message is a short English phrase; ``cause``
    its class for the log (``http_status``, ``too_large``, ``bad_document``)."""

    def __init__(self, message: str, *, cause: str = "bad_document") -> None:
        super().__init__(message)
        self.cause = cause


def _check_key_id(value: object, name: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > MAX_KEY_ID_LENGTH:
        raise InvalidTokenError(
            f"The token header {name} must be a non-empty string of at most "
            f"{MAX_KEY_ID_LENGTH} characters.",
            reason="malformed_token",
        )
    return value


def _ttl_from(cache_control: str | None, default: float, low: float, high: float) -> float:
    ttl = default
    if cache_control:
        if _NO_CACHE.search(cache_control):
            ttl = low
        else:
            match = _MAX_AGE.search(cache_control)
            if match:
                ttl = float(match.group(1))
    return min(max(ttl, low), high)


def _same_public_key(a: Any, b: Any) -> bool:
    if isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey):
        return a.public_numbers() == b.public_numbers()
    if isinstance(a, ec.EllipticCurvePublicKey) and isinstance(b, ec.EllipticCurvePublicKey):
        return a.public_numbers() == b.public_numbers()
    return False


def _parse_jwk(jwk: object) -> VerificationKey | None:
    """One JWKS entry → :class:`VerificationKey`, or ``None`` when it must be skipped."""
    if type(jwk) is not dict:
        return None
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        return None  # "oct" (symmetric) and unknown types are never signature keys here
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (type(key_ops) is not list or "verify" not in key_ops):
        return None
    if "d" in jwk or "p" in jwk or "k" in jwk:
        return None  # private material published: refuse rather than guess
    kid = jwk.get("kid")
    x5t = jwk.get("x5t")
    alg = jwk.get("alg")
    for value in (kid, x5t, alg):
        if value is not None and (
            type(value) is not str or not value or len(value) > MAX_KEY_ID_LENGTH
        ):
            return None

    cert_key: Any = None
    x5c = jwk.get("x5c")
    if x5c is not None:
        if type(x5c) is not list or not x5c or type(x5c[0]) is not str:
            return None
        # x5c is standard base64 with padding (RFC 7517 §4.7), not base64url.
        der = base64.b64decode(x5c[0], validate=True)
        thumbprint = x5t_of_der(der)
        if x5t is not None and x5t != thumbprint:
            return None  # inconsistent entry
        x5t = thumbprint
        cert_key = x509.load_der_x509_certificate(der).public_key()

    has_material = ("n" in jwk and "e" in jwk) if kty == "RSA" else ("x" in jwk)
    if has_material:
        key: Any = PyJWK(dict(jwk), algorithm=alg).key
        if cert_key is not None and not _same_public_key(key, cert_key):
            return None
    elif cert_key is not None:
        key = cert_key
    else:
        return None

    if kty == "RSA":
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            return None
    elif not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        _CURVES_BY_CRV.values()
    ):
        return None
    return VerificationKey(kid=kid, x5t=x5t, kty=kty, key=key, alg=alg)


def _build_index(document: dict[str, Any], max_keys: int) -> tuple[_Index, int]:
    """JWKS document → index and number of skipped entries.

    :raises _DocumentError: no ``keys`` array, too many keys, or no usable key at all.
    """
    entries = document.get("keys")
    if type(entries) is not list:
        raise _DocumentError("JWKS has no 'keys' array")
    if len(entries) > max_keys:
        raise _DocumentError(f"JWKS has more than {max_keys} keys")
    by_kid: dict[str, VerificationKey | None] = {}
    by_x5t: dict[str, VerificationKey | None] = {}
    skipped = 0
    count = 0
    for entry in entries:
        try:
            parsed = _parse_jwk(entry)
        except Exception:  # noqa: BLE001 - untrusted input in third-party parsers: skip one key
            parsed = None
        if parsed is None:
            skipped += 1
            continue
        count += 1
        for table, ident in ((by_kid, parsed.kid), (by_x5t, parsed.x5t)):
            if ident is None:
                continue
            table[ident] = None if ident in table else parsed
    if count == 0:
        raise _DocumentError("JWKS contains no usable signature key")
    return _Index(by_kid=by_kid, by_x5t=by_x5t, count=count), skipped


class KeySet:
    """The cached JWK Set of one issuer (RFC 7517 §5; discovery per RFC 8414 §3).

    Exactly one of ``jwks_url`` and ``metadata_url`` must be given.

    Timeline of one loaded document with lifetime ``ttl`` (``docs/protocol.md §4`` step 3):
    fresh for ``ttl``; from ``REFRESH_AHEAD_FRACTION`` of it on, the first request starts a
    refresh in the background and keeps using the cached keys (a request never waits on a
    scheduled refresh); after ``ttl`` the keys are stale but still used for at most
    ``max_stale_seconds`` while refreshes fail (stale-while-revalidate); beyond that, the keys
    are not used at all and a request fails closed with :class:`KeysUnavailableError` (503)
    unless a fetch it waits for succeeds.

    :param name: issuer name used in messages (``"altinn"``, ``"maskinporten"``).
    :param http: client used for fetches; owned (and closed) by the caller.
    :param jwks_url: absolute URL of the JWKS document.
    :param metadata_url: absolute URL of ``/.well-known/oauth-authorization-server``; its
        ``jwks_uri`` is used (rediscovered after a failed fetch).
    :param min_ttl_seconds: lower clamp of the cache lifetime.
    :param max_ttl_seconds: upper clamp (Altinn: up to 86 400 s, docs/protocol.md §3.1).
    :param default_ttl_seconds: lifetime when the response has no usable ``max-age``.
    :param refetch_cooldown_seconds: minimum time between two fetches caused by an unknown key,
        counted from the last such fetch or the end of the last failed fetch — never from the
        first load or a scheduled refresh (``docs/protocol.md §4`` step 3). Also the pause
        before a failed fetch is retried.
    :param fetch_timeout_seconds: total deadline of one refresh (discovery + JWKS).
    :param max_stale_seconds: how long after its lifetime ended a document is still used while
        refreshing it fails; ``0``: never past its lifetime.
    :param max_document_bytes: largest metadata/JWKS body accepted.
    :param max_keys: largest number of JWKS entries accepted.
    :param clock: monotonic seconds; injected by tests.
    :raises ConfigError: neither or both URLs given, or a non-positive bound.
    """

    #: Share of a document's lifetime after which a request starts a background refresh.
    REFRESH_AHEAD_FRACTION = 0.8

    def __init__(
        self,
        *,
        name: str,
        http: httpx.AsyncClient,
        jwks_url: str | None = None,
        metadata_url: str | None = None,
        min_ttl_seconds: float = 60,
        max_ttl_seconds: float = 86400,
        default_ttl_seconds: float = 3600,
        refetch_cooldown_seconds: float = 30,
        fetch_timeout_seconds: float = 5,
        max_stale_seconds: float = 86400,
        max_document_bytes: int = 256 * 1024,
        max_keys: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_url is None) == (metadata_url is None):
            raise ConfigError(f"issuers.{name}", "give exactly one of jwks_url and metadata_url")
        if not 0 <= min_ttl_seconds <= max_ttl_seconds:
            raise ConfigError(f"issuers.{name}", "need 0 <= min_ttl_seconds <= max_ttl_seconds")
        if not (fetch_timeout_seconds > 0 and max_document_bytes > 0 and max_keys > 0):
            raise ConfigError(f"issuers.{name}", "timeouts and bounds must be positive")
        if not refetch_cooldown_seconds >= 0:
            raise ConfigError(f"issuers.{name}", "refetch_cooldown_seconds must be >= 0")
        if not (math.isfinite(max_stale_seconds) and max_stale_seconds >= 0):
            raise ConfigError(f"issuers.{name}", "max_stale_seconds must be a finite number >= 0")
        self.name = name
        self._http = http
        self._jwks_url = jwks_url
        self._metadata_url = metadata_url
        self._discovered_jwks_url: str | None = None
        self._min_ttl = min_ttl_seconds
        self._max_ttl = max_ttl_seconds
        self._default_ttl = default_ttl_seconds
        self._cooldown = refetch_cooldown_seconds
        self._timeout = fetch_timeout_seconds
        self._max_stale = max_stale_seconds
        self._max_bytes = max_document_bytes
        self._max_keys = max_keys
        self._clock = clock
        self._index: _Index | None = None
        self._refresh_at = -math.inf  # from here on, a request starts a background refresh
        self._expires_at = -math.inf  # end of the document's lifetime (then stale)
        #: start of the last fetch caused by an unknown key, or end of the last failed fetch
        self._cooldown_from = -math.inf
        self._last_error: str | None = None
        self._fetching_url: str | None = None
        self._inflight: asyncio.Task[str | None] | None = None
        self._closed = False
        #: Number of fetch attempts started (for metrics and tests).
        self.fetch_count = 0
        #: Fetch attempts that failed (exported as ``samtykke_jwks_fetch_failures_total``).
        self.failure_count = 0
        #: JWKS entries skipped in the last loaded document (wrong ``use``, symmetric,
        #: private, too small, unparsable, inconsistent ``x5t``/``x5c``).
        self.skipped_keys = 0

    # -- public -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Keys are loaded and usable: fresh, or stale for at most ``max_stale_seconds``."""
        return self._index is not None and self._clock() < self._usable_until

    @property
    def last_error(self) -> str | None:
        """Why the most recent fetch failed (short phrase), ``None`` after a success."""
        return self._last_error

    @property
    def source(self) -> str:
        """The configured JWKS or metadata URL as logged: no userinfo, query or fragment."""
        return loggable_url(self._jwks_url or self._metadata_url or "")

    @property
    def expires_at(self) -> float:
        """Clock time (``clock``) at which the loaded document's lifetime ends; ``-inf`` when
        nothing is loaded."""
        return self._expires_at

    def carry_over(self, previous: KeySet) -> bool:
        """Take over ``previous``'s cached keys, lifetimes, cooldown and counters when both read
        the same JWKS / metadata URL (a config reload: the keys published there are the same
        keys, so a reload during an outage of that endpoint keeps working). An in-flight fetch
        of ``previous`` is not taken over; this key set fetches for itself when due.

        :returns: ``True`` when taken over, ``False`` when the URLs differ (nothing changes).
        """
        if (previous._jwks_url, previous._metadata_url) != (self._jwks_url, self._metadata_url):
            return False
        self._index = previous._index
        self.skipped_keys = previous.skipped_keys
        self._discovered_jwks_url = previous._discovered_jwks_url
        self._refresh_at = previous._refresh_at
        self._expires_at = previous._expires_at
        self._cooldown_from = previous._cooldown_from
        self._last_error = previous._last_error
        self.fetch_count = previous.fetch_count  # counters stay monotonic for Prometheus
        self.failure_count = previous.failure_count
        return True

    async def get(self, *, kid: str | None, x5t: str | None) -> VerificationKey:
        """The key a token header names: by ``kid``, then ``x5t``, then ``x5c`` thumbprint.

        Usable cached keys are answered at once (a due refresh runs in the background). An
        unknown key joins the fetch in flight, or starts one when the refetch cooldown allows;
        either wait is bounded by ``fetch_timeout_seconds``.

        :param kid: the header's ``kid`` (untrusted; type and length are checked here).
        :param x5t: the header's ``x5t`` (untrusted).
        :raises InvalidTokenError: ``malformed_token`` for a non-string or over-long id;
            ``unknown_key`` when no unambiguous key matches after at most one refetch per
            cooldown.
        :raises KeysUnavailableError: no usable key (none loaded, or stale beyond
            ``max_stale_seconds``) and fetching failed.
        """
        kid = _check_key_id(kid, "kid")
        x5t = _check_key_id(x5t, "x5t")
        if kid is None and x5t is None:
            raise InvalidTokenError(
                "The token header names no key (kid or x5t).", reason="unknown_key"
            )
        now = self._clock()
        if self._index is None or now >= self._usable_until:
            await self._load(now)
        elif now >= self._refresh_at:
            self._refresh_in_background(now)
        found = self._lookup(kid, x5t)
        if found is not None:
            return found
        if self._inflight is not None:
            await self._join()
        elif self._clock() - self._cooldown_from >= self._cooldown:
            self._cooldown_from = self._clock()  # only this cause (and failures) starts it
            await self._join(self._start_fetch())
        else:
            raise self._unknown()
        found = self._lookup(kid, x5t)
        if found is not None:
            return found
        raise self._unknown()

    def peek(self, kid: object, x5t: object) -> VerificationKey | None:
        """The key :meth:`get` would return at once, without awaiting: the ids are well-formed
        strings (or absent), the loaded key set is not yet due for a refresh and names one key
        for them. ``None`` in every other case (no key, refresh due, malformed or unknown id),
        where :meth:`get` decides (and may refresh, refetch or raise). No side effects.
        """
        if kid is not None and (type(kid) is not str or not kid or len(kid) > MAX_KEY_ID_LENGTH):
            return None
        if x5t is not None and (type(x5t) is not str or not x5t or len(x5t) > MAX_KEY_ID_LENGTH):
            return None
        if (kid is None and x5t is None) or self._index is None:
            return None
        if self._clock() >= self._refresh_at:
            return None
        return self._lookup(kid, x5t)  # type: ignore[arg-type]

    async def ensure_loaded(self) -> bool:
        """As a request would: load when no usable key is cached (a failed fetch is retried
        only after ``refetch_cooldown_seconds``), else start a due refresh in the background.
        For start-up, reloads and readiness probes, so a replica whose issuer was unreachable
        at start-up becomes ready without waiting for a request (which a not-ready replica
        does not get).

        :returns: :attr:`ready` afterwards; never raises for an unreachable issuer.
        """
        now = self._clock()
        if self._index is None or now >= self._usable_until:
            with contextlib.suppress(KeysUnavailableError):  # ready stays False; the probe says so
                await self._load(now)
        elif now >= self._refresh_at:
            self._refresh_in_background(now)
        return self.ready

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the JWKS when the cached copy expired (or always with ``force``), and wait.

        Concurrent callers share one fetch. On failure the previous keys stay in use (within
        ``max_stale_seconds``).

        :raises KeysUnavailableError: this fetch failed (``last_error`` says why).
        """
        if not force and self._index is not None and self._clock() < self._expires_at:
            return
        error = await self._join(self._inflight or self._start_fetch())
        if error is not None:
            raise KeysUnavailableError(f"Keys for {self.name} could not be fetched: {error}.")

    async def wait_idle(self) -> None:
        """Wait for the fetch in flight, if any (a background refresh); never raises for it."""
        task = self._inflight
        if task is not None:
            await asyncio.wait({task})

    async def aclose(self) -> None:
        """Cancel a fetch in flight and start no new one (the owner closes the HTTP client)."""
        self._closed = True
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    # -- internals ----------------------------------------------------------------------------

    @property
    def _usable_until(self) -> float:
        return self._expires_at + self._max_stale

    def _unknown(self) -> InvalidTokenError:
        return InvalidTokenError(
            f"The {self.name} key named in the token header is unknown or ambiguous.",
            reason="unknown_key",
        )

    def _lookup(self, kid: str | None, x5t: str | None) -> VerificationKey | None:
        index = self._index
        if index is None:
            return None
        if kid is not None and kid in index.by_kid:
            return index.by_kid[kid]  # None when ambiguous: do not fall through
        if x5t is not None and x5t in index.by_x5t:
            return index.by_x5t[x5t]
        if kid is not None:  # Altinn 2: kid is the certificate thumbprint
            return index.by_x5t.get(kid)
        return None

    def _may_retry(self, now: float) -> bool:
        """No failure outstanding, or the cooldown after it has passed."""
        return self._last_error is None or now - self._cooldown_from >= self._cooldown

    async def _load(self, now: float) -> None:
        """No usable key: fetch (or join the fetch in flight) and wait for it. After a *failed*
        fetch, wait out the cooldown: with no usable key we fail fast meanwhile."""
        if self._inflight is not None:
            await self._join()
        elif self._may_retry(now):
            await self._join(self._start_fetch())
        if self._index is None or self._clock() >= self._usable_until:
            # generic on purpose: this text reaches the client; the log has URL and cause
            raise KeysUnavailableError(f"No signing keys are available for {self.name}.")

    def _refresh_in_background(self, now: float) -> None:
        """Start a due refresh without waiting for it (stale-while-revalidate)."""
        if self._inflight is None and self._may_retry(now):
            self._start_fetch()

    def _start_fetch(self) -> asyncio.Task[str | None]:
        if self._closed:
            raise KeysUnavailableError(f"No signing keys are available for {self.name}.")
        self.fetch_count += 1
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    async def _join(self, task: asyncio.Task[str | None] | None = None) -> str | None:
        """Wait for ``task`` (default: the fetch in flight); returns its error or ``None``.
        A cancelled waiter never cancels the shared fetch."""
        task = task or self._inflight
        if task is None:
            return None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not self._cancelled_by_caller():
                return "cancelled"  # the fetch itself was cancelled (aclose), not this waiter
            raise

    @staticmethod
    def _cancelled_by_caller() -> bool:
        current = asyncio.current_task()
        return current is not None and current.cancelling() > 0

    def _fetch_done(self, task: asyncio.Task[str | None]) -> None:
        if self._inflight is task:
            self._inflight = None
        # _fetch returns its error phrase (never raises); a cancelled fetch failed too.
        if task.cancelled() or task.exception() is not None or task.result() is not None:
            self.failure_count += 1

    async def _fetch(self) -> str | None:
        """One refresh attempt; never raises (except cancellation). Returns an error phrase."""
        self._fetching_url = None
        cause = "unexpected"
        try:
            async with asyncio.timeout(self._timeout):
                url = await self._jwks_location()
                try:
                    body, cache_control = await self._get_document(url)
                    index, skipped = _build_index(self._decode(body, "JWKS"), self._max_keys)
                except _DocumentError:
                    self._discovered_jwks_url = None  # rediscover next time
                    raise
        except _DocumentError as exc:
            error, cause = str(exc), exc.cause
        except (TimeoutError, httpx.TimeoutException):
            error, cause = "timed out", "timeout"
        except (httpx.ConnectError, OSError) as exc:
            error, cause = f"HTTP failure ({type(exc).__name__})", "connect"
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            error, cause = f"HTTP failure ({type(exc).__name__})", "http"
        except Exception as exc:  # noqa: BLE001 - fail closed, never leak a foreign exception
            error = f"unexpected failure ({type(exc).__name__})"
        else:
            now = self._clock()
            ttl = _ttl_from(cache_control, self._default_ttl, self._min_ttl, self._max_ttl)
            self._index = index
            self.skipped_keys = skipped
            self._expires_at = now + ttl
            self._refresh_at = now + ttl * self.REFRESH_AHEAD_FRACTION
            self._last_error = None
            return None
        self._last_error = error
        self._cooldown_from = max(self._cooldown_from, self._clock())
        if self._index is None:
            kept = ""
        elif self._clock() < self._usable_until:
            kept = f" (the cached keys stay in use for at most {self._usable_until - self._clock():.0f} s)"
        else:
            kept = " (the cached keys are older than max_stale_seconds and no longer used)"
        # an operator sees where and why (the URL without userinfo/query; the error names no
        # token or person; at most one fetch, so one line, per refetch cooldown)
        log.warning("JWKS fetch for %s from %s failed: %s%s", self.name,
                    loggable_url(self._fetching_url or self._jwks_url or self._metadata_url or ""),
                    error, kept, extra={"event": "jwks_fetch", "reason": cause})
        return error

    async def _jwks_location(self) -> str:
        if self._jwks_url is not None:
            return self._jwks_url
        if self._discovered_jwks_url is None:
            body, _ = await self._get_document(self._metadata_url or "")
            uri = self._decode(body, "metadata").get("jwks_uri")
            if type(uri) is not str or not uri.startswith(("https://", "http://")):
                raise _DocumentError("metadata has no absolute jwks_uri")
            if (self._metadata_url or "").startswith("https://") and not uri.startswith("https://"):
                raise _DocumentError("metadata served over https points to a jwks_uri without https")
            self._discovered_jwks_url = uri
        return self._discovered_jwks_url

    async def _get_document(self, url: str) -> tuple[bytes, str | None]:
        """GET ``url``; body bounded by ``max_document_bytes``. Redirects are not followed."""
        self._fetching_url = url
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        async with self._http.stream(
            "GET", url, headers=headers, timeout=self._timeout, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise _DocumentError(f"HTTP status {response.status_code}", cause="http_status")
            declared = response.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
                raise _DocumentError("document too large", cause="too_large")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_bytes:
                    raise _DocumentError("document too large", cause="too_large")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("cache-control")

    @staticmethod
    def _decode(body: bytes, what: str) -> dict[str, Any]:
        try:
            return strict_json_object(body)
        except ValueError as exc:
            raise _DocumentError(f"{what} is not a JSON object ({exc})") from None


def loggable_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url`` for a log line: userinfo, query and fragment
    dropped (they can carry credentials), at most 200 characters; ``"<unparsable URL>"``."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not host:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}"[:200]
