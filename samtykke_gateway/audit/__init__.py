"""Disclosure log (docs/protocol.md §7): one hash-chained record per request, durable before release
(plus an end record for a streamed answer).

``open_store(url)`` picks the backend from the URL scheme; the caller then owns the store
(``await store.open()`` ... ``await store.close()``). This module is the one place that knows
the schemes (:data:`STORE_SCHEMES`): the config's ``[audit] url`` is checked and its relative
SQLite path resolved by :func:`resolve_store_url`, the CLI's ``--store`` goes to
:func:`open_store`. A new store is one entry there and one branch in :func:`open_store`::

    memory://                                   tests and benchmarks (not durable)
    sqlite:///relative/path.db                  default; WAL + synchronous=FULL
    sqlite:////absolute/path.db                 (options: ?synchronous=&busy_timeout_ms=&max_batch=)
    postgresql://user:pw@host:5432/db           several replicas, one chain
    postgres://...                              (options: ?schema=&connect_timeout=&max_batch=
                                                 &pool_max_size=; others go to libpq)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from samtykke_gateway.audit.base import DisclosureStore, VerifyResult
from samtykke_gateway.audit.record import DisclosureRecord

__all__ = [
    "STORE_SCHEMES",
    "DisclosureRecord",
    "DisclosureStore",
    "VerifyResult",
    "open_store",
    "resolve_store_url",
    "store_scheme",
]

#: Audit-store URL scheme → whether records survive a restart. ``memory`` is for tests and
#: benchmarks and is refused in the ``tt02``/``prod`` profiles.
STORE_SCHEMES: dict[str, bool] = {"memory": False, "sqlite": True, "postgresql": True, "postgres": True}

_SQLITE_OPTIONS = {"synchronous": str, "busy_timeout_ms": int, "max_batch": int}


def open_store(url: str) -> DisclosureStore:
    """A not-yet-opened store for ``url``.

    :raises ValueError: unknown scheme, malformed URL or unknown option.
    :raises ImportError: ``postgresql://`` without the ``postgres`` extra (psycopg) installed.
    """
    scheme = store_scheme(url)
    rest = url.partition("://")[2]
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


def store_scheme(url: str) -> str:
    """The lower-cased scheme of an audit-store URL, one of :data:`STORE_SCHEMES`.

    :raises ValueError: no ``scheme://`` or an unknown scheme (the message names the known ones).
    """
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"audit store URL has no scheme: expected {_EXPECTED}")
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"unknown audit store scheme {scheme!r}: expected {_EXPECTED}")
    return scheme


def resolve_store_url(url: str, base_dir: Path) -> str:
    """``url`` with a relative SQLite path made absolute against ``base_dir`` (the config
    file's directory: ``sqlite:///logs.db`` → ``sqlite:////etc/gateway/logs.db``); other
    schemes unchanged. Options after ``?`` are kept.

    :raises ValueError: unknown scheme, or a SQLite URL without a file path.
    """
    if store_scheme(url) != "sqlite":
        return url
    path = url.partition("://")[2]
    if not path.startswith("/") or path == "/":
        raise ValueError("sqlite URL needs a file path: sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = path[1:]
    resolved = Path(path) if path.startswith("/") else base_dir / path
    return "sqlite:///" + str(resolved.resolve())


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
