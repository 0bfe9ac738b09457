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
    P generation                    the consent-state generation marker (JSON, no expiry)

**Reset detection** (``docs/protocol.md §8``). A Redis that loses its data (restarted without
persistence, flushed, keys evicted, failover to an empty replica) forgets spent one-time
consents and revocations; serving on would deliver them again. The marker tells: a process
*joins* the generation it finds (``{"generation": id, "created": epoch, "origin": ...}``) and
``begin`` checks, inside the same script and so without another round trip, that the marker is
still the one it joined. When it is not, the script leaves a *reset* marker
(``{"reset_detected": epoch, "previous": id}``) so that every replica, also one started later,
fails closed: :class:`~samtykke_gateway.exceptions.StateUnavailableError` with reason
``consent_state_reset`` (503) until an operator runs ``samtykke-gateway state confirm-reset``
(:meth:`RedisBackend.confirm_reset`), which writes a new generation with origin ``operator``.

No marker at all is either the very first start or a reset nobody has noticed yet. The first
start is told apart by the disclosure log: a process creates the first generation (origin
``first-start``) only when its disclosure log has never held a record (``disclosure_log_empty``);
otherwise it leaves the reset marker. A running process adopts a *different* generation only
when an operator wrote it after the one it held (so neither another replica's ``first-start``
marker nor an older marker brought back from a snapshot passes for a confirmation).

redis-py is confined to this module; every failure becomes
:class:`~samtykke_gateway.exceptions.StateUnavailableError` (connect and socket timeouts
default to 1 s; override with ``?socket_timeout=`` in the URL).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from samtykke_gateway.exceptions import StateUnavailableError
from samtykke_gateway.correlation import new_id
from samtykke_gateway.state.backend import BeginResult, Claim

__all__ = ["Generation", "RedisBackend", "parse_marker"]

log = logging.getLogger("samtykke_gateway.state")
T = TypeVar("T")

_BEGIN = """
-- KEYS: revoked, jti, once, usage, generation
-- ARGV: check_revocation, jti_mode(0 off, 1 log, 2 refuse), jti_ttl_ms, one_time, token,
--       once_ttl_ms, daily_limit(0 none), joined generation marker, reset marker
local generation = redis.call('GET', KEYS[5])
if generation ~= ARGV[8] then
  if not generation then
    redis.call('SET', KEYS[5], ARGV[9])
    generation = ARGV[9]
  end
  return {'reset', 0, 0, generation}
end
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

_SET_IF_ABSENT = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return value
"""

_COMPARE_AND_SET = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
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


_RESET_MESSAGE = (
    "the consent state generation marker in Redis is %s: Redis lost its data (restarted without "
    "persistence, flushed, keys evicted, or failed over to an empty replica), so spent one-time "
    "consents and revocations recorded before are unknown. Stateful routes answer 503 "
    "consent_state_reset until an operator checks the disclosure log and runs "
    "`samtykke-gateway state confirm-reset --config FILE` (and re-runs `revoke` for revocations "
    "still needed)"
)


@dataclass(frozen=True, slots=True)
class Generation:
    """A parsed generation marker. ``kind``: ``generation`` (usable) or ``reset`` (a reset was
    detected and is not confirmed; also any value that does not parse). ``created``: epoch
    seconds the generation was written (or the reset detected)."""

    kind: Literal["generation", "reset"]
    generation: str | None
    created: float
    origin: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        if self.kind == "generation":
            return f"generation {self.generation} since {when} ({self.origin})"
        return f"reset detected {when}, not confirmed"


def parse_marker(value: str | None) -> Generation | None:
    """The marker ``value`` as stored; ``None`` when there is none. A value that does not parse
    counts as a reset (fail closed)."""
    if value is None:
        return None
    try:
        data = json.loads(value)
        if isinstance(data, dict) and isinstance(data.get("generation"), str):
            return Generation("generation", data["generation"], float(data["created"]), str(data["origin"]))
        if isinstance(data, dict) and "reset_detected" in data:
            return Generation("reset", None, float(data["reset_detected"]), "reset")
    except (ValueError, TypeError, KeyError):
        pass
    return Generation("reset", None, 0.0, "unreadable")


def new_marker(origin: str, now: float) -> str:
    """A fresh generation marker value (``origin``: ``first-start`` or ``operator``)."""
    return json.dumps({"generation": new_id(), "created": round(now, 3), "origin": origin})


