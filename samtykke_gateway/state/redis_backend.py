"""Consent state in Redis, shared by every replica (``[state] url = "redis://host:6379/0"``).

Each request is one ``EVALSHA`` for :meth:`RedisBackend.begin` and one for
:meth:`RedisBackend.finish`: the Lua scripts run atomically in Redis, so two replicas can never
both take the same one-time claim. Needs Redis >= 6.0 (``KEEPTTL``) and one primary (the
scripts touch several keys, so Redis Cluster is not supported).

Keys (``P`` = ``[state] key_prefix``, default ``samtykke:``)::

    P revoked:{consent id}          "1", no expiry (revocations are final)
    P once:{consent id}             claim token | "spent", expires with the consent + 1 day
    P usage:{route}:{day}:{id}      integer, expires after 2 days
    P jti:{sha256(jti)[:32]}        "1", expires with the token + leeway
    P meta:{name} / P lease:{name}  feed continuation token, last poll time, poller lease

redis-py is confined to this module; every failure becomes
:class:`~samtykke_gateway.exceptions.StateUnavailableError` (connect and socket timeouts
default to 1 s; override with ``?socket_timeout=`` in the URL).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..exceptions import StateUnavailableError
from .backend import BeginResult, Claim

__all__ = ["RedisBackend"]

log = logging.getLogger("samtykke_gateway.state")
T = TypeVar("T")

_BEGIN = """
-- KEYS: revoked, jti, once, usage
-- ARGV: check_revocation, jti_mode(0 off, 1 log, 2 refuse), jti_ttl_ms, one_time, token,
--       once_ttl_ms, daily_limit(0 none)
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {'revoked', 0, 0} end
local reused, marked = 0, 0
if ARGV[2] ~= '0' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
    marked = 1
  else
    reused = 1
    if ARGV[2] == '2' then return {'replay', 1, 0} end
  end
end
local function undo_jti()
  if marked == 1 and ARGV[2] == '2' then redis.call('DEL', KEYS[2]) end
end
if ARGV[4] == '1' then
  if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'PX', ARGV[6]) then
    undo_jti()
    return {'spent', reused, 0}
  end
end
local limit = tonumber(ARGV[7])
if limit > 0 then
  local n = redis.call('INCR', KEYS[4])
  if n == 1 then redis.call('EXPIRE', KEYS[4], 172800) end
  if n > limit then
    redis.call('DECR', KEYS[4])
    if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
    undo_jti()
    return {'limit', reused, 0}
  end
end
return {'ok', reused, marked}
"""

_FINISH = """
-- KEYS: once, usage, jti
-- ARGV: released, token, one_time, has_usage, undo_jti
local mine = ARGV[3] == '1' and redis.call('GET', KEYS[1]) == ARGV[2]
if ARGV[1] == '1' then
  if mine then redis.call('SET', KEYS[1], 'spent', 'KEEPTTL') end
  return 1
