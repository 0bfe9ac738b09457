"""Compile a validated rights package into one tree of closures (see :mod:`.scoping`).

Each tree node becomes ``walk(value, context, released) -> value | DROP``. A member or
element released whole with nothing to filter inside is not a closure but its field path (a
``str``) in the parent's plan: the parent copies the reference and records the path, so the
common leaf costs a dict lookup instead of a call. Everything here runs per request; the
shapes are chosen for speed (measured with ``bench/bench_scoping.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.scoping.exact_json import JsonNumber
from samtykke_gateway.scoping.paths import EACH, PackageSpec, RowFilterSpec, Step

if TYPE_CHECKING:
    from samtykke_gateway.scoping.package import ScopeContext

__all__ = ["DROP", "Released", "Walk", "compile_package"]

DROP: Final = object()  # "this branch is dropped"


class Released(set[str]):
    """The ``released`` set a walk fills (field paths with a value in the answer), plus
    ``withheld``: row-filter path → rows removed whole (docs/protocol.md §6, §7)."""

    __slots__ = ("withheld",)

    def __init__(self) -> None:
        super().__init__()
        self.withheld: dict[str, int] = {}


def _note_withheld(released: set[str], rows_path: str, count: int) -> None:
    """Count ``count`` rows of ``rows_path`` removed by a row filter (only on a :class:`Released`)."""
    withheld = getattr(released, "withheld", None)
    if withheld is not None:
        withheld[rows_path] = withheld.get(rows_path, 0) + count
class _Subtree:
    """A plan entry released whole whatever it holds (a field path written ``path.*``)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


#: the classes of a JSON scalar as the decoders give it (JsonNumber: exact_json's numbers)
_SCALARS: Final = frozenset({str, int, float, bool, type(None), JsonNumber})


def _is_leaf(value: Any) -> bool:
    """A leaf value: a JSON scalar, or an array holding no object (at any depth). What a field
    path without ``.*`` releases; an object there contradicts the path and is dropped."""
    cls = value.__class__
    if cls in _SCALARS:
        return True
    if cls is list:
        for item in value:  # noqa: SIM110 - a plain loop is faster than all(<genexpr>)
            if item.__class__ not in _SCALARS and not _is_leaf(item):
                return False
        return True
    return False


Walk: TypeAlias = Callable[[Any, "ScopeContext", set[str]], Any]
_Predicate: TypeAlias = Callable[[Any, "ScopeContext"], bool]
#: a field path released as a leaf value (``str``), one released whole (:class:`_Subtree`),
#: or a closure
_Entry: TypeAlias = "str | _Subtree | Walk"

_PERIOD_VALUE: Final = re.compile(r"([0-9]{4})-([0-9]{2})(?:-([0-9]{2}))?", re.ASCII)


def _month_in_period(value: str, context: ScopeContext) -> bool:
    """``YYYY-MM`` or calendar-valid ``YYYY-MM-DD`` whose month is in the context's period."""
    start, end = context.period_from, context.period_to
    if start is None or end is None:
        return False
    match = _PERIOD_VALUE.fullmatch(value)
    if match is None:
        return False
    year, month, day = match.groups()
    try:
        date(int(year), int(month), int(day or "1"))
    except ValueError:
        return False
    return start <= value[:7] <= end


def _filter_text(value: Any) -> str | None:
    """What an ``in`` / ``not_in`` / ``equals`` filter compares for a value that is not a JSON
    string: an integer as its decimal text (``2021`` matches ``"2021"``; the exact decoder's
    :class:`JsonNumber` of an integer literal alike); anything else (a fraction or exponent,
    ``true``, ``null``, an object) ``None``, which fails every filter — whichever decoder read
    the body."""
    cls = value.__class__
    if cls is int:
        return str(value)
    if cls is JsonNumber:  # the exact decoder's number: an integer literal only, as the fast decoder's int
        literal = str(value.literal)
        return literal if literal.lstrip("-").isdigit() else None
    return None


