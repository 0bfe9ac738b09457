"""In-process consent state: one replica (``[state] url = "memory://"``).

Everything lives in this process and is lost on restart (a restarted replica re-reads the
consent feed from the beginning, see :mod:`.feed`). Operations are synchronous under one lock,
so :meth:`MemoryBackend.begin` is atomic even with several event loops in threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from samtykke_gateway.state.backend import BeginResult, Claim

__all__ = ["MemoryBackend"]

# BeginResult is frozen: the common outcomes are shared instances, not built per request.
_REVOKED = BeginResult("revoked")
_OK = {(r, m): BeginResult("ok", jti_reused=r, jti_marked=m) for r in (False, True) for m in (False, True)}


class MemoryBackend:
    """Dict-backed :class:`~.backend.StateBackend`. ``clock``: epoch seconds (tests)."""

    shared = False

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: set[str] = set()
        self._jti: dict[str, float] = {}  # key -> expires at
        self._once: dict[str, tuple[str, float]] = {}  # consent id -> (claim token | "spent", expires at)
        self._usage: dict[str, tuple[int, float]] = {}  # "route:day:id" -> (count, expires at)
        self._meta: dict[str, str] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._ops = 0

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % 1024:
            return
        for table in (self._jti,):
            for k in [k for k, exp in table.items() if exp <= now]:
                del table[k]
        for k in [k for k, (_, exp) in self._once.items() if exp <= now]:
            del self._once[k]
        for k in [k for k, (_, exp) in self._usage.items() if exp <= now]:
            del self._usage[k]

    async def begin(self, claim: Claim) -> BeginResult:
        now = self._clock()
        cid = claim.consent_id
        with self._lock:
            self._sweep(now)
            if claim.check_revocation and cid in self._revoked:
                return _REVOKED
            reused = marked = False
            if claim.jti_mode != "off" and claim.jti_key is not None:
                exp = self._jti.get(claim.jti_key)
                if exp is not None and exp > now:
                    reused = True
                    if claim.jti_mode == "refuse":
                        return BeginResult("replay", jti_reused=True)
                else:
                    self._jti[claim.jti_key] = now + claim.jti_ttl_seconds
                    marked = True
            if claim.one_time:
                held = self._once.get(cid)
                if held is not None and held[1] > now:
                    self._undo_jti(claim, marked)
                    return BeginResult("spent", jti_reused=reused)
                self._once[cid] = (claim.token, now + claim.one_time_ttl_seconds)
            if claim.usage_key is not None:
                key = f"{claim.usage_key}:{cid}"
                count, exp = self._usage.get(key, (0, now + 2 * 86400))
                if exp <= now:
                    count, exp = 0, now + 2 * 86400
                if count + 1 > claim.daily_limit:
                    if claim.one_time:
                        del self._once[cid]
                    self._undo_jti(claim, marked)
                    return BeginResult("limit", jti_reused=reused)
                self._usage[key] = (count + 1, exp)
            return _OK[reused, marked]

    def _undo_jti(self, claim: Claim, marked: bool) -> None:
        if marked and claim.jti_mode == "refuse" and claim.jti_key is not None:
            self._jti.pop(claim.jti_key, None)

    async def finish(self, claim: Claim, result: BeginResult, *, released: bool) -> None:
        if result.outcome != "ok":
            return
        now = self._clock()
        cid = claim.consent_id
        with self._lock:
            held = self._once.get(cid) if claim.one_time else None
            mine = held is not None and held[0] == claim.token
            if released:
                if mine:
                    if held is None:  # narrowed above
                        raise RuntimeError("claim vanished under the lock")
                    self._once[cid] = ("spent", held[1])
                return
            if mine:
                del self._once[cid]
            if claim.usage_key is not None:
                key = f"{claim.usage_key}:{cid}"
                count, exp = self._usage.get(key, (0, now))
                if count > 0:
                    self._usage[key] = (count - 1, exp)
            self._undo_jti(claim, result.jti_marked)

    async def revoke(self, consent_ids: Iterable[str]) -> int:
        with self._lock:
            before = len(self._revoked)
            self._revoked.update(c.strip().lower() for c in consent_ids if c.strip())
            return len(self._revoked) - before

    async def revoked(self, consent_id: str) -> bool:
        return consent_id.strip().lower() in self._revoked

    async def spent(self, consent_id: str) -> str | None:
        held = self._once.get(consent_id.strip().lower())
        if held is None or held[1] <= self._clock():
            return None
        return "spent" if held[0] == "spent" else "claimed"

    async def clear_claim(self, consent_id: str) -> bool:
        cid = consent_id.strip().lower()
        with self._lock:
            held = self._once.get(cid)
            if held is None or held[0] == "spent":
                return False
            del self._once[cid]
            return True

    async def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self._meta[name] = value

    async def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._leases.get(name)
            if held is None or held[0] == owner or held[1] <= now:
                self._leases[name] = (owner, now + ttl_seconds)
                return True
            return False

    async def release_lease(self, name: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held[0] == owner:
                del self._leases[name]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
