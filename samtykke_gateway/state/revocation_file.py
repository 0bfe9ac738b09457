"""The revocation file (``[state] revocation_file``): one consent id per line.

::

    # comments and blank lines are ignored; ids compare lower-case
    616d2c43-17f9-4cc1-9257-41cdda157f11
    {7A1C7F52-0D4B-4E57-9E0B-3C2F1D2E4A10}

A GUID in braces (the form .NET and Windows tools print) counts without them: consent ids are
GUIDs compared lower-case everywhere (Altinn 2 ``AuthorizationCode`` is canonicalised to
``8-4-4-4-12`` lower case, Altinn 3 ids are lower-cased).

The file is re-read when its modification time, size or inode changes, checked at most once
per ``check_interval_seconds`` on the request path (a ``stat`` call), so a Kubernetes ConfigMap
update or ``samtykke-gateway revoke`` reaches running replicas without a restart. A line that is
not a plausible consent id is skipped with a warning naming only its line number.

Fail closed: once configured, a file that cannot be read (missing, permissions, not UTF-8)
makes :meth:`RevocationFile.check` raise
:class:`~samtykke_gateway.exceptions.StateUnavailableError` until it can be read again.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from samtykke_gateway.exceptions import StateUnavailableError

__all__ = ["CONSENT_ID", "RevocationFile", "append_revocations", "normalize_consent_id"]

log = logging.getLogger("samtykke_gateway.state")

#: A consent id as Altinn issues them (GUID / UUID), lenient on form but never spaces or '/'.
CONSENT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,127}")
_BRACED_GUID = re.compile(r"\{([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}")


def normalize_consent_id(value: str) -> str | None:
    """A consent id as written by a person (surrounding spaces, any case, a GUID in braces)
    → the lower-case form the gateway compares, or ``None`` when it is not a consent id."""
    value = value.strip()
    braced = _BRACED_GUID.fullmatch(value)
    if braced is not None:
        value = braced.group(1)
    if CONSENT_ID.fullmatch(value) is None:
        return None
    return value.lower()


class RevocationFile:
    """Revoked consent ids from a file.

    :param path: the file (absolute; config resolves it against the config file's folder).
    :param check_interval_seconds: how often :meth:`check` looks at the file's ``stat``.
    :param clock: monotonic seconds (tests).
    """

    def __init__(self, path: str | Path, *, check_interval_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._interval = check_interval_seconds
        self._clock = clock
        self._ids: frozenset[str] = frozenset()
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._error: str | None = "not loaded"

    @property
    def error(self) -> str | None:
        """Why the file is unusable now, or ``None`` (for ``/readyz``; names no id)."""
        return self._error

    def __len__(self) -> int:
        return len(self._ids)

    def load(self) -> None:
        """(Re)read the file now if it changed. Never raises; failures set :attr:`error`."""
        self._checked_at = self._clock()
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature == self._signature and self._error is None:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._error = f"cannot read revocation file: {type(exc).__name__}"
            log.warning("revocation file unusable: %s (%s)", self.path, type(exc).__name__)
            return
        ids = set()
        for number, line in enumerate(text.splitlines(), start=1):
            value = line.split("#", 1)[0].strip()
            if not value:
                continue
            consent_id = normalize_consent_id(value)
            if consent_id is None:
                log.warning("revocation file %s line %d is not a consent id; skipped", self.path, number)
                continue
            ids.add(consent_id)
        self._ids = frozenset(ids)
        self._signature = signature
        self._error = None

    def check(self, consent_id: str) -> bool:
        """:returns: ``True`` when ``consent_id`` (lower-cased) is revoked by the file.

        :raises StateUnavailableError: the file cannot be read (fail closed).
        """
        if self._clock() - self._checked_at >= self._interval:
            self.load()
        if self._error is not None:
            raise StateUnavailableError("the revocation file cannot be read", reason="revocation_file_unreadable")
        return consent_id in self._ids


def append_revocations(path: str | Path, consent_ids: Iterable[str]) -> int:
    """Append ids to the file (created if missing), one line each, fsync'd.

    :returns: how many ids were new to the file.
    :raises ValueError: an id is not a plausible consent id.
    :raises OSError: the file cannot be written.
    """
    p = Path(path)
    wanted = []
    for raw in consent_ids:
        value = normalize_consent_id(raw)
        if value is None:
            raise ValueError("not a consent id")
        wanted.append(value)
    existing: set[str] = set()
    if p.exists():
        existing = {normalize_consent_id(ln.split("#", 1)[0]) or "" for ln in p.read_text(encoding="utf-8").splitlines()}
    new = [v for v in dict.fromkeys(wanted) if v not in existing]
    if new:
        needs_newline = p.exists() and p.stat().st_size > 0 and not p.read_bytes().endswith(b"\n")
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (("\n" if needs_newline else "") + "".join(f"{v}\n" for v in new)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(new)