class RedisBackend:
    """:class:`~.backend.StateBackend` over redis-py asyncio.

    :param url: ``redis://[user:password@]host:port/db`` or ``rediss://``.
    :param key_prefix: prepended to every key (one prefix per deployment / test).
    :param on_error: called with the operation name on each failure (metrics).
    :param disclosure_log_empty: ``True`` when the disclosure log never held a record (the only
        case in which a missing generation marker is taken for a first start); ``None`` (or a
        call that fails with anything but :class:`StateUnavailableError`) means "cannot tell":
        a missing marker is then a reset.
    :param clock: epoch seconds (marker times).
    """

    shared = True

    def __init__(self, url: str, *, key_prefix: str = "samtykke:",
                 on_error: Callable[[str], None] | None = None,
                 disclosure_log_empty: Callable[[], Awaitable[bool]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
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
        self._set_if_absent = self._client.register_script(_SET_IF_ABSENT)
        self._compare_and_set = self._client.register_script(_COMPARE_AND_SET)
        self.url_for_display = url.split("@")[-1] if "@" in url else url
        self.disclosure_log_empty = disclosure_log_empty
        self._clock = clock
        self._marker_key = key_prefix + "generation"
        self._joined: str | None = None  # the exact marker value this process joined
        self._held: Generation | None = None  # the last generation held (kept across a reset)
        self._reset_seen = False
        self._durability: tuple[float, dict[str, str]] = (-1e18, {})
        self._run_id: str | None = None

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

    # -- the generation marker ------------------------------------------------------------------

    def _reset_marker(self) -> str:
        previous = self._held.generation if self._held is not None else None
        return json.dumps({"reset_detected": round(self._clock(), 3), "previous": previous})

    def _reset_error(self) -> StateUnavailableError:
        return StateUnavailableError("the consent state was reset (Redis lost its data); an operator must confirm",
                                     reason="consent_state_reset")

    async def _first_start(self) -> bool:
        """May a missing marker be taken for the first start? Only with an empty disclosure log."""
        if self.disclosure_log_empty is None:
            return False
        try:
            return bool(await self.disclosure_log_empty())
        except Exception as exc:  # noqa: BLE001 - cannot tell now: do not decide, retry later
            log.warning("consent state generation not joined: the disclosure log cannot be read (%s)",
                        type(exc).__name__)
            raise StateUnavailableError("cannot tell a first start from a reset now",
                                        reason="state_unavailable") from None

    def _adoptable(self, marker: Generation) -> bool:
        if marker.kind != "generation":
            return False
        if self._held is None and not self._reset_seen:
            return True  # first join of this process
        held = self._held
        if held is not None and marker.generation == held.generation and not self._reset_seen:
            return True  # the one already joined (another request joined it meanwhile)
        return marker.origin == "operator" and (held is None or marker.created > held.created)

    async def _join(self, operation: str) -> None:
        """Join the generation in Redis (creating the first one on a first start).

        :raises StateUnavailableError: ``consent_state_reset`` (a reset, not confirmed), or
            ``state_unavailable``.
        """
        key = self._marker_key
        value = await self._call(operation, lambda: self._client.get(key))
        if value is None:
            candidate = new_marker("first-start", self._clock()) if await self._first_start() else self._reset_marker()
            value = await self._call(operation, lambda: self._set_if_absent(keys=[key], args=[candidate]))
            if value == candidate and parse_marker(value).kind == "generation":  # type: ignore[union-attr]
                log.info("consent state generation created in Redis (first start: no marker and an empty "
                         "disclosure log)")
        await self._settle(str(value), operation)

    async def _settle(self, value: str | None, operation: str) -> None:
        """Adopt ``value`` when allowed, else record the reset (and leave the reset marker)."""
        marker = parse_marker(value)
        if marker is not None and self._adoptable(marker):
            if self._reset_seen:
                log.warning("consent state reset confirmed by an operator: %s", marker.describe())
            self._joined, self._held, self._reset_seen = value, marker, False
            return
        if not self._reset_seen:
            what = ("missing" if marker is None else
                    "a reset marker" if marker.kind == "reset" else f"not the one joined ({marker.origin})")
            log.error(_RESET_MESSAGE, what)
        self._reset_seen, self._joined = True, None
        if marker is None or marker.kind == "generation":  # leave the reset marker for every replica
            key, current, reset = self._marker_key, value or "", self._reset_marker()
            await self._call(operation, lambda: self._compare_and_set(keys=[key], args=[current, reset]))
        raise self._reset_error()

    async def generation(self) -> Generation | None:
        """The marker as stored now (``None``: none). :raises StateUnavailableError:"""
        key = self._marker_key
        value = await self._call("generation", lambda: self._client.get(key))
        return parse_marker(None if value is None else str(value))

    async def confirm_reset(self) -> tuple[bool, Generation | None]:
        """Operator action: write a new generation (origin ``operator``) when the marker is
        missing or says reset; leave a usable generation alone.

        :returns: (written, the marker now).
        :raises StateUnavailableError: Redis unreachable.
        """
        key = self._marker_key
        for _ in range(3):  # a gateway may leave a reset marker between the read and the write
            value = await self._call("generation", lambda: self._client.get(key))
            current = None if value is None else str(value)
            marker = parse_marker(current)
            if marker is not None and marker.kind == "generation":
                return False, marker
            fresh = new_marker("operator", self._clock())
            args = [current or "", fresh]
            if await self._call("generation", lambda: self._compare_and_set(keys=[key], args=args)):  # noqa: B023
                return True, parse_marker(fresh)
        raise StateUnavailableError("the generation marker kept changing", reason="state_unavailable")

    async def durability(self, *, max_age_seconds: float = 30.0) -> dict[str, str]:
        """What Redis promises about keeping the state, from ``INFO`` (and ``CONFIG GET``
        where allowed; managed Redis often refuses it). Cached for ``max_age_seconds``.

        :returns: ``{"verdict": "ok" | "warning" | "unknown", "detail": text}``; never raises.
        """
        at, cached = self._durability
        now = time.monotonic()
        if cached and now - at < max_age_seconds:
            return cached
        result = await self._read_durability()
        self._durability = (now, result)
        return result

    async def _read_durability(self) -> dict[str, str]:
        import redis.exceptions

        try:
            info = await self._client.info()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            return {"verdict": "unknown", "detail": f"INFO failed ({type(exc).__name__})"}
        config: dict[str, str] = {}
        try:
            for name in ("appendfsync", "save"):
                config.update({str(k): str(v) for k, v in (await self._client.config_get(name)).items()})
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            config = {}
        run_id = str(info.get("run_id", "")) or None
        if run_id and self._run_id and run_id != self._run_id:
            log.warning("Redis restarted or failed over (run id changed); the generation marker is checked on "
                        "every stateful request")
        self._run_id = run_id or self._run_id
        verdict, notes = "ok", []
        if str(info.get("aof_enabled", "")) == "1":
            fsync = config.get("appendfsync")
            if fsync == "always":
                notes.append("AOF, appendfsync always")
            elif fsync == "everysec":
                notes.append("AOF, appendfsync everysec: a crash may lose up to ~1 s of spent one-time consents "
                             "and revocations")
            elif fsync is None:
                verdict = "unknown"
                notes.append("AOF on, appendfsync unknown (CONFIG GET refused); needs always or everysec")
            else:
                verdict = "warning"
                notes.append(f"AOF with appendfsync {fsync}: a crash may lose the last ~30 s of spent one-time "
                             "consents and revocations; use always or everysec")
        elif "aof_enabled" not in info:
            verdict = "unknown"
            notes.append("persistence unknown (INFO has no aof_enabled)")
        else:
            verdict = "warning"
            save = config.get("save")
            if save:
                notes.append(f"no AOF, RDB snapshots only (save {save}): a crash loses everything since the "
                             "last snapshot")
            elif save == "":
                notes.append("no persistence: a restart loses every spent one-time consent and revocation")
            else:
                notes.append("no AOF (snapshot settings unknown): a crash loses writes since the last snapshot")
            notes.append("the gateway then detects the reset and fails closed until `state confirm-reset`; "
                         "configure appendonly yes, appendfsync always (or everysec)")
        maxmemory, policy = str(info.get("maxmemory", "0")), str(info.get("maxmemory_policy", "noeviction"))
        if maxmemory not in ("0", "") and policy != "noeviction":
            verdict = "warning" if verdict == "ok" else verdict
            notes.append(f"maxmemory-policy {policy} can evict spent one-time consents; use noeviction")
        return {"verdict": verdict, "detail": "; ".join(notes)}

    # -- requests ------------------------------------------------------------------------------

    async def begin(self, claim: Claim) -> BeginResult:
        for _ in range(2):
            if self._joined is None:
                await self._join("begin")
            out = await self._begin_once(claim, str(self._joined))
            if out is not None:
                return out
        raise self._reset_error()

    async def _begin_once(self, claim: Claim, joined: str) -> BeginResult | None:
        cid = claim.consent_id
        keys = [
            self._k("revoked", cid),
            self._k("jti", claim.jti_key or "-"),
            self._k("once", cid),
            self._k("usage", claim.usage_key or "-", cid),
            self._marker_key,
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
            joined,
            self._reset_marker(),
        ]
        out = await self._call("begin", lambda: self._begin(keys=keys, args=args))
        if out[0] == "reset":
            if self._joined == joined:
                await self._settle(str(out[3]), "begin")  # raises unless an operator confirmed since
            return None  # joined (again): ask once more
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
        """Reachable, and still the generation this process joined (joins it when not yet).

        :raises StateUnavailableError: ``state_unavailable`` or ``consent_state_reset``.
        """
        await self._call("ping", lambda: self._client.ping())
        if self._joined is None:
            await self._join("ping")
            return
        key = self._marker_key
        value = await self._call("ping", lambda: self._client.get(key))
        if value != self._joined:
            await self._settle(None if value is None else str(value), "ping")

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection must not fail shutdown
            log.debug("closing the state backend failed", exc_info=False)
