"""Properties of response scoping (hypothesis): what leaves is always a part of what came in.

- the output is a sub-document of the input (members a subset, rows an ordered subsequence,
  scalars identical);
- no path outside the package appears in the output;
- scoping is idempotent (when the ``where`` fields are themselves released);
- numbers and strings leave exactly as they came;
- ``apply`` never raises; ``scope_body`` raises nothing but ``UpstreamError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from samtykke_gateway.exceptions import ConfigError, UpstreamError
from samtykke_gateway.scoping.package import JsonNumber, RightsPackage, ScopeContext, scope_body
from samtykke_gateway.scoping.exact_json import decode_json
from samtykke_gateway.scoping.paths import EACH, Step, parse_path

NAMES = ("a", "b", "k", "æ")
VALUES = ("x", "y", "2018-07", "2018-08-15")
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- documents --------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(VALUES),
    st.text(max_size=4),
    st.builds(JsonNumber, st.sampled_from(["1.10", "-0", "1e400", "-0.0", "2E-5"])),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    ),
    max_leaves=30,
)
small_documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=2)
    ),
    max_leaves=4,
)
# anything json.loads can produce, including NaN and floats
python_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)),
    max_leaves=40,
)

# --- packages -----------------------------------------------------------------------------


@st.composite
def path_texts(draw: st.DrawFn, *, min_size: int = 1) -> str:
    parts = []
    if draw(st.booleans()):
        parts.append("[]")
    for _ in range(draw(st.integers(min_value=min_size, max_value=3))):
        parts.append(("." if parts else "") + draw(st.sampled_from(NAMES)))
        parts.append("[]" * draw(st.sampled_from([0, 0, 1, 1, 1, 2])))
    text = "".join(parts)
    return text.lstrip(".") if not text.startswith("[]") else text


@st.composite
def package_tables(draw: st.DrawFn, *, release_where: bool = False) -> dict[str, Any]:
    fields = draw(st.lists(path_texts(), min_size=1, max_size=3))
    # row filters on arrays the fields reach: prefixes of a field ending in [], and arrays
    # on or under a wholly released path
    arrays = sorted(
        {field[: index + 2] for field in fields for index in _find_all(field, "[]")}
        | {field + "[]" for field in fields}
        | {field + ".k[]" for field in fields}
    )
    chosen = draw(st.lists(st.sampled_from(arrays), min_size=1, max_size=2))
    rows = []
    for array in draw(st.lists(st.sampled_from(chosen), max_size=3)):
        row: dict[str, Any] = {"path": array}
        where = draw(st.sampled_from([None, "k", "k", "k", "a.k"]))
        if where is not None:
            row["where"] = where
        op = draw(st.sampled_from(["in", "not_in", "equals", "within_period"]))
        if op == "equals":
            row[op] = draw(st.sampled_from(VALUES))
        elif op == "within_period":
            row[op] = True
        else:
            row[op] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=3))
        rows.append(row)
        if release_where:
            fields.append(array + ("." + where if where else ""))
    # every path written as a subtree (``.*``): these properties are about the tree walk and
    # the row filters; leaf values (paths without ``.*``) have their own properties below
    return {"fields": [field + ".*" for field in fields], "rows": rows}


def field_steps(text: str) -> tuple[Step, ...]:
    """A field path's steps (``.*`` left out)."""
    return parse_path(text.removesuffix(".*"), "f")


def _find_all(text: str, needle: str) -> list[int]:
    return [index for index in range(len(text)) if text.startswith(needle, index)]


def compile_package(table: dict[str, Any]) -> RightsPackage:
    return RightsPackage.from_config("p", table, base_dir=Path("."), key_path="rights_packages.p")


@st.composite
def shaped(draw: st.DrawFn, steps: tuple[Step, ...]) -> Any:
    """A value that mostly follows ``steps``, with rows carrying ``k`` / ``a.k`` values."""
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        return draw(small_documents)  # anything, often a value of the wrong type
    if not steps:
        if draw(st.booleans()):
            return draw(scalars)
        value: dict[str, Any] = {}
    elif steps[0] is EACH:
        return draw(st.lists(shaped(steps[1:]), min_size=1, max_size=3))
    else:
        value = {steps[0]: draw(shaped(steps[1:]))}
    for name, where in (
        ("k", st.sampled_from(VALUES)),
        ("a", st.fixed_dictionaries({"k": st.sampled_from(VALUES)})),
    ):
        if draw(st.integers(min_value=0, max_value=3)):
            value.setdefault(name, draw(where))
    return value


