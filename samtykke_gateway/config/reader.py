"""Reading TOML tables with key-path errors: every problem is a
:class:`~samtykke_gateway.exceptions.ConfigError` naming the key (``routes[2].subject``), and a
key nobody read is an error (a typo must not silently disable a check).

The text of the config file and of rights-package value lists is read by
:func:`samtykke_gateway.config_text.read_config_text`, a leaf module so that the scoping package
can read value lists without importing this package (which imports scoping).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from samtykke_gateway.exceptions import ConfigError

__all__ = ["HEADER_NAME", "MAX_NUMBER", "Table"]

#: An HTTP header name (RFC 9110 §5.1 token).
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
#: Largest number a setting may hold (seconds, bytes, counts): ~3 years in seconds, 1 GB.
MAX_NUMBER = 1e9


class Table:
    """Read keys from one TOML table, remembering its key path and refusing unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        """The key path of ``name`` in this table (``routes[2].subject``)."""
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
    ) -> Any:
        """The value of ``name`` if it is a ``kind`` (a bool is never a number), else
        ``default``; ``required``: absent is an error that suggests a near key (a typo)."""
        self.used.add(name)
        if name not in self.data:
            if required:
                near = difflib.get_close_matches(name, [k for k in self.data if isinstance(k, str)], n=1)
                hint = f" (the table has {near[0]!r}: a typo?)" if near else ""
                raise ConfigError(self.key(name), "is required" + hint)
            return default
        value = self.data[name]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(self.key(name), "must be a number")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(self.key(name), f"must be {want}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A finite number within ``minimum``..:data:`MAX_NUMBER` (seconds, bytes, counts)."""
        value = float(self.get(name, (int, float), default))
        if not math.isfinite(value) or value > MAX_NUMBER:  # nan passed every check, inf broke timers
            raise ConfigError(self.key(name), f"must be a finite number up to {MAX_NUMBER:g}")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be >= {minimum}")
        return value

    def str_list(self, name: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        """One string or a list of strings, each matching ``pattern`` when given; absent: ``()``."""
        value = self.get(name, (list, str), [])
        items = [value] if isinstance(value, str) else value
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or (pattern is not None and not pattern.fullmatch(item)):
                raise ConfigError(f"{self.key(name)}[{i}]", "is not a valid value")
            out.append(item)
        return tuple(out)

    def finish(self) -> None:
        """Refuse the first key (sorted) that nothing read: unknown keys are errors."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")

    def optional_number(self, name: str, *, minimum: float) -> float | None:
        """A number that may be left out (``None``: the setting is off), at least ``minimum``."""
        if name not in self.data:
            self.used.add(name)
            return None
        return self.number(name, 0.0, minimum=minimum)