end
if mine then redis.call('DEL', KEYS[1]) end
if ARGV[4] == '1' then
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n > 0 then redis.call('DECR', KEYS[2]) end
end
if ARGV[5] == '1' then redis.call('DEL', KEYS[3]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_CLEAR_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value and value ~= 'spent' then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

_LEASE = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisBackend:
    """:class:`~.backend.StateBackend` over redis-py asyncio.

    :param url: ``redis://[user:password@]host:port/db`` or ``rediss://``.
    :param key_prefix: prepended to every key (one prefix per deployment / test).
    :param on_error: called with the operation name on each failure (metrics).
    """

    shared = True

    def __init__(self, url: str, *, key_prefix: str = "samtykke:",
                 on_error: Callable[[str], None] | None = None) -> None:
        import redis.asyncio as redis_asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {"decode_responses": True, "retry": Retry(NoBackoff(), 1)}
        if "socket_timeout=" not in url:
            options["socket_timeout"] = 1.0
        if "socket_connect_timeout=" not in url:
            options["socket_connect_timeout"] = 1.0
        self._client = redis_asyncio.Redis.from_url(url, **options)
        self._prefix = key_prefix
        self._on_error = on_error
        self._begin = self._client.register_script(_BEGIN)
        self._finish = self._client.register_script(_FINISH)
        self._lease = self._client.register_script(_LEASE)
        self._release = self._client.register_script(_RELEASE)
        self._clear_claim = self._client.register_script(_CLEAR_CLAIM)
        self.url_for_display = url.split("@")[-1] if "@" in url else url

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        import redis.exceptions

        try:
            return await make()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            if self._on_error is not None:
                self._on_error(operation)
            log.warning("consent state backend failed: op=%s error=%s backend=%s", operation,
                        type(exc).__name__, self.url_for_display)
            raise StateUnavailableError("the consent state backend is unreachable",
                                        reason="state_unavailable") from None

    async def begin(self, claim: Claim) -> BeginResult:
        cid = claim.consent_id
        keys = [
            self._k("revoked", cid),
            self._k("jti", claim.jti_key or "-"),
            self._k("once", cid),
            self._k("usage", claim.usage_key or "-", cid),
        ]
        mode = {"off": "0", "log": "1", "refuse": "2"}[claim.jti_mode if claim.jti_key else "off"]
        args = [
            "1" if claim.check_revocation else "0",
            mode,
            str(max(1000, int(claim.jti_ttl_seconds * 1000))),
            "1" if claim.one_time else "0",
            claim.token,
            str(max(1000, int(claim.one_time_ttl_seconds * 1000))),
            str(claim.daily_limit if claim.usage_key else 0),
        ]
        out = await self._call("begin", lambda: self._begin(keys=keys, args=args))
        outcome, reused, marked = out[0], int(out[1]), int(out[2])
        if outcome not in ("ok", "revoked", "spent", "limit", "replay"):
            raise StateUnavailableError("unexpected answer from the state backend", reason="state_unavailable")
        return BeginResult(outcome, jti_reused=bool(reused), jti_marked=bool(marked))

    async def finish(self, claim: Claim, result: BeginResult, *, released: bool) -> None:
        if result.outcome != "ok":
            return
        if not (claim.one_time or claim.usage_key or (result.jti_marked and claim.jti_mode == "refuse")):
            return
        cid = claim.consent_id
        keys = [self._k("once", cid), self._k("usage", claim.usage_key or "-", cid),
                self._k("jti", claim.jti_key or "-")]
        args = [
            "1" if released else "0",
            claim.token,
            "1" if claim.one_time else "0",
            "1" if claim.usage_key else "0",
            "1" if (result.jti_marked and claim.jti_mode == "refuse") else "0",
        ]
        await self._call("finish", lambda: self._finish(keys=keys, args=args))

    async def revoke(self, consent_ids: Iterable[str]) -> int:
        ids = sorted({c.strip().lower() for c in consent_ids if c.strip()})
        if not ids:
            return 0

        async def run() -> int:
            async with self._client.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.set(self._k("revoked", cid), "1", nx=True)
                results = await pipe.execute()
            return sum(1 for r in results if r)

        return await self._call("revoke", run)

    async def revoked(self, consent_id: str) -> bool:
        key = self._k("revoked", consent_id.strip().lower())
        return bool(await self._call("revoked", lambda: self._client.exists(key)))

    async def spent(self, consent_id: str) -> str | None:
        key = self._k("once", consent_id.strip().lower())
        value = await self._call("spent", lambda: self._client.get(key))
        if value is None:
            return None
        return "spent" if value == "spent" else "claimed"

    async def clear_claim(self, consent_id: str) -> bool:
        keys = [self._k("once", consent_id.strip().lower())]
        return bool(await self._call("clear_claim", lambda: self._clear_claim(keys=keys, args=[])))

    async def get_meta(self, name: str) -> str | None:
        key = self._k("meta", name)
        value = await self._call("get_meta", lambda: self._client.get(key))
        return None if value is None else str(value)

    async def set_meta(self, name: str, value: str) -> None:
        key = self._k("meta", name)
        await self._call("set_meta", lambda: self._client.set(key, value))

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        keys = [self._k("lease", name)]
        args = [owner, str(max(1, int(ttl_seconds * 1000)))]
        return bool(await self._call("lease", lambda: self._lease(keys=keys, args=args)))

    async def release_lease(self, name: str, owner: str) -> None:
        keys = [self._k("lease", name)]
        await self._call("release_lease", lambda: self._release(keys=keys, args=[owner]))

    async def ping(self) -> None:
        await self._call("ping", lambda: self._client.ping())

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection must not fail shutdown
            log.debug("closing the state backend failed", exc_info=False)