def merge(left: Any, right: Any) -> Any:
    if isinstance(left, dict) and isinstance(right, dict):
        merged = dict(right)
        merged.update({key: merge(value, right.get(key)) for key, value in left.items()})
        return merged
    if isinstance(left, list) and isinstance(right, list):
        longer = left if len(left) >= len(right) else right
        return [merge(*pair) for pair in zip(left, right, strict=False)] + longer[
            len(right if longer is left else left) :
        ]
    return left


@st.composite
def documents_for(draw: st.DrawFn, table: dict[str, Any]) -> Any:
    document = draw(small_documents)
    for text in [*table["fields"], *(row["path"] for row in table["rows"])]:
        document = merge(draw(shaped(field_steps(text))), document)
    return document


@st.composite
def packages_and_documents(
    draw: st.DrawFn, *, release_where: bool = False
) -> tuple[dict[str, Any], Any]:
    table = draw(package_tables(release_where=release_where))
    return table, draw(documents_for(table))


contexts = st.builds(
    ScopeContext,
    st.sampled_from([None, "2018-01", "2018-07"]),
    st.sampled_from([None, "2018-07", "2018-12"]),
)

# --- relations ----------------------------------------------------------------------------


def is_subdocument(out: Any, source: Any) -> bool:
    """``out`` is ``source`` with members and rows removed (rows keep their order)."""
    if isinstance(out, dict):
        return isinstance(source, dict) and all(
            key in source and is_subdocument(value, source[key]) for key, value in out.items()
        )
    if isinstance(out, list):
        if not isinstance(source, list):
            return False
        remaining = iter(source)  # greedy leftmost embedding of a subsequence
        return all(any(is_subdocument(item, candidate) for candidate in remaining) for item in out)
    return type(out) is type(source) and out == source


def node_paths(value: Any, prefix: tuple[Step, ...] = ()) -> set[tuple[Step, ...]]:
    paths = {prefix}
    if isinstance(value, dict):
        for key, item in value.items():
            paths |= node_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for item in value:
            paths |= node_paths(item, (*prefix, EACH))
    return paths


def allowed(path: tuple[Step, ...], fields: list[tuple[Step, ...]]) -> bool:
    """On the way to (a prefix of) or under (extending) some field path."""
    return any(field[: len(path)] == path or path[: len(field)] == field for field in fields)


# --- properties ---------------------------------------------------------------------------


@SETTINGS
@given(packages_and_documents(), contexts)
def test_output_is_a_subdocument_of_the_input(
    case: tuple[dict[str, Any], Any], context: ScopeContext
) -> None:
    table, document = case
    out, released = compile_package(table).apply(document, context)
    assert out is None or is_subdocument(out, document)
    assert set(released) <= set(table["fields"])
    assert list(released) == sorted(set(released))


@SETTINGS
@given(packages_and_documents(), contexts)
def test_no_path_outside_the_package_appears(
    case: tuple[dict[str, Any], Any], context: ScopeContext
) -> None:
    table, document = case
    fields = [field_steps(text) for text in table["fields"]]
    out, _ = compile_package(table).apply(document, context)
    for path in node_paths(out):
        assert allowed(path, fields), path


def shapes_agree(table: dict[str, Any]) -> bool:
    """No two paths of the package disagree on whether a member is an array or an object."""
    paths = [field_steps(text) for text in table["fields"]]
    kinds: dict[tuple[Step, ...], set[str]] = {}
    for row in table["rows"]:
        array = parse_path(row["path"], "p")
        where = array + tuple(row.get("where", "").split(".")) if "where" in row else array
        paths.append(where)
        kinds.setdefault(where, set()).add("string")
    for path in paths:
        for index, step in enumerate(path):
            kinds.setdefault(path[:index], set()).add("array" if step is EACH else "object")
    return all(len(kind) == 1 for kind in kinds.values())


@SETTINGS
@given(packages_and_documents(release_where=True), contexts)
def test_scoping_is_idempotent(case: tuple[dict[str, Any], Any], context: ScopeContext) -> None:
    """Holds when the where fields are released and the paths agree on shapes (else a value
    dropped for contradicting a filter path can take a where value with it)."""
    table, document = case
    assume(shapes_agree(table))
    package = compile_package(table)
    once, released_once = package.apply(document, context)
    twice, released_twice = package.apply(once, context)
    assert twice == once
    assert released_twice == released_once


@SETTINGS
@given(package_tables(), python_json, contexts)
def test_apply_never_raises_and_never_mutates(
    table: dict[str, Any], document: Any, context: ScopeContext
) -> None:
    before = repr(document)
    try:
        package = compile_package(table)
    except ConfigError:  # refused when the config is loaded (e.g. no field reaches a row filter)
        assume(False)
        return
    package.apply(document, context)
    assert repr(document) == before


