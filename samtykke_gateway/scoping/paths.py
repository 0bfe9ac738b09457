"""The rights-package path language and the TOML table that carries it.

This module only parses and validates; :mod:`samtykke_gateway.scoping.package` compiles the result
into the walk. The language is documented in :mod:`samtykke_gateway.scoping.package`.

Every error is a :class:`~samtykke_gateway.exceptions.ConfigError` whose ``key_path`` names
the exact key (``rights_packages.inntekt-sbl.rows[0].where``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from samtykke_gateway.exceptions import ConfigError

__all__ = ["EACH", "SUBTREE", "PackageSpec", "RowFilterSpec", "Step", "parse_package", "parse_path"]

#: A path step: a member name, or :data:`EACH` for ``[]`` ("each element of this array").
Step = str | None
EACH: Final = None
#: The ending of a field path that releases the whole subtree there (``navn.*``, ``lan[].*``).
SUBTREE: Final = ".*"

_PACKAGE_KEYS: Final = frozenset({"description", "fields", "rows"})
_PREDICATE_KEYS: Final = ("in", "in_file", "not_in", "equals", "within_period")
_ROW_KEYS: Final = frozenset({"path", "where", *_PREDICATE_KEYS})


@dataclass(frozen=True, slots=True)
class RowFilterSpec:
    """One validated ``[[rows]]`` entry.

    :param array: steps of ``path`` (always ending with :data:`EACH`).
    :param where: member names from the row to the compared value; ``()`` = the row itself.
    :param op: ``"in"`` (also for ``in_file``), ``"not_in"``, ``"equals"`` or ``"within_period"``.
    :param values: the strings compared against (empty for ``within_period``).
    """

    path: str
    array: tuple[Step, ...]
    where: tuple[str, ...]
    op: str
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """A validated ``[rights_packages.<name>]`` table: field paths and row filters, in order.

    ``fields``: ``(text as written, steps)``; ``subtrees``: the texts among them written with a
    trailing ``.*`` (their steps leave it out), which release the whole subtree; every other
    field path releases a leaf value only.
    """

    fields: tuple[tuple[str, tuple[Step, ...]], ...]
    rows: tuple[RowFilterSpec, ...]
    description: str
    subtrees: frozenset[str] = frozenset()


def parse_path(text: object, key_path: str) -> tuple[Step, ...]:
    """Parse one path (``a[].b.c``, ``[].a``) into steps; :data:`EACH` stands for ``[]``.

    :raises ConfigError: not a string, empty, an empty segment (``a..b``, ``a.``), a ``[`` or
        ``]`` that is not a trailing ``[]`` pair (``a[0]``, ``a[]b``), or a name with
        surrounding whitespace.
    """
    if not isinstance(text, str):
        raise ConfigError(key_path, f"must be a string, not {type(text).__name__}")
    if not text:
        raise ConfigError(key_path, "must not be empty")
    steps: list[Step] = []
    rest = text
    while rest.startswith("[]"):  # a bare [] at the start: the top-level array
        steps.append(EACH)
        rest = rest[2:]
    if steps:
        if not rest:
            return tuple(steps)
        if not rest.startswith("."):
            raise ConfigError(key_path, f"{text!r}: expected '.' or '[]' after a leading '[]'")
        rest = rest[1:]
    for segment in rest.split("."):
        name = segment
        each = 0
        while name.endswith("[]"):
            name = name[:-2]
            each += 1
        if not name:
            raise ConfigError(key_path, f"{text!r}: empty member name")
        if "[" in name or "]" in name:
            raise ConfigError(key_path, f"{text!r}: '[]' may only follow a member name")
        if name != name.strip():
            raise ConfigError(key_path, f"{text!r}: member name {name!r} has surrounding space")
        if name == "*":
            raise ConfigError(key_path, f"{text!r}: '*' only ends a field path ('.*': the whole subtree)")
        steps.append(name)
        steps.extend([EACH] * each)
    return tuple(steps)


def _string_list(value: object, key_path: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(key_path, f"must be a list of strings, not {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{key_path}[{index}]", "must be a string")
    return list(value)


def _integers_as_text(value: Any) -> Any:
    """``in = [2020, 2021]`` / ``equals = 2021``: TOML integers as their decimal text (a row's
    integer compares by its text); anything else unchanged (then refused as not a string)."""
    if isinstance(value, list):
        return [_integers_as_text(item) for item in value]
    return str(value) if type(value) is int else value


def _read_values_file(value: object, base_dir: Path, key_path: str) -> list[str]:
    """One value per line; lines starting with ``#`` and blank lines ignored; lines stripped."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key_path, "must be a non-empty file name")
    from samtykke_gateway.config_text import read_config_text

    text = read_config_text(base_dir / value, key_path)
    values = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            values.append(line)
    return values


