"""Disclosure log (docs/protocol.md §7): one hash-chained record per request, durable before release
(plus an end record for a streamed answer).

``open_store(url)`` picks the backend from the URL scheme; the caller then owns the store
(``await store.open()`` ... ``await store.close()``)::

    memory://                                   tests and benchmarks (not durable)
    sqlite:///relative/path.db                  default; WAL + synchronous=FULL
    sqlite:////absolute/path.db                 (options: ?synchronous=&busy_timeout_ms=&max_batch=)
    postgresql://user:pw@host:5432/db           several replicas, one chain
    postgres://...                              (options: ?schema=&connect_timeout=&max_batch=
                                                 &pool_max_size=; others go to libpq)
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from samtykke_gateway.audit.base import DisclosureStore, VerifyResult
from samtykke_gateway.audit.record import DisclosureRecord

__all__ = ["DisclosureRecord", "DisclosureStore", "VerifyResult", "open_store"]

_SQLITE_OPTIONS = {"synchronous": str, "busy_timeout_ms": int, "max_batch": int}


def open_store(url: str) -> DisclosureStore:
    """A not-yet-opened store for ``url``.

    :raises ValueError: unknown scheme, malformed URL or unknown option.
    :raises ImportError: ``postgresql://`` without the ``postgres`` extra (psycopg) installed.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"audit store URL has no scheme: expected {_EXPECTED}")
    if scheme == "memory":
        from samtykke_gateway.audit.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        return _sqlite(rest)
    if scheme in ("postgresql", "postgres"):
        from samtykke_gateway.audit.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ValueError(f"unknown audit store scheme {scheme!r}: expected {_EXPECTED}")


_EXPECTED = "memory://, sqlite:///path.db, postgresql://..."


def _sqlite(rest: str) -> DisclosureStore:
    from samtykke_gateway.audit.sqlite import SqliteStore

    path, _, query = rest.partition("?")
    if not path.startswith("/") or path == "/":
        raise ValueError(
            "sqlite URL must be sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    options: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        convert = _SQLITE_OPTIONS.get(key)
        if convert is None:
            raise ValueError(f"unknown sqlite store option {key!r}")
        try:
            options[key] = convert(value)
        except ValueError:
            raise ValueError(f"sqlite store option {key!r} has a bad value") from None
    return SqliteStore(path[1:], **options)  # type: ignore[arg-type]