# --- scope_body over JSON text --------------------------------------------------------------

number_literals = st.from_regex(r"\A-?(0|[1-9][0-9]{0,60})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?\Z")
string_literals = st.text().map(lambda text: json.dumps(text, ensure_ascii=False)) | st.text().map(
    json.dumps
)
whitespace = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])


@st.composite
def json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text with arbitrary number literals, escapes and whitespace."""
    kind = draw(st.integers(min_value=0, max_value=5 if depth < 6 else 3))
    if kind == 0:
        return draw(number_literals)
    if kind == 1:
        return draw(string_literals)
    if kind == 2:
        return draw(st.sampled_from(["true", "false", "null"]))
    if kind == 3:
        return draw(st.sampled_from(['"2018-07"', '"x"', "1.10", "-0"]))
    ws = draw(whitespace)
    if kind == 4:
        items = draw(st.lists(json_texts(depth + 1), max_size=4))
        return "[" + ws + ("," + ws).join(items) + "]"
    members = draw(st.lists(st.tuples(st.sampled_from(NAMES), json_texts(depth + 1)), max_size=4))
    return "{" + ",".join(f"{ws}{json.dumps(k)}{ws}:{v}" for k, v in members) + "}"


RELEASE_ALL = compile_package({"fields": ["v.*"]})


@SETTINGS
@given(json_texts())
def test_numbers_and_strings_leave_exactly_as_they_came(text: str) -> None:
    body = ('{"v":' + text + ', "other": 1}').encode()
    out = scope_body(body, RELEASE_ALL, ScopeContext()).body
    assert decode_json(out) == {"v": decode_json(text.encode())}
    assert json.loads(out) == {"v": json.loads(text)}


@SETTINGS
@given(package_tables(), json_texts(), contexts)
def test_scope_body_agrees_with_apply(
    table: dict[str, Any], text: str, context: ScopeContext
) -> None:
    package = compile_package(table)
    result = scope_body(text.encode(), package, context)
    expected, released = package.apply(decode_json(text.encode()), context)
    assert decode_json(result.body) == expected
    assert result.released_paths == released


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=64),
        json_texts().map(str.encode),
        st.tuples(json_texts(), st.integers(0, 200), st.binary(max_size=3)).map(
            lambda t: t[0].encode()[: t[1]] + t[2] + t[0].encode()[t[1] :]
        ),
        st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n),
    ),
    package_tables(),
)
def test_scope_body_raises_only_upstream_error(body: bytes, table: dict[str, Any]) -> None:
    try:
        result = scope_body(body, compile_package(table), ScopeContext("2018-01", "2018-12"))
    except UpstreamError as exc:
        assert exc.reason == "upstream_body_not_json"
    else:
        json.loads(result.body)  # always valid JSON out


# --- a slow reference written straight from the module docstring ---------------------------

_DROPPED = object()


def is_leaf_value(value: Any) -> bool:
    if isinstance(value, dict):
        return False
    if isinstance(value, list):
        return all(is_leaf_value(item) for item in value)
    return True


def reference_apply(table: dict[str, Any], document: Any, context: ScopeContext) -> Any:
    """Naive re-statement of the path language: every decision re-derived from the paths.

    A field path without ``.*`` releases a leaf value only (a scalar, or an array holding no
    object): anything else there is dropped, an array element of ``x[]`` on its own."""
    fields = [field_steps(text) for text in table["fields"]]
    leaf_paths = {field_steps(text) for text in table["fields"] if not text.endswith(".*")}
    filters = [(parse_path(row["path"], "p")[:-1], row) for row in table.get("rows", [])]

    def passes(row: Any, spec: dict[str, Any]) -> bool:
        value = row
        for name in spec.get("where", "").split(".") if spec.get("where") else []:
            value = value.get(name) if isinstance(value, dict) else None
        if type(value) is int and "within_period" not in spec:
            value = str(value)  # an integer compares as its text; within_period reads strings only
        elif isinstance(value, JsonNumber) and "within_period" not in spec:
            value = value.literal if value.literal.lstrip("-").isdigit() else None
        if not isinstance(value, str):
            return False
        if "in" in spec:
            return value in spec["in"]
        if "not_in" in spec:
            return value not in spec["not_in"]
        if "equals" in spec:
            return bool(value == spec["equals"])
        parts = value.split("-")
        try:
            import datetime

            datetime.date(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1)
        except (ValueError, IndexError):
            return False
        ok_shape = len(value) in (7, 10) and all(
            len(p) == n for p, n in zip(parts, (4, 2, 2), strict=False)
        )
        return (
            ok_shape
            and value.replace("-", "").isascii()
            and value.replace("-", "").isdigit()
            and context.period_from is not None
            and context.period_to is not None
            and context.period_from <= value[:7] <= context.period_to
        )

    def walk(value: Any, here: tuple[Step, ...], inside_full: bool) -> Any:
        if here in leaf_paths and not inside_full:
            return value if is_leaf_value(value) else _DROPPED
        full = inside_full or here in fields
        below = [f[len(here) :] for f in fields if len(f) > len(here) and f[: len(here)] == here]
        filter_paths = [p for p, _ in filters if p[: len(here)] == here]
        if full:
            below = [p[len(here) :] for p in filter_paths if len(p) > len(here)]
            if not below and here not in filter_paths:
                return value  # released whole, no filter inside
        if full and not isinstance(value, dict | list):
            return value  # a scalar holds no rows
        wants_object = any(isinstance(p[0], str) for p in below)
        wants_array = any(p[0] is EACH for p in below) or (full and here in filter_paths)
        if isinstance(value, dict) and wants_object:
            out = {}
            for key, item in value.items():
                if full or any(p[0] == key for p in below):
                    result = walk(item, (*here, key), full)
                    if result is not _DROPPED:
                        out[key] = result
            return out
        if isinstance(value, list) and wants_array:
            rows = [
                row
                for row in value
                if all(passes(row, spec) for path, spec in filters if path == here)
            ]
            if not any(p[0] is EACH for p in below):
                return rows
            out_rows = [walk(row, (*here, EACH), full) for row in rows]
            return [row for row in out_rows if row is not _DROPPED]
        return _DROPPED

    result = walk(document, (), False)
    return None if result is _DROPPED else result


@SETTINGS
@given(packages_and_documents(), contexts)
def test_apply_matches_the_reference(
    case: tuple[dict[str, Any], Any], context: ScopeContext
) -> None:
    table, document = case
    out, _ = compile_package(table).apply(document, context)
    assert out == reference_apply(table, document, context)


@st.composite
def leaf_packages_and_documents(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    """Field paths without ``.*`` (leaf values) and a document shaped along them, where each
    field's position may hold an object, an array of objects or of scalars, or a scalar."""
    fields = draw(st.lists(path_texts(), min_size=1, max_size=3, unique=True))
    document = draw(small_documents)
    for text in fields:
        document = merge(draw(shaped(parse_path(text, "f"))), document)
    return {"fields": fields, "rows": []}, document