def _predicate(spec: RowFilterSpec) -> _Predicate:
    """``test(row, context)``: True keeps the row. A string compares as it is, an integer as its
    text (:func:`_filter_text`); other values fail every filter (``within_period``: strings only).

    The ``where`` path is followed inline (a call per row is most of a filter's cost).
    """
    values = spec.values
    where = spec.where
    if spec.op == "within_period":

        def within_period(row: Any, context: ScopeContext) -> bool:
            for name in where:
                if not isinstance(row, dict):
                    return False
                row = row.get(name)
            return isinstance(row, str) and _month_in_period(row, context)

        return within_period
    keep_if_in = spec.op != "not_in"  # "in", "in_file", "equals" keep a value in ``values``
    if len(where) == 1:  # the common shape
        (member,) = where

        def member_in(row: Any, context: ScopeContext) -> bool:
            if not isinstance(row, dict):
                return False
            value = row.get(member)
            if value.__class__ is not str:
                value = _filter_text(value)
                if value is None:
                    return False
            return (value in values) is keep_if_in

        return member_in

    def value_in(row: Any, context: ScopeContext) -> bool:
        for name in where:
            if not isinstance(row, dict):
                return False
            row = row.get(name)
        text = row if row.__class__ is str else _filter_text(row)
        return text is not None and (text in values) is keep_if_in

    return value_in


def _all_of(tests: list[_Predicate]) -> _Predicate | None:
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]

    def all_of(row: Any, context: ScopeContext) -> bool:
        for test in tests:  # noqa: SIM110 - a plain loop is faster than all(<genexpr>)
            if not test(row, context):
                return False
        return True

    return all_of


class _Node:
    """Build-time tree node."""

    __slots__ = ("each", "filters", "full", "members", "path", "subtree")

    def __init__(self, *, full: bool = False) -> None:
        self.full = full
        self.subtree = False  # full by a ``path.*``: released whatever it holds
        self.path: str | None = None
        self.members: dict[str, _Node] = {}
        self.each: _Node | None = None
        self.filters: list[RowFilterSpec] = []

    def child(self, step: Step) -> _Node | None:
        return self.each if step is EACH else self.members.get(step)

    def add_child(self, step: Step, node: _Node) -> _Node:
        if step is EACH:
            self.each = node
        else:
            self.members[step] = node
        return node

    def has_filters(self) -> bool:
        return bool(self.filters) or any(
            child.has_filters() for child in (*self.members.values(), self.each) if child
        )


def compile_package(spec: PackageSpec, key_path: str) -> Walk:
    """Build the tree for ``spec`` and compile it into the root closure.

    :raises ConfigError: a row filter whose rows no field reaches
        (``<key_path>.rows[i].path``); a field path without ``.*`` (a leaf value) with another
        field path or a row filter inside it (``<key_path>.fields``).
    """
    root = _Node()
    leaves: dict[int, _Node] = {}  # id -> full nodes released as leaf values
    for text, steps in spec.fields:
        node = root
        for step in steps:
            node = node.child(step) or node.add_child(step, _Node(full=node.full))
        if not node.full:  # else absorbed by a released ancestor
            node.full = True
            node.path = text
            node.subtree = text in spec.subtrees
            if not node.subtree:
                leaves[id(node)] = node
        elif node.path is not None and text in spec.subtrees:  # the same path also as path.*
            node.subtree = True
            node.path = text
            leaves.pop(id(node), None)
    for index, row in enumerate(spec.rows):
        node = array = root
        for step in row.array:
            found = node.child(step)
            if found is None:
                if not node.full:
                    raise ConfigError(
                        f"{key_path}.rows[{index}].path",
                        f"{row.path!r}: no field reaches these rows",
                    )
                found = node.add_child(step, _Node(full=True))
            array, node = node, found
        array.filters.append(row)
        if row.where and id(node) in leaves:
            raise ConfigError(
                f"{key_path}.rows[{index}].where",
                f"{row.path!r}: rows compared by a member are objects, but {node.path!r} releases leaf values"
                f" only: name the rows' fields ({node.path}.x), or, only if each whole row may leave, write"
                f" {f'{node.path}.*'!r}",
            )
    for node in leaves.values():
        if node.members or node.each is not None:
            raise ConfigError(
                f"{key_path}.fields",
                f"{node.path!r} releases a leaf value, but another field or row filter names something inside"
                f" it: drop {node.path!r} (the fields named inside it are released; nothing else is), or, only"
                f" if everything under it may leave, including what the upstream adds later, write"
                f" {f'{node.path}.*'!r}",
            )
    walk = _compile(root, False)
    if not callable(walk):  # pragma: no cover - paths are never empty
        raise ConfigError(f"{key_path}.fields", "cannot release the whole document")
    return walk


