"""UTF-8 text files the config reads: the config file itself and rights-package value lists.

A leaf (it imports only :mod:`samtykke_gateway.exceptions`), so that the scoping package reads
value lists without importing :mod:`samtykke_gateway.config`, which imports scoping.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from samtykke_gateway.exceptions import ConfigError


def read_config_text(path: Path, key_path: str) -> str:
    """A UTF-8 text file the config reads (the config itself, value lists).

    A leading UTF-8 byte order mark is dropped (TOML has none; Windows editors write one).
    A file that is not UTF-8 (e.g. "år" saved in Latin-1) is a :class:`ConfigError` naming the
    byte offset and line, never the bytes: a ``UnicodeDecodeError``'s repr quotes the whole
    file, passwords in database URLs included, and must not reach a log or a traceback.

    :raises ConfigError: the file cannot be read or is not UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read {'config file ' if not key_path else ''}{path}: {exc.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors): not content
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    line = data.count(b"\n", 0, start) + 1
    del data
    raise ConfigError(key_path, f"{path}: not UTF-8 at byte {start} (line {line}); save the file as UTF-8")


def url_without_password(url: str) -> str:
    """``url`` for display: the password (in the userinfo or a ``password=`` parameter)
    replaced by ``***``, all else kept; ``"(unparsable URL)"`` when it cannot be parsed (a
    ``ValueError`` from the parser, e.g. a bad port, never leaves with the URL in it)."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    if has_password:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return parts._replace(netloc=netloc, query=urlencode(query, safe="*")).geturl()
