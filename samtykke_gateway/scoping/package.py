"""Response scoping: what of an upstream JSON body leaves the data source (docs/protocol.md §6).

A *rights package* is deny-by-default field projection plus whole-row filters. It is read
from the TOML table ``[rights_packages.<name>]`` (see ``config/rights_packages.example.toml``)
and compiled once into a tree; :meth:`RightsPackage.apply` is then one recursive walk over
the decoded document, and :func:`scope_body` wraps it with an exact decode/encode
(:mod:`samtykke_gateway.scoping.exact_json`: numbers leave with the exact text they came with;
orjson when a guard proves it exact, the stdlib with exact numbers otherwise).

Path language
-------------
A path is dot-separated member names. ``[]`` after a name means "each element of this
array"; a bare ``[]`` at the start is the top-level array; ``a[][]`` is each element of each
element. Example: ``oppgaveInntektsmottaker[].inntekt[].loennsinntekt.beskrivelse``. Member
names cannot contain ``.``, ``[`` or ``]`` and have no surrounding whitespace.

``fields = [...]`` (required, at least one path) is the allow-list:

- Naming a path releases the *leaf value* there: a string, number, boolean, ``null``, or an
  array holding no object (at any depth). An object there, or an array holding one,
  contradicts the path and is dropped (an element of ``x[]`` on its own). Writing the path
  with a trailing ``.*`` (``navn.*``, ``lan[].*``) releases the whole subtree there, whatever
  it holds. A leaf path with another field path or a row filter inside it is a config error.
  Everything not on or under an allowed path is dropped.
- Objects and arrays on the way to an allowed path are kept, holding only what is allowed
  (an object on the way whose allowed members are all absent comes out as ``{}``). Arrays
  traversed with ``[]`` keep their element order; object members keep the input order.
- A member absent in the input stays absent (never invented).
- A value whose type contradicts the path is dropped, never an error: ``x[]`` when ``x`` is an
  object drops ``x``; ``x.y`` when ``x`` is an array drops ``x``; an element of ``x[]`` that is
  not an object when the path goes on (``x[].y``) is dropped from the array. If the top-level
  value itself contradicts every path, the result is ``null``.

``[[rows]]`` (optional) are row filters; each is a table with

- ``path``: an array's rows, ending with ``[]`` (``oppgaveInntektsmottaker[].inntekt[]``).
  The rows must be reachable through ``fields`` (on the way to, or under, an allowed path).
- ``where``: a path of member names relative to the row (no ``[]``); omitted = the row itself.
- exactly one of ``in = ["a", ...]``, ``in_file = "values.txt"`` (one value per line,
  stripped; lines starting with ``#`` and blank lines ignored; relative to the config file's
  directory), ``not_in = [...]``, ``equals = "v"``, or ``within_period = true`` (the value is
  ``YYYY-MM`` or a calendar-valid ``YYYY-MM-DD`` whose month lies within
  :attr:`ScopeContext.period_from` .. :attr:`ScopeContext.period_to`, inclusive; a missing
  bound removes the row: fail closed).

Values compare as exact strings (case-sensitive, no Unicode normalisation); a JSON integer in
a row compares as its decimal text, and a TOML integer in ``in`` / ``not_in`` / ``equals`` is
its text too. A row failing a filter is removed whole. A row whose ``where`` value is missing
or neither a string nor an integer fails every filter (also ``not_in``); ``within_period``
reads strings only. Several filters on the same array all apply
(AND). Filters read the input row, so a ``where`` field need not be released; scoping is
idempotent only when it is. Under a wholly released path, a filter still applies, and an
object or array on the filter's path whose type contradicts it is dropped (fail closed: it
might hold rows the filter never saw); a scalar there is released.

``released_paths`` lists the ``fields`` entries (as written, ``.*`` included) for which at
least one value is in the output; a path under a released subtree is absorbed by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from samtykke_gateway.exceptions import UpstreamError
from samtykke_gateway.scoping.exact_json import (
    INEXACT,
    JsonNumber,
    decode_fast,
    decode_json,
    encode_fast,
    encode_json,
)
from samtykke_gateway.scoping.paths import RowFilterSpec, parse_package
from samtykke_gateway.scoping.tree import DROP, Released, Walk, compile_package

__all__ = ["JsonNumber", "RightsPackage", "ScopeContext", "ScopedBody", "scope_body"]

_MONTH: Final = re.compile(r"[0-9]{4}-(?:0[1-9]|1[0-2])", re.ASCII)


@dataclass(frozen=True, slots=True)
class ScopeContext:
    """Per-request facts the row filters may use.

    :param period_from: first month released, ``"YYYY-MM"`` (the consented / effective period
        start; income API ``fraOgMed``, docs/protocol.md §5). ``None``: ``within_period`` rows are removed.
    :param period_to: last month released, ``"YYYY-MM"``, inclusive.
    :raises ValueError: a bound that is not ``YYYY-MM`` with month ``01``..``12``.
    """

    period_from: str | None = None
    period_to: str | None = None
    #: the request's data subject and where the answer names it (route ``response_subject``):
    #: every value at ``subject_path`` must be exactly ``subject``
    subject: str | None = None
    subject_path: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("period_from", "period_to"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and _MONTH.fullmatch(value)):
                raise ValueError(f"{name} must be 'YYYY-MM', got {value!r}")


@dataclass(frozen=True, slots=True)
class ScopedBody:
    """A scoped response body.

    :param body: compact UTF-8 JSON.
    :param released_paths: sorted, de-duplicated ``fields`` paths with a value in ``body``.
    :param rows_withheld: rows a row filter removed whole, per filter path.
    """

    body: bytes
    released_paths: tuple[str, ...]
    #: ``(row-filter path, rows removed whole)``, sorted; empty when no row was withheld
    rows_withheld: tuple[tuple[str, int], ...] = ()


class RightsPackage:
    """A compiled rights package (docs/protocol.md §6): deny-by-default projection plus row filters.

    Build with :meth:`from_config`. Immutable and thread-safe; compile once, apply per request.
    The path language is described in this module's docstring.
    """

    __slots__ = ("_walk", "description", "fields", "name", "row_filters")

    def __init__(self, name: str, *, walk: Walk, fields: tuple[str, ...], description: str,
                 row_filters: tuple[str, ...] = ()):
        self.name = name
        self.fields = fields
        self.description = description
        #: one line per ``[[rows]]`` filter, for people (``check-config``): which rows, the
        #: test, how many values
        self.row_filters = row_filters
        self._walk = walk

    @classmethod
    def from_config(
        cls, name: str, table: Mapping[str, Any], *, base_dir: Path, key_path: str
    ) -> RightsPackage:
        """Compile the TOML table ``[rights_packages.<name>]``.

        :param table: keys ``fields`` (list of paths, required), ``rows`` (array of tables,
            optional), ``description`` (string, optional); nothing else.
        :param base_dir: directory relative ``in_file`` names are resolved against (normally
            the config file's directory).
        :param key_path: where ``table`` sits, e.g. ``"rights_packages.inntekt-sbl"``.
        :raises ConfigError: unknown key, wrong type, bad path, unreadable ``in_file``, or a
            row filter whose rows no field reaches; ``key_path`` names the exact key
            (``rights_packages.inntekt-sbl.rows[0].where``).
        """
        spec = parse_package(table, base_dir=base_dir, key_path=key_path)
        walk = compile_package(spec, key_path)
        fields = tuple(text for text, _steps in spec.fields)
        return cls(name, walk=walk, fields=fields, description=spec.description,
                   row_filters=tuple(_describe_row_filter(row) for row in spec.rows))

    def apply(self, document: Any, context: ScopeContext) -> tuple[Any, tuple[str, ...]]:
        """Scope a decoded JSON document; a pure function that never raises.

        :param document: ``dict`` / ``list`` / scalars as from :func:`json.loads` or
            :func:`~samtykke_gateway.scoping.exact_json.decode_json`.
        :returns: ``(scoped, released_paths)``. ``scoped`` is new containers along the
            package's paths, but wholly released subtrees are shared with ``document``:
            treat both as read-only. ``null`` when the top-level value contradicts the package.
        """
        scoped, released, _withheld = self.apply_counted(document, context)
        return scoped, released

    def apply_counted(
        self, document: Any, context: ScopeContext
    ) -> tuple[Any, tuple[str, ...], tuple[tuple[str, int], ...]]:
        """:meth:`apply`, plus the rows each row filter removed whole:
        ``(scoped, released_paths, ((filter path, rows withheld), ...))`` (sorted)."""
        released = Released()
        scoped = self._walk(document, context, released)
        if scoped is DROP:
            return None, (), ()
        return scoped, tuple(sorted(released)), tuple(sorted(released.withheld.items()))

    def __repr__(self) -> str:
        return f"RightsPackage({self.name!r}, fields={list(self.fields)!r})"


def _describe_row_filter(row: RowFilterSpec) -> str:
    """``"rows of a[] kept where b.c (a string or an integer) in 12 values ('x', 'y', 'z', ...)"``: at most
    three of the values (a list may be long)."""
    subject = ".".join(row.where) if row.where else "the row"
    if row.op == "within_period":
        test = "lies within the consented period"
    else:
        word = {"in": "in", "not_in": "not in", "equals": "equals"}.get(row.op, row.op)
        count = len(row.values)
        shown = sorted(row.values)[:3]
        listed = ", ".join(repr(v) for v in shown) + (", ..." if count > 3 else "")
        test = f"(a string or an integer) {word} {count} value{'s' if count != 1 else ''} ({listed})"
    return f"rows of {row.path} kept where {subject} {test}; other rows withheld whole"


def scope_body(
    body: bytes, package: RightsPackage, context: ScopeContext, *, max_depth: int = 64
) -> ScopedBody:
    """Decode an upstream JSON body, apply ``package``, encode the result compactly.

    :param body: the (decompressed) upstream body, UTF-8 JSON without BOM (RFC 8259).
    :param max_depth: most nested arrays/objects accepted.
    :returns: compact UTF-8 JSON with numbers exactly as they came, and the released paths.
    :raises UpstreamError: ``reason="upstream_body_not_json"`` when ``body`` is not UTF-8
        JSON or nests deeper than ``max_depth``.
    """
    if body.__class__ is not bytes:
        body = bytes(body)
    document = decode_fast(body, max_depth=max_depth)
    if document is INEXACT:  # numbers orjson would change, or a body it refuses
        document = decode_json(body, max_depth=max_depth)
        scoped, released, withheld = package.apply_counted(document, context)
        if context.subject_path is not None and scoped is not None:  # (None: wrong shape, said later)
            check_response_subject(document, context.subject_path, context.subject, raw=body)
        return ScopedBody(encode_json(scoped, source=body), released, withheld)
    scoped, released, withheld = package.apply_counted(document, context)
    if context.subject_path is not None and scoped is not None:  # (None: wrong shape, said later)
        check_response_subject(document, context.subject_path, context.subject, raw=body)
    return ScopedBody(encode_fast(scoped), released, withheld)


def check_response_subject(
    document: Any, path: tuple[str | None, ...], subject: str | None, *, raw: bytes | None = None
) -> None:
    """Defence in depth against an upstream that answers about someone else (a cache or
    routing bug): every value ``path`` reaches in ``document`` must be the string ``subject``.
    A member missing on the way, or a non-array where the path says ``[]``, is a mismatch; an
    empty array is not (no rows, nobody named).

    :param raw: the body ``document`` was decoded from. A JSON object that repeats a member
        name keeps only the last value when decoded, so ``{"id": "other", "id": "asked"}``
        would pass on the decoded value alone: with ``raw`` given, a body that could repeat a
        member on the path (any member name on the path occurs quoted more often than the path
        found it, or the body has escapes) is read again strictly, and any repeated name is a
        mismatch.
    :raises UpstreamError: (502, ``upstream_subject_mismatch``); the body is not released.
    """
    nodes = [document]
    found: list[tuple[str, int]] = []  # (member name, how many objects on the path held it)
    for step in path:
        following = []
        for node in nodes:
            if step is None:  # EACH
                if not isinstance(node, list):
                    raise _subject_mismatch()
                following.extend(node)
            elif isinstance(node, dict) and step in node:
                following.append(node[step])
            else:
                raise _subject_mismatch()
        if step is not None:
            found.append((step, len(following)))
        nodes = following
    for value in nodes:
        if value.__class__ is not str or value != subject:
            raise _subject_mismatch()
    # any name on the path quoted more often than the path found it: an earlier copy of a
    # repeated member could hold what a reader taking the first value reads (or the name occurs
    # elsewhere too, and the strict re-read finds nothing)
    if raw is not None and (not found or b"\\" in raw or any(
        raw.count(b'"' + name.encode("utf-8") + b'"') != count for name, count in found
    )):
        _refuse_repeated_members(raw)


def _refuse_repeated_members(raw: bytes) -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise _subject_mismatch()
        return out

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:  # decoded once already; a second reader disagreeing is a mismatch too
        raise _subject_mismatch() from None


def _subject_mismatch() -> UpstreamError:
    return UpstreamError("the data API answered about another data subject", reason="upstream_subject_mismatch")