def _parse_row(row: object, base_dir: Path, key_path: str) -> RowFilterSpec:
    if not isinstance(row, Mapping):
        raise ConfigError(key_path, "must be a table")
    for key in row:
        if key not in _ROW_KEYS:
            raise ConfigError(f"{key_path}.{key}", "unknown key")
    if "path" not in row:
        raise ConfigError(f"{key_path}.path", "missing")
    array = parse_path(row["path"], f"{key_path}.path")
    if array[-1] is not EACH:
        raise ConfigError(f"{key_path}.path", "must name array rows (end with '[]')")
    where: tuple[str, ...] = ()
    if "where" in row:
        where_steps = parse_path(row["where"], f"{key_path}.where")
        if EACH in where_steps:
            raise ConfigError(f"{key_path}.where", "must not contain '[]'")
        where = tuple(step for step in where_steps if step is not None)
    present = [key for key in _PREDICATE_KEYS if key in row]
    if len(present) != 1:
        raise ConfigError(
            key_path, f"needs exactly one of {', '.join(_PREDICATE_KEYS)}; has {present or 'none'}"
        )
    (op,) = present
    value = row[op]
    values: list[str] = []
    if op in ("in", "not_in"):
        values = _string_list(_integers_as_text(value), f"{key_path}.{op}")
    elif op == "in_file":
        values = _read_values_file(value, base_dir, f"{key_path}.in_file")
        op = "in"
    elif op == "equals":
        value = _integers_as_text(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key_path}.equals", "must be a string or an integer")
        values = [value]
    elif value is not True:
        raise ConfigError(f"{key_path}.within_period", "must be true (omit the key otherwise)")
    return RowFilterSpec(str(row["path"]), array, where, op, frozenset(values))


def parse_package(table: object, *, base_dir: Path, key_path: str) -> PackageSpec:
    """Validate a ``[rights_packages.<name>]`` table (see :mod:`samtykke_gateway.scoping.package`).

    :param base_dir: directory that relative ``in_file`` names are resolved against.
    :raises ConfigError: unknown key, wrong type, bad path, unreadable values file.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(key_path, "must be a table")
    for key in table:
        if key not in _PACKAGE_KEYS:
            raise ConfigError(f"{key_path}.{key}", "unknown key")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{key_path}.description", "must be a string")
    if "fields" not in table:
        raise ConfigError(f"{key_path}.fields", "missing (list the released field paths)")
    raw_fields = _string_list(table["fields"], f"{key_path}.fields")
    if not raw_fields:
        raise ConfigError(f"{key_path}.fields", "must name at least one path")
    fields = tuple(
        (text, parse_path(text[:-2] if text.endswith(SUBTREE) else text, f"{key_path}.fields[{index}]"))
        for index, text in enumerate(raw_fields)
    )
    subtrees = frozenset(text for text in raw_fields if text.endswith(SUBTREE))
    raw_rows: Any = table.get("rows", [])
    if not isinstance(raw_rows, list):
        raise ConfigError(f"{key_path}.rows", "must be an array of tables ([[...rows]])")
    rows = tuple(
        _parse_row(row, base_dir, f"{key_path}.rows[{index}]") for index, row in enumerate(raw_rows)
    )
    return PackageSpec(fields, rows, description, subtrees)