def _compile(node: _Node, inherited_full: bool) -> _Entry:
    full = node.full or inherited_full
    path = node.path if node.full and not inherited_full else None
    # under a released path only the ways to row filters need walking: the rest is copied
    members = {
        name: _compile(child, full)
        for name, child in node.members.items()
        if not full or child.has_filters()
    }
    each = None
    if node.each is not None and (not full or node.each.has_filters()):
        each = _compile(node.each, full)
    test = _all_of([_predicate(spec) for spec in node.filters])
    rows_path = node.filters[0].path if node.filters else ""  # "" : nothing to count
    if full and not members and each is None and test is None:
        if path and node.subtree:
            return _Subtree(path)
        return path or ""  # "" only for absorbed nodes, which the parent never keeps
    if not full and each is None:
        return _object_walk(members)
    if not full and not members:
        element = node.each
        if element is not None and not element.full and element.each is None:
            # rows that are objects (the common case): one closure for the array and its rows
            plan = {name: _compile(child, False) for name, child in element.members.items()}
            (spec,) = node.filters if len(node.filters) == 1 else (None,)
            if spec is not None and len(spec.where) == 1 and spec.op != "within_period":
                return _rows_of_objects(plan, None, (spec.where[0], spec.values, spec.op), rows_path=rows_path)
            return _rows_of_objects(plan, test, rows_path=rows_path)
        return _array_walk(each, test, rows_path)
    return _general_walk(full, path, members or None, each, test, rows_path)


def _only_leaves(plan: dict[str, _Entry]) -> bool:
    """Every entry a field path (a leaf value or a subtree): no closures to call."""
    return all(entry.__class__ is str or entry.__class__ is _Subtree for entry in plan.values())


def _object_walk(plan: dict[str, _Entry]) -> Walk:
    plan_get = plan.get
    if _only_leaves(plan):  # every member released whole: no closures to call

        def walk_leaves(value: Any, context: ScopeContext, released: set[str]) -> Any:
            if not isinstance(value, dict):
                return DROP
            out = {}
            add = released.add
            for name, item in value.items():
                path = plan_get(name)
                if path is not None:
                    if path.__class__ is str:
                        if item.__class__ not in _SCALARS and not _is_leaf(item):
                            continue  # an object where the path releases a leaf: dropped
                        add(path)  # type: ignore[arg-type]
                    else:
                        add(path.path)  # type: ignore[union-attr]
                    out[name] = item
            return out

        return walk_leaves

    def walk_object(value: Any, context: ScopeContext, released: set[str]) -> Any:
        if not isinstance(value, dict):
            return DROP
        out = {}
        for name, item in value.items():
            entry = plan_get(name)
            if entry is None:
                continue
            cls = entry.__class__
            if cls is str:
                if item.__class__ in _SCALARS or _is_leaf(item):
                    out[name] = item
                    released.add(entry)  # type: ignore[arg-type]
            elif cls is _Subtree:
                out[name] = item
                released.add(entry.path)  # type: ignore[union-attr]
            else:
                result = entry(item, context, released)  # type: ignore[operator]
                if result is not DROP:
                    out[name] = result
        return out

    return walk_object


def _rows_of_objects(
    plan: dict[str, _Entry],
    test: _Predicate | None,
    member_filter: tuple[str, frozenset[str], str] | None = None,
    *,
    rows_path: str = "",
) -> Walk:
    """``_array_walk(_object_walk(plan), test)`` in one closure (a call less per row).

    :param member_filter: ``(member, values, op)``, the common row filter (one member, ``in``
        / ``not_in`` / ``equals``) done inline instead of ``test``.
    """
    plan_get = plan.get
    member, values, op = member_filter or ("", frozenset(), "")
    keep_if_in = op != "not_in"
    if member_filter is not None:

        def walk_filtered_rows(value: Any, context: ScopeContext, released: set[str]) -> Any:
            if not isinstance(value, list):
                return DROP
            rows = []
            add = released.add
            for row in value:
                if not isinstance(row, dict):
                    continue
                kept = row.get(member)
                if kept.__class__ is not str:
                    kept = _filter_text(kept)
                    if kept is None:
                        continue
                if (kept in values) is not keep_if_in:
                    continue
                out = {}
                for name, item in row.items():
                    entry = plan_get(name)
                    if entry is None:
                        continue
                    cls = entry.__class__
                    if cls is str:
                        if item.__class__ in _SCALARS or _is_leaf(item):
                            out[name] = item
                            add(entry)  # type: ignore[arg-type]
                    elif cls is _Subtree:
                        out[name] = item
                        add(entry.path)  # type: ignore[union-attr]
                    else:
                        result = entry(item, context, released)  # type: ignore[operator]
                        if result is not DROP:
                            out[name] = result
                rows.append(out)
            if len(rows) != len(value):
                _note_withheld(released, rows_path, len(value) - len(rows))
            return rows

        return walk_filtered_rows
    if _only_leaves(plan):

        def walk_rows_of_leaves(value: Any, context: ScopeContext, released: set[str]) -> Any:
            if not isinstance(value, list):
                return DROP
            rows = []
            add = released.add
            for row in value:
                if not isinstance(row, dict) or (test is not None and not test(row, context)):
                    continue
                out = {}
                for name, item in row.items():
                    path = plan_get(name)
                    if path is not None:
                        if path.__class__ is str:
                            if item.__class__ not in _SCALARS and not _is_leaf(item):
                                continue  # an object where the path releases a leaf: dropped
                            add(path)  # type: ignore[arg-type]
                        else:
                            add(path.path)  # type: ignore[union-attr]
                        out[name] = item
                rows.append(out)
            if rows_path and len(rows) != len(value):
                _note_withheld(released, rows_path, len(value) - len(rows))
            return rows

        return walk_rows_of_leaves

    def walk_rows_of_objects(value: Any, context: ScopeContext, released: set[str]) -> Any:
        if not isinstance(value, list):
            return DROP
        rows = []
        add = released.add
        for row in value:
            if not isinstance(row, dict) or (test is not None and not test(row, context)):
                continue
            out = {}
            for name, item in row.items():
                entry = plan_get(name)
                if entry is None:
                    continue
                cls = entry.__class__
                if cls is str:
                    if item.__class__ in _SCALARS or _is_leaf(item):
                        out[name] = item
                        add(entry)  # type: ignore[arg-type]
                elif cls is _Subtree:
                    out[name] = item
                    add(entry.path)  # type: ignore[union-attr]
                else:
                    result = entry(item, context, released)  # type: ignore[operator]
                    if result is not DROP:
                        out[name] = result
            rows.append(out)
        if rows_path and len(rows) != len(value):
            _note_withheld(released, rows_path, len(value) - len(rows))
        return rows

    return walk_rows_of_objects


