"""Revocations from the Altinn 2 service owner's consent list (legacy; docs/protocol.md §8),
polled in the background.

**Altinn 2** (source: Altinn/docs ``api/tjenesteeiere/rest/autorisasjon/samtykke-liste`` and the
API help page ``GET serviceowner/consents``)::

    GET {url}?serviceCode=4804&serviceEditionCode=210607&serviceEdition=210607[&continuation=T]
    Accept: application/hal+json
    ApiKey: <key>                       (from the environment variable named by api_key_env)
    Authorization: Bearer <token>       (only with [state.feed.maskinporten])

    {"_links": {"self": {...}, "next": {"href": "...&continuation=2020-02-03T10:09:59.548_1"}},
     "_embedded": {"consents": [{"AuthorizationCode": "616d2c43-...", "Status": "active",
                                 "OfferedBy": {...}, "CoveredBy": {...}, "Created": "...",
                                 "ValidTo": "...", "LastChanged": "..."}]},
     "continuationtoken": "2020-02-03T10:09:59.548_1"}

The list is sorted by ``LastChanged`` ascending; ``continuation`` returns only consents created
or changed after the token (``{timestamp}_{id}``). Statuses are ``Active``/``Revoked`` in any
case; spent one-time consents show as ``Revoked``; expired consents are absent. Both edition
parameter spellings are sent because the guide and the API help disagree
(``serviceEdition`` / ``serviceEditionCode``).

Assumptions (documented, tested against a local server speaking this format): member names
are matched case-insensitively (the guide shows PascalCase, HAL serialisers often emit
camelCase); the consent array is ``_embedded.consents`` or else the only array in
``_embedded``; the token is the top-level ``continuationtoken``, else the ``continuation``
parameter of ``_links.next.href``; a page with no consents ends the round (the old token is
kept). *Fail closed*: any status other than ``active`` counts as revoked; a feed revocation is
never undone.

**Legacy.** This endpoint closed with Altinn 2 on 19 June 2026. Altinn 3 has no consent list,
status or revocation API for a data source (docs/protocol.md §8): its tokens are self-contained and
a revocation takes effect when Maskinporten issues the next token. There is therefore no
``altinn3`` feed kind (config refuses it).

**Polling** (:class:`ConsentFeedPoller`): every ``interval_seconds``; with a shared backend one
replica at a time holds a lease and polls, the others only read the shared "last successful
poll" time. The continuation token is stored in the state backend after every page: with
Redis a restarted replica resumes where the fleet left off; with ``memory://`` (whose
revocations die with the process) a restart reads the feed from the beginning — deliberately.
Outage: errors are logged and counted, known revocations stay in force, polling continues; when
no poll succeeded for ``max_staleness_seconds`` the feed is *stale*: an Altinn 2 consent for one
of the feed's services is refused with 503 ``revocation_feed_stale`` until a poll succeeds
again. Nothing else depends on the feed: Altinn 3 consents, routes without those services and
``/readyz`` (which only reports the feed) keep working.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx

from samtykke_gateway.exceptions import StateUnavailableError
from samtykke_gateway.state.backend import StateBackend

if TYPE_CHECKING:
    from samtykke_gateway.config import FeedAuthConfig, FeedConfig

__all__ = [
    "Altinn2ConsentFeed",
    "ConsentFeed",
    "ConsentFeedPoller",
    "FeedEntry",
    "FeedError",
    "FeedPage",
    "MaskinportenCredentials",
    "parse_altinn2_page",
]

log = logging.getLogger("samtykke_gateway.state.feed")
_MAX_PAGE_BYTES = 16 * 1024 * 1024


class FeedError(Exception):
    """One fetch failed; ``str()`` is a short phrase without credentials or ids."""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """``consent_id`` lower-cased; ``status`` lower-cased as sent."""

    consent_id: str
    status: str


@dataclass(frozen=True, slots=True)
class FeedPage:
    entries: tuple[FeedEntry, ...]
    continuation: str | None


class ConsentFeed(Protocol):
    """One consent list. ``name`` keys its continuation token in the state backend;
    ``services`` are the Altinn 2 services whose consents it covers."""

    name: str
    services: frozenset[str]

    async def fetch(self, continuation: str | None) -> FeedPage:
        """:raises FeedError: on any failure (HTTP, status, body)."""
        ...

    def is_revoked(self, entry: FeedEntry) -> bool: ...


def _ci(obj: dict[str, Any], name: str) -> Any:
    """Case-insensitive member lookup."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def parse_altinn2_page(body: bytes) -> FeedPage:
    """Parse one HAL page of ``GET serviceowner/consents``.

    :raises FeedError: not JSON, not an object, no consent array, an entry without code/status.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FeedError("feed page is not JSON") from None
    if not isinstance(doc, dict):
        raise FeedError("feed page is not a JSON object")
    embedded = _ci(doc, "_embedded")
    items: Any = []
    if isinstance(embedded, dict):
        items = _ci(embedded, "consents")
        if items is None:
            arrays = [v for v in embedded.values() if isinstance(v, list)]
            items = arrays[0] if len(arrays) == 1 else None
    elif embedded is None:
        items = []  # an empty list may come without _embedded
    if not isinstance(items, list):
        raise FeedError("feed page has no consent array")
    entries = []
    for item in items:
        code = _ci(item, "AuthorizationCode") if isinstance(item, dict) else None
        status = _ci(item, "Status") if isinstance(item, dict) else None
        if not isinstance(code, str) or not code.strip() or not isinstance(status, str):
            raise FeedError("feed entry without AuthorizationCode or Status")
        entries.append(FeedEntry(code.strip().lower(), status.strip().lower()))
    token = _ci(doc, "continuationtoken")
    if not isinstance(token, str) or not token:
        token = None
        links = _ci(doc, "_links")
        nxt = _ci(links, "next") if isinstance(links, dict) else None
        href = _ci(nxt, "href") if isinstance(nxt, dict) else None
        if isinstance(href, str):
            values = {k.lower(): v for k, v in parse_qs(urlsplit(href).query).items()}.get("continuation")
            token = values[0] if values else None
    return FeedPage(tuple(entries), token if entries else None)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class MaskinportenCredentials:
    """Access tokens by the JWT-bearer grant (RFC 7523; Digdir ``maskinporten_protocol_token``).

    The assertion is RS256 with ``aud`` (Maskinporten issuer), ``iss`` (client id), ``scope``,
    ``iat``, ``exp`` (+100 s) and a fresh ``jti``; tokens are cached until 30 s before expiry.

    :raises FeedError: from :meth:`token` when the key cannot be read or the grant fails.
    """

    def __init__(self, cfg: FeedAuthConfig, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.http = http
        self.clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._key: Any = None

    def _assertion(self) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        if self._key is None:
            try:
                with open(self.cfg.key_file, "rb") as f:
                    self._key = serialization.load_pem_private_key(f.read(), password=None)
            except (OSError, ValueError, TypeError):
                raise FeedError("cannot read the Maskinporten client key") from None
        now = int(self.clock())
        header = {"alg": "RS256", "typ": "JWT", **({"kid": self.cfg.kid} if self.cfg.kid else {})}
        claims = {"aud": self.cfg.audience, "iss": self.cfg.client_id, "scope": self.cfg.scope,
                  "iat": now, "exp": now + 100, "jti": str(uuid.uuid4())}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    async def token(self) -> str:
        if self._token is not None and self.clock() < self._expires_at - 30:
            return self._token
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self._assertion()}
        try:
            response = await self.http.post(self.cfg.token_url, data=form)
        except httpx.HTTPError as exc:
            raise FeedError(f"Maskinporten token request failed ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise FeedError(f"Maskinporten token request answered {response.status_code}")
        try:
            body = response.json()
            token, expires_in = body["access_token"], float(body.get("expires_in", 120))
        except (ValueError, KeyError, TypeError):
            raise FeedError("Maskinporten token response is malformed") from None
        if not isinstance(token, str) or not token:
            raise FeedError("Maskinporten token response is malformed")
        self._token, self._expires_at = token, self.clock() + expires_in
        return token


class _HttpFeed:
    def __init__(self, *, name: str, url: str, params: dict[str, str], http: httpx.AsyncClient,
                 api_key_env: str | None, credentials: MaskinportenCredentials | None) -> None:
        self.name = name
        self.url = url
        self.params = params
        self.http = http
        self.api_key_env = api_key_env
        self.credentials = credentials

    async def _get(self, continuation: str | None) -> bytes:
        headers = {"Accept": "application/hal+json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise FeedError(f"environment variable {self.api_key_env} (the Altinn ApiKey) is not set")
            headers["ApiKey"] = key
        if self.credentials is not None:
            headers["Authorization"] = f"Bearer {await self.credentials.token()}"
        params = dict(self.params)
        if continuation:
            params["continuation"] = continuation
        try:
            async with self.http.stream("GET", self.url, params=params, headers=headers) as response:
                if response.status_code != 200:
                    raise FeedError(f"feed answered {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_PAGE_BYTES:
                        raise FeedError("feed page too large")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise FeedError(f"feed request failed ({type(exc).__name__})") from None
        return b"".join(chunks)


class Altinn2ConsentFeed(_HttpFeed):
    """``GET serviceowner/consents`` for one service ``"{serviceCode}_{editionCode}"``."""

    def __init__(self, *, url: str, service: str, http: httpx.AsyncClient, api_key_env: str | None = None,
                 credentials: MaskinportenCredentials | None = None) -> None:
        code, edition = service.split("_", 1)
        self.services = frozenset({service})
        super().__init__(name=f"altinn2:{service}", url=url, http=http, api_key_env=api_key_env,
                         credentials=credentials,
                         params={"serviceCode": code, "serviceEditionCode": edition, "serviceEdition": edition})

    async def fetch(self, continuation: str | None) -> FeedPage:
        return parse_altinn2_page(await self._get(continuation))

    def is_revoked(self, entry: FeedEntry) -> bool:
        return entry.status != "active"


class _FeedMetrics(Protocol):
    def feed_poll(self, *, ok: bool, revocations: int = 0) -> None: ...


class ConsentFeedPoller:
    """Polls ``feeds`` into ``backend`` (see module docstring for the rules).

    :param feeds: the lists to poll.
    :param backend: where revocations, continuation tokens, the lease and the last successful
        poll time are kept.
    :param interval_seconds: pause between rounds. ``max_pages``: pages per feed per round.
    :param max_staleness_seconds: 0 = never stale.
    :param http: closed by :meth:`close` when ``own_http``.
    :param clock: epoch seconds.
    """

    LAST_SUCCESS = "feed:last_success"

    def __init__(self, feeds: Sequence[ConsentFeed], backend: StateBackend, *, interval_seconds: float,
                 max_pages: int = 100, max_staleness_seconds: float = 900.0,
                 http: httpx.AsyncClient | None = None, own_http: bool = False,
                 metrics: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.feeds = list(feeds)
        #: every service the feeds cover (a stale feed refuses only Altinn 2 consents of these)
        self.services: frozenset[str] = frozenset().union(*(f.services for f in self.feeds))
        self.backend = backend
        self.interval = interval_seconds
        self.max_pages = max_pages
        self.max_staleness = max_staleness_seconds
        self.http = http
        self._own_http = own_http
        self.metrics: _FeedMetrics | None = metrics if hasattr(metrics, "feed_poll") else None
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, cfg: FeedConfig, backend: StateBackend, *, metrics: Any = None) -> ConsentFeedPoller:
        http = httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout_seconds), follow_redirects=False, trust_env=False)
        creds = MaskinportenCredentials(cfg.maskinporten, http) if cfg.maskinporten else None
        feeds: list[ConsentFeed] = [
            Altinn2ConsentFeed(url=cfg.url, service=s, http=http, api_key_env=cfg.api_key_env, credentials=creds)
            for s in cfg.services
        ]
        return cls(feeds, backend, interval_seconds=cfg.interval_seconds, max_pages=cfg.max_pages_per_poll,
                   max_staleness_seconds=cfg.max_staleness_seconds, http=http, own_http=True, metrics=metrics)

    @property
    def stale(self) -> bool:
        """No successful poll (by any replica) within ``max_staleness_seconds``."""
        if self.max_staleness <= 0:
            return False
        return self.last_success is None or self.clock() - self.last_success > self.max_staleness

    def status(self) -> dict[str, Any]:
        return {"last_success": self.last_success, "last_error": self.last_error, "stale": self.stale}

    async def start(self) -> None:
        """One round now (so a fresh replica is current before it serves), then in the
        background. Never raises: a failed first round leaves the feed stale (fail closed)."""
        if self._task is not None:
            return
        await self.poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="samtykke-consent-feed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_once()

    async def poll_once(self) -> int:
        """One round over every feed. :returns: revocations recorded (0 when another replica
        holds the lease or on failure; failures are logged, counted and kept in ``last_error``)."""
        try:
            if self.backend.shared:
                lease_seconds = max(3 * self.interval, 30.0)
                if not await self.backend.acquire_lease("feed", self.owner, lease_seconds):
                    await self._read_shared_success()
                    return 0
            total = 0
            for feed in self.feeds:
                total += await self._poll_feed(feed)
            now = self.clock()
            await self.backend.set_meta(self.LAST_SUCCESS, repr(now))
            self.last_success, self.last_error = now, None
        except (FeedError, StateUnavailableError) as exc:
            self.last_error = str(exc)
            if self.metrics is not None:
                self.metrics.feed_poll(ok=False)
            log.warning("consent feed poll failed: %s", exc, extra={"event": "feed_poll", "result": "error"})
            return 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the poller must survive anything
            self.last_error = f"unexpected {type(exc).__name__}"
            if self.metrics is not None:
                self.metrics.feed_poll(ok=False)
            # class only: the text or traceback of an unexpected error may quote feed content
            # (offeredBy person ids)
            log.error("consent feed poll failed unexpectedly: %s", type(exc).__name__,
                      extra={"event": "feed_poll", "result": "error"})
            return 0
        if self.metrics is not None:
            self.metrics.feed_poll(ok=True, revocations=total)
        if total:
            log.info("consent feed: revocations recorded", extra={"event": "feed_poll", "result": "ok",
                                                                  "revocations": total})
        return total

    async def _read_shared_success(self) -> None:
        value = await self.backend.get_meta(self.LAST_SUCCESS)
        try:
            shared = float(value) if value is not None else None
        except ValueError:
            shared = None
        if shared is not None and (self.last_success is None or shared > self.last_success):
            self.last_success = shared

    async def _poll_feed(self, feed: ConsentFeed) -> int:
        key = f"feed:{feed.name}:continuation"
        cursor = await self.backend.get_meta(key)
        total = 0
        for _ in range(self.max_pages):
            page = await feed.fetch(cursor)
            revoked = [e.consent_id for e in page.entries if feed.is_revoked(e)]
            if revoked:
                total += await self.backend.revoke(revoked)
            if not page.entries or page.continuation is None or page.continuation == cursor:
                break
            cursor = page.continuation
            await self.backend.set_meta(key, cursor)
        return total

    async def close(self) -> None:
        """Stop polling and close the HTTP client it owns. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.backend.shared:
            with contextlib.suppress(StateUnavailableError):  # it expires on its own
                await self.backend.release_lease("feed", self.owner)
        if self._own_http and self.http is not None:
            await self.http.aclose()
