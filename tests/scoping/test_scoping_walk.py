"""The specialised walk closures agree with the reference (hypothesis).

The random packages of ``test_scoping_properties`` reach some closures only now and then
(rows of objects with one inline member filter, leaf-only rows); these packages are built
to reach each of them, and every result is checked against the naive reference.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samtykke_gateway.scoping.package import ScopeContext
from tests.scoping.test_scoping_properties import (
    VALUES,
    compile_package,
    contexts,
    documents_for,
    reference_apply,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def closure_names(walk: Any) -> set[str]:
    """Names of the closures a compiled walk is made of."""
    names: set[str] = set()
    stack = [walk]
    while stack:
        function = stack.pop()
        names.add(function.__name__)
        for cell in function.__closure__ or ():
            value = cell.cell_contents
            value = getattr(value, "__self__", value)  # plan.get -> plan
            if callable(value) and hasattr(value, "__closure__"):
                stack.append(value)
            elif isinstance(value, dict):
                stack.extend(item for item in value.values() if callable(item))
    return names


@st.composite
def row_packages(draw: st.DrawFn) -> dict[str, Any]:
    """Rows of objects (``r[]`` or ``[]``), leaf members and maybe a nested object or array,
    filtered (or not) on one member or more."""
    prefix = draw(st.sampled_from(["r[]", "[]", "x.r[]", "r[][]"]))
    members = draw(st.lists(st.sampled_from(["a", "b", "k"]), min_size=1, max_size=3))
    fields = [f"{prefix}.{name}" for name in members]
    nested = draw(st.sampled_from([None, "o.k", "s[].k", "s[].a"]))
    if nested is not None:
        fields.append(f"{prefix}.{nested}")
    rows = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        op = draw(st.sampled_from(["in", "not_in", "equals", "within_period"]))
        row: dict[str, Any] = {"path": prefix, "where": draw(st.sampled_from(["k", "k", "a.k"]))}
        if op == "equals":
            row[op] = draw(st.sampled_from(VALUES))
        elif op == "within_period":
            row[op] = True
        else:
            row[op] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=3))
        rows.append(row)
    return {"fields": fields, "rows": rows}


@st.composite
def row_cases(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    table = draw(row_packages())
    return table, draw(documents_for(table))


@SETTINGS
@given(row_cases(), contexts)
def test_row_walks_match_the_reference(
    case: tuple[dict[str, Any], Any], context: ScopeContext
) -> None:
    table, document = case
    out, released = compile_package(table).apply(document, context)
    assert out == reference_apply(table, document, context)
    assert set(released) <= set(table["fields"])


def test_row_packages_reach_every_row_closure() -> None:
    tables: list[dict[str, Any]] = [
        {"fields": ["r[].a", "r[].o.k"], "rows": [{"path": "r[]", "where": "k", "in": ["x"]}]},
        {"fields": ["r[].a", "r[].b"], "rows": [{"path": "r[]", "where": "k", "not_in": ["x"]}]},
        {"fields": ["r[].a", "r[].s[].k"]},
        {"fields": ["r[].a"]},
        {"fields": ["r[].a"], "rows": [{"path": "r[]", "where": "a.k", "equals": "x"}]},
    ]
    names = set().union(*(closure_names(compile_package(t)._walk) for t in tables))
    assert {"walk_filtered_rows", "walk_rows_of_objects", "walk_rows_of_leaves"} <= names
    document = {"r": [{"k": "x", "a": 1, "o": {"k": "y", "z": 2}}, {"k": "y", "a": 2}, "s", {}]}
    out, released = compile_package(tables[0]).apply(document, ScopeContext())
    assert out == {"r": [{"a": 1, "o": {"k": "y"}}]}
    assert released == ("r[].a", "r[].o.k")
    out, _ = compile_package(tables[1]).apply(document, ScopeContext())
    assert out == {"r": [{"a": 2}]}