def _array_walk(each: _Entry | None, test: _Predicate | None, rows_path: str = "") -> Walk:
    if isinstance(each, (str, _Subtree)):
        whole = each.__class__ is _Subtree
        path: str = each.path if isinstance(each, _Subtree) else each

        def walk_rows_whole(value: Any, context: ScopeContext, released: set[str]) -> Any:
            if not isinstance(value, list):
                return DROP
            rows = value if test is None else [row for row in value if test(row, context)]
            if rows_path and len(rows) != len(value):
                _note_withheld(released, rows_path, len(value) - len(rows))
            if not whole:  # leaf values only: an object element contradicts the path, dropped
                rows = [row for row in rows if row.__class__ in _SCALARS or _is_leaf(row)]
            if rows:
                released.add(path)
            return list(rows) if rows is value else rows

        return walk_rows_whole
    if each is None:  # pragma: no cover - a filter's rows are always reached
        raise ValueError("array node without elements")
    walk_each = each

    def walk_rows(value: Any, context: ScopeContext, released: set[str]) -> Any:
        if not isinstance(value, list):
            return DROP
        out = []
        for row in value:
            if test is not None and not test(row, context):
                continue
            result = walk_each(row, context, released)
            if result is not DROP:
                out.append(result)
        if rows_path and len(out) != len(value):
            _note_withheld(released, rows_path, len(value) - len(out))
        return out

    return walk_rows


def _general_walk(
    full: bool,
    path: str | None,
    members: dict[str, _Entry] | None,
    each: _Entry | None,
    test: _Predicate | None,
    rows_path: str = "",
) -> Walk:
    """Released whole with row filters inside, or a member used as both object and array."""
    takes_lists = each is not None or (full and test is not None)
    walk_object = _object_walk(members) if members is not None and not full else None
    walk_array = _array_walk(each, test, rows_path) if each is not None else None

    def walk(value: Any, context: ScopeContext, released: set[str]) -> Any:
        out: Any
        if isinstance(value, dict):
            if members is None:
                return DROP
            if walk_object is not None:
                return walk_object(value, context, released)
            out = dict(value)
            for name, entry in members.items():  # full: entries are closures
                if name in value:
                    result = entry(value[name], context, released)  # type: ignore[operator]
                    if result is DROP:
                        del out[name]
                    else:
                        out[name] = result
        elif isinstance(value, list):
            if not takes_lists:
                return DROP
            if walk_array is not None:
                out = walk_array(value, context, released)
            else:
                out = [row for row in value if test(row, context)]  # type: ignore[misc]
                if rows_path and len(out) != len(value):
                    _note_withheld(released, rows_path, len(value) - len(out))
        elif full:  # a scalar holds no rows: the released path releases it
            out = value
        else:
            return DROP
        if path is not None:
            released.add(path)
        return out

    return walk