@SETTINGS
@given(leaf_packages_and_documents(), contexts)
def test_a_leaf_path_releases_only_leaf_values(case: tuple[dict[str, Any], Any], context: ScopeContext) -> None:
    """A path without ``.*`` never lets an object out at or under its position; whatever is
    released there is as it came; a package naming something inside a leaf path is refused."""
    table, document = case
    steps = [parse_path(text, "f") for text in table["fields"]]
    nested = any(a != b and b[: len(a)] == a for a in steps for b in steps)
    try:
        package = compile_package(table)
    except ConfigError:
        assert nested
        return
    assert not nested
    out, released = package.apply(document, context)
    assert out == reference_apply(table, document, context)
    assert out is None or is_subdocument(out, document)
    assert set(released) <= set(table["fields"])

    def values_at(value: Any, path: tuple[Step, ...]) -> list[Any]:
        if not path:
            return [value]
        step, rest = path[0], path[1:]
        if step is EACH:
            return [v for item in value for v in values_at(item, rest)] if isinstance(value, list) else []
        return values_at(value[step], rest) if isinstance(value, dict) and step in value else []

    for path in steps:
        assert all(is_leaf_value(value) for value in values_at(out, path)), path


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


tricky_strings = st.text(alphabet='[]{}"\\ab', max_size=8).map(json.dumps)


@SETTINGS
@given(json_texts(), st.lists(tricky_strings, max_size=3), st.integers(min_value=1, max_value=8))
def test_max_depth_is_exact(text: str, strings: list[str], max_depth: int) -> None:
    body = ("[" + ",".join([*strings, text]) + "]").encode()
    # the nesting of the text: a member overwritten by a duplicate name still counts
    expected = depth(json.loads(body, object_pairs_hook=lambda pairs: [v for _, v in pairs]))
    try:
        scope_body(body, compile_package({"fields": ["[]"]}), ScopeContext(), max_depth=max_depth)
    except UpstreamError:
        assert expected > max_depth
    else:
        assert expected <= max_depth
