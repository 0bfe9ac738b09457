"""Response scoping (docs/protocol.md §6): rights packages, the path language, exact numbers."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from samtykke_gateway.exceptions import ConfigError, UpstreamError
from samtykke_gateway.scoping.package import (
    JsonNumber,
    RightsPackage,
    ScopeContext,
    ScopedBody,
    scope_body,
)
from samtykke_gateway.scoping.exact_json import decode_json, encode_json

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "samtykke_gateway" / "dev" / "data"
EXAMPLE_CONFIG = ROOT / "config" / "rights_packages.example.toml"
JULY_2018 = ScopeContext(period_from="2018-07", period_to="2018-07")


def example_packages() -> dict[str, RightsPackage]:
    tables = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))["rights_packages"]
    return {
        name: RightsPackage.from_config(
            name, table, base_dir=EXAMPLE_CONFIG.parent, key_path=f"rights_packages.{name}"
        )
        for name, table in tables.items()
    }


def package(fields: list[str], rows: list[dict[str, Any]] | None = None) -> RightsPackage:
    table: dict[str, Any] = {"fields": fields}
    if rows is not None:
        table["rows"] = rows
    return RightsPackage.from_config("t", table, base_dir=DATA, key_path="rights_packages.t")


def scoped(fields: list[str], document: Any, rows: list[dict[str, Any]] | None = None) -> Any:
    return package(fields, rows).apply(document, ScopeContext())[0]


# --- the published examples -------------------------------------------------------------


def test_sbl_keeps_exactly_the_three_released_income_rows() -> None:
    body = (DATA / "inntekt-2018-07.json").read_bytes()
    result = scope_body(body, example_packages()["inntekt-sbl"], JULY_2018)
    out = json.loads(result.body)
    rows = out["oppgaveInntektsmottaker"][0]["inntekt"]
    assert [row["loennsinntekt"]["beskrivelse"] for row in rows] == [
        "bil",
        "timeloenn",
        "fastloenn",
    ]
    assert len(json.loads(body)["oppgaveInntektsmottaker"][0]["inntekt"]) == 8
    # deny by default: what the package does not name does not leave
    assert "tilleggsinformasjon" not in result.body.decode()
    assert "spesifikasjon" not in result.body.decode()
    assert rows[1] == {
        "fordel": "kontantytelse",
        "utloeserArbeidsgiveravgift": True,
        "inngaarIGrunnlagForTrekk": True,
        "beloep": 150000,
        "loennsinntekt": {"beskrivelse": "timeloenn", "antall": 150},
    }
    assert "oppgaveInntektsmottaker[].inntekt[].loennsinntekt.beskrivelse" in result.released_paths
    assert list(result.released_paths) == sorted(set(result.released_paths))
    # the five rows the beskrivelse filter removed whole are counted, per filter path
    assert result.rows_withheld == (("oppgaveInntektsmottaker[].inntekt[]", 5),)


def test_sbl_removes_months_outside_the_consented_period() -> None:
    body = (DATA / "inntekt-2018-07.json").read_bytes()
    sbl = example_packages()["inntekt-sbl"]
    outside = scope_body(body, sbl, ScopeContext(period_from="2018-08", period_to="2018-12"))
    assert json.loads(outside.body) == {"oppgaveInntektsmottaker": []}
    assert outside.released_paths == ()
    assert outside.rows_withheld == (("oppgaveInntektsmottaker[]", 1),)  # the July 2018 month
    no_period = scope_body(body, sbl, ScopeContext())
    assert json.loads(no_period.body) == {"oppgaveInntektsmottaker": []}


def test_rows_withheld_are_counted_by_every_walk_shape() -> None:
    """Rows of objects (one member or a general test), rows released whole, and rows under a
    released subtree: each filter counts the rows it removed; nothing counted when all pass."""
    document = {"a": [{"k": "x", "v": 1}, {"k": "y", "v": 2}, {"k": "x", "v": 3}, "not a row"]}
    one_member = package(["a[].v"], [{"path": "a[]", "where": "k", "in": ["x"]}])
    assert one_member.apply_counted(document, ScopeContext())[2] == (("a[]", 2),)
    whole = package(["a[].*"], [{"path": "a[]", "where": "k", "not_in": ["x"]}])
    scoped, _paths, withheld = whole.apply_counted(document, ScopeContext())
    assert scoped == {"a": [{"k": "y", "v": 2}]} and withheld == (("a[]", 3),)
    nested = package(["a.*"], [{"path": "a[]", "where": "k", "equals": "y"}])
    assert nested.apply_counted(document, ScopeContext())[2] == (("a[]", 3),)
    everything = package(["a[].v"], [{"path": "a[]", "where": "k", "in": ["x", "y"]}])
    assert everything.apply_counted({"a": [{"k": "x"}, {"k": "y"}]}, ScopeContext())[2] == ()
    assert one_member.apply(document, ScopeContext()) == one_member.apply_counted(document, ScopeContext())[:2]


def test_sbl_list_file_is_read_with_comments_skipped() -> None:
    released = [
        line.strip()
        for line in (DATA / "inntekt-sbl-loennsinntekt-beskrivelse.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sbl = example_packages()["inntekt-sbl"]
    for value in [*released, "smusstillegg", '# Rights package "sbl" (consent-based loan']:
        document = {
            "oppgaveInntektsmottaker": [
                {
                    "kalendermaaned": "2018-07",
                    "inntekt": [{"loennsinntekt": {"beskrivelse": value}}],
                }
            ]
        }
        rows = sbl.apply(document, JULY_2018)[0]["oppgaveInntektsmottaker"][0]["inntekt"]
        assert len(rows) == (1 if value in released else 0), value


def test_specified_summarised_tax_base_example() -> None:
    body = (DATA / "spesifisertsummertskattegrunnlag-2022.json").read_bytes()
    pkg = example_packages()["spesifisertsummertskattegrunnlag-sbl"]
    out = json.loads(scope_body(body, pkg, ScopeContext()).body)
    kinds = {row["kategori"] for row in out["grunnlag"]}
    assert kinds <= {"formue", "formuesfradrag", "inntekt", "inntektsfradrag", "-"}
    assert "kontonummer" not in json.dumps(out)
    assert "registreringstidpunkt" not in out
    # rows with other categories are gone, the rest keep their order
    source = json.loads(body)["grunnlag"]
    expected = [row["tekniskNavn"] for row in source if row["kategori"] in kinds]
    assert [row["tekniskNavn"] for row in out["grunnlag"]] == expected
    assert len(expected) < len(source)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
def test_every_example_body_scopes(name: str) -> None:
    body = (DATA / name).read_bytes()
    for pkg in example_packages().values():
        result = scope_body(body, pkg, JULY_2018)
        assert isinstance(result, ScopedBody)
        json.loads(result.body)


# --- projection ---------------------------------------------------------------------------


def test_projection_is_deny_by_default_and_keeps_objects_on_the_way() -> None:
    document = {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": {"g": 4, "h": 5}}}
    assert scoped(["a.b", "e.f.*"], document) == {"a": {"b": 1}, "e": {"f": {"g": 4, "h": 5}}}


def test_absent_members_stay_absent() -> None:
    assert scoped(["a.b", "x"], {"a": {"c": 1}}) == {"a": {}}
    assert scoped(["a.b"], {}) == {}


def test_arrays_keep_element_order() -> None:
    document = {"rows": [{"n": 3, "s": "x"}, {"n": 1}, {"s": "y"}, {"n": 2}]}
    assert scoped(["rows[].n"], document) == {"rows": [{"n": 3}, {"n": 1}, {}, {"n": 2}]}


def test_top_level_array_and_arrays_of_arrays() -> None:
    assert scoped(["[].a"], [{"a": 1, "b": 2}, {"b": 3}]) == [{"a": 1}, {}]
    assert scoped(["[][]"], [[1, 2], [3], "x"]) == [[1, 2], [3]]
    assert scoped(["m[][].k"], {"m": [[{"k": 1, "z": 0}], [{"z": 1}]]}) == {"m": [[{"k": 1}], [{}]]}


@pytest.mark.parametrize(
    ("fields", "document", "expected"),
    [
        (["x[]"], {"x": {"a": 1}}, {}),  # path says array, value is an object
        (["x.a"], {"x": [{"a": 1}]}, {}),  # path says object, value is an array
        (["x[].a"], {"x": [1, "s", None, {"a": 2}, [3]]}, {"x": [{"a": 2}]}),
        (["x.a"], {"x": "text"}, {}),
        (["[].a"], {"a": 1}, None),  # top level contradicts every path
        (["a"], [1, 2], None),
        (["a"], 7, None),
    ],
)
def test_wrong_type_drops_the_branch(fields: list[str], document: Any, expected: Any) -> None:
    assert scoped(fields, document) == expected


def test_a_path_with_a_star_releases_the_whole_subtree_of_any_type() -> None:
    for value in (1, "s", None, True, [1, {"a": 2}], {"deep": {"er": [1]}}):
        assert scoped(["x.*"], {"x": value, "y": 0}) == {"x": value}
    assert package(["x.*"]).apply({"x": {"a": 1}}, ScopeContext())[1] == ("x.*",)  # the record says so


def test_a_path_without_a_star_releases_only_a_leaf_value() -> None:
    """An upstream that turns a released leaf into an object (``navn`` → ``{fornavn, adresse}``)
    or puts an object into a released array does not get it out under the leaf's name."""
    leaves: list[Any] = [1, "s", None, True, 1.5, [1, "a", None, [2, [3]]], []]
    for value in leaves:
        assert scoped(["x"], {"x": value, "y": 0}) == {"x": value}
    containers: list[Any] = [{"fornavn": "Ola", "adresse": "Hemmeligveien 1"}, {}, [1, {"a": 2}], [[{"a": 1}]]]
    for value in containers:
        out, released = package(["x", "y"]).apply({"x": value, "y": 0}, ScopeContext())
        assert (out, released) == ({"y": 0}, ("y",)), value
    rows = {"b": [{"m": "2024-01", "beloep": 1}, {"m": "2024-02", "beloep": {"kontonummer": "12345678903"}}]}
    assert scoped(["b[].m", "b[].beloep"], rows) == {"b": [{"m": "2024-01", "beloep": 1}, {"m": "2024-02"}]}
    assert scoped(["k[]"], {"k": ["a", {"secret": 1}, 2, ["b"]]}) == {"k": ["a", 2, ["b"]]}
    assert scoped(["[]"], [1, {"a": 1}]) == [1]


@pytest.mark.parametrize(
    ("fields", "rows", "key_path"),
    [
        (["a", "a.b"], None, "rights_packages.t.fields"),
        (["a.b", "a"], None, "rights_packages.t.fields"),
        (["a"], [{"path": "a[]", "where": "k", "equals": "x"}], "rights_packages.t.fields"),
        (["a[]"], [{"path": "a[]", "where": "k", "equals": "x"}], "rights_packages.t.rows[0].where"),
        (["a.*.b"], None, "rights_packages.t.fields[0]"),
        (["*"], None, "rights_packages.t.fields[0]"),
    ],
)
def test_something_named_inside_a_leaf_path_is_a_config_error(
    fields: list[str], rows: list[dict[str, Any]] | None, key_path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        package(fields, rows)
    assert info.value.key_path == key_path


def test_path_under_a_released_subtree_is_absorbed() -> None:
    pkg = package(["a.b", "a.*"])
    assert pkg.apply({"a": {"b": 1, "c": 2}}, ScopeContext()) == ({"a": {"b": 1, "c": 2}}, ("a.*",))
    # "a.*" releases the array too, even though "a.b" alone would need an object
    assert pkg.apply({"a": [1]}, ScopeContext())[0] == {"a": [1]}


def test_released_paths_name_only_paths_present_in_the_output() -> None:
    pkg = package(["a", "b.c", "d[].e", "never"])
    _, released = pkg.apply({"a": 0, "b": {"x": 1}, "d": [{"e": None}]}, ScopeContext())
    assert released == ("a", "d[].e")


def test_apply_does_not_mutate_its_input() -> None:
    document = {"rows": [{"k": "a", "v": 1}, {"k": "b", "v": 2}], "x": {"y": 1, "z": 2}}
    before = json.dumps(document)
    pkg = package(["rows.*", "x.y"], [{"path": "rows[]", "where": "k", "equals": "a"}])
    out, _ = pkg.apply(document, ScopeContext())
    assert out == {"rows": [{"k": "a", "v": 1}], "x": {"y": 1}}
    assert json.dumps(document) == before


# --- row filters --------------------------------------------------------------------------

ROWS = [
    {"k": "a", "n": {"m": "x"}, "p": "2018-07"},
    {"k": "b", "n": {"m": "y"}, "p": "2018-08-31"},
    {"k": "c", "p": "2019-01"},
    {"k": 1, "n": "flat", "p": "2018-02-30"},
    {"n": {"m": None}},
    "not a row",
]


def filtered(row_filter: dict[str, Any], context: ScopeContext | None = None) -> list[Any]:
    pkg = package(["r.*"], [{"path": "r[]", **row_filter}])
    return pkg.apply({"r": ROWS}, context or ScopeContext())[0]["r"]  # type: ignore[no-any-return]


def test_in_filter_removes_whole_rows() -> None:
    assert filtered({"where": "k", "in": ["a", "c"]}) == [ROWS[0], ROWS[2]]


def test_nested_where_and_missing_or_non_string_values_fail() -> None:
    assert filtered({"where": "n.m", "in": ["x", "y"]}) == [ROWS[0], ROWS[1]]
    assert filtered({"where": "n.m", "not_in": ["x"]}) == [ROWS[1]]
    assert filtered({"where": "k", "not_in": []}) == ROWS[:4]  # k = 1: an integer compares as "1"


def test_an_integer_compares_as_its_text_and_other_non_strings_fail() -> None:
    """A year sent as a JSON number (``"aar": 2021``) can be filtered; a TOML integer in the
    filter is its text too. Floats, booleans and null never match (their text is not exact)."""
    rows = [{"aar": 2021}, {"aar": "2021"}, {"aar": 2020}, {"aar": 2021.0}, {"aar": True}, {"aar": None}, {}]
    for values in (["2021"], [2021]):
        pkg = package(["r.*"], [{"path": "r[]", "where": "aar", "in": values}])
        assert pkg.apply({"r": rows}, ScopeContext())[0] == {"r": rows[:2]}
    equals = package(["r.*"], [{"path": "r[]", "where": "aar", "equals": 2020}])
    assert equals.apply({"r": rows}, ScopeContext())[0] == {"r": [rows[2]]}
    not_2020 = package(["r.*"], [{"path": "r[]", "where": "aar", "not_in": ["2020"]}])
    for body in (b'{"r":[{"aar":2021},{"aar":2.5},{"aar":1e3}]}',  # fast decoder: floats
                 b'{"r":[{"aar":2021},{"aar":2.50},{"aar":1e3},{"aar":2021.0}]}'):  # exact decoder: JsonNumber
        assert json.loads(scope_body(body, not_2020, ScopeContext()).body) == {"r": [{"aar": 2021}]}, body


def test_equals_and_where_omitted_compares_the_row_itself() -> None:
    assert filtered({"where": "k", "equals": "b"}) == [ROWS[1]]
    assert filtered({"equals": "not a row"}) == [ROWS[5]]


def test_in_file(tmp_path: Path) -> None:
    (tmp_path / "values.txt").write_text("# released\n\n  b  \n#c\nc\n", encoding="utf-8")
    pkg = RightsPackage.from_config(
        "t",
        {"fields": ["r.*"], "rows": [{"path": "r[]", "where": "k", "in_file": "values.txt"}]},
        base_dir=tmp_path,
        key_path="rights_packages.t",
    )
    assert pkg.apply({"r": ROWS}, ScopeContext())[0] == {"r": [ROWS[1], ROWS[2]]}


def test_within_period_is_inclusive_and_fails_closed() -> None:
    july_august = ScopeContext(period_from="2018-07", period_to="2018-08")
    assert filtered({"where": "p", "within_period": True}, july_august) == [ROWS[0], ROWS[1]]
    everything = ScopeContext(period_from="0001-01", period_to="9999-12")
    # 2018-02-30 is not a date; rows without p fail
    assert filtered({"where": "p", "within_period": True}, everything) == ROWS[:3]
    assert filtered({"where": "p", "within_period": True}, ScopeContext("2018-01")) == []
    assert filtered({"where": "p", "within_period": True}, ScopeContext(None, "2020-01")) == []


@pytest.mark.parametrize(
    "value", ["2018-7", "2018-07-1", "2018-13", "2018-00", "２０１８-07", " 2018-07"]
)
def test_within_period_refuses_sloppy_values(value: str) -> None:
    pkg = package(["r.*"], [{"path": "r[]", "within_period": True}])
    everything = ScopeContext(period_from="0001-01", period_to="9999-12")
    assert pkg.apply({"r": [value, "2018-07"]}, everything)[0] == {"r": ["2018-07"]}


@pytest.mark.parametrize("bound", ["2018-7", "2018-13", "201807", "2018-07-01", 201807])
def test_scope_context_validates_bounds(bound: Any) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        ScopeContext(period_from=bound)


def test_several_filters_on_the_same_rows_all_apply() -> None:
    pkg = package(
        ["r.*"],
        [
            {"path": "r[]", "where": "k", "in": ["a", "b", "c"]},
            {"path": "r[]", "where": "k", "not_in": ["b"]},
        ],
    )
    assert pkg.apply({"r": ROWS}, ScopeContext())[0] == {"r": [ROWS[0], ROWS[2]]}


def test_filters_apply_at_every_level_and_under_a_wholly_released_path() -> None:
    document = {
        "o": [
            {"m": "2018-07", "i": [{"b": "bil"}, {"b": "smuss"}], "secret": 1},
            {"m": "2018-09", "i": [{"b": "bil"}]},
        ]
    }
    pkg = package(
        ["o.*"],
        [
            {"path": "o[].i[]", "where": "b", "equals": "bil"},
            {"path": "o[]", "where": "m", "within_period": True},
        ],
    )
    out, released = pkg.apply(document, JULY_2018)
    assert out == {"o": [{"m": "2018-07", "i": [{"b": "bil"}], "secret": 1}]}
    assert released == ("o.*",)
    # the filtered array must be an array: otherwise the branch is dropped (fail closed)
    out, _ = pkg.apply({"o": [{"m": "2018-07", "i": {"b": "smuss"}}]}, JULY_2018)
    assert out == {"o": [{"m": "2018-07"}]}
    # ... but a scalar there holds no rows, and the released path releases it
    out, _ = pkg.apply({"o": [{"m": "2018-07", "i": "smuss"}]}, JULY_2018)
    assert out == {"o": [{"m": "2018-07", "i": "smuss"}]}


def test_filter_on_rows_no_field_reaches_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        package(["a[].b"], [{"path": "c[]", "where": "k", "equals": "x"}])
    assert info.value.key_path == "rights_packages.t.rows[0].path"
    with pytest.raises(ConfigError):
        package(["a.b"], [{"path": "a[]", "where": "k", "equals": "x"}])


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key_path"),
    [
        ({"fields": ["a"], "extra": 1}, "rights_packages.t.extra"),
        ({}, "rights_packages.t.fields"),
        ({"fields": []}, "rights_packages.t.fields"),
        ({"fields": "a"}, "rights_packages.t.fields"),
        ({"fields": ["a", 3]}, "rights_packages.t.fields[1]"),
        ({"fields": ["a", ""]}, "rights_packages.t.fields[1]"),
        ({"fields": ["a..b"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a."]}, "rights_packages.t.fields[0]"),
        ({"fields": [".a"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a[]b"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a[0]"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a.[]"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["[]a"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a[ ]"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a]"]}, "rights_packages.t.fields[0]"),
        ({"fields": [" a"]}, "rights_packages.t.fields[0]"),
        ({"fields": ["a"], "description": 1}, "rights_packages.t.description"),
        ({"fields": ["a"], "rows": {}}, "rights_packages.t.rows"),
        ({"fields": ["a"], "rows": [1]}, "rights_packages.t.rows[0]"),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "in": ["x"], "x": 1}]},
            "rights_packages.t.rows[0].x",
        ),
        ({"fields": ["a"], "rows": [{"in": ["x"]}]}, "rights_packages.t.rows[0].path"),
        ({"fields": ["a"], "rows": [{"path": "a", "in": ["x"]}]}, "rights_packages.t.rows[0].path"),
        (
            {"fields": ["a"], "rows": [{"path": "a[]..", "in": ["x"]}]},
            "rights_packages.t.rows[0].path",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "where": "b[]", "in": ["x"]}]},
            "rights_packages.t.rows[0].where",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "where": "", "in": ["x"]}]},
            "rights_packages.t.rows[0].where",
        ),
        ({"fields": ["a"], "rows": [{"path": "a[]", "where": "k"}]}, "rights_packages.t.rows[0]"),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "in": [], "equals": "x"}]},
            "rights_packages.t.rows[0]",
        ),
        ({"fields": ["a"], "rows": [{"path": "a[]", "in": "x"}]}, "rights_packages.t.rows[0].in"),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "not_in": [1.5]}]},
            "rights_packages.t.rows[0].not_in[0]",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "equals": True}]},
            "rights_packages.t.rows[0].equals",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "within_period": False}]},
            "rights_packages.t.rows[0].within_period",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "in_file": "missing.txt"}]},
            "rights_packages.t.rows[0].in_file",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "a[]", "in_file": ""}]},
            "rights_packages.t.rows[0].in_file",
        ),
        (
            {"fields": ["a"], "rows": [{"path": "b[]", "in": ["x"]}]},
            "rights_packages.t.rows[0].path",
        ),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], key_path: str) -> None:
    with pytest.raises(ConfigError) as info:
        RightsPackage.from_config("t", table, base_dir=DATA, key_path="rights_packages.t")
    assert info.value.key_path == key_path


def test_package_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as info:
        RightsPackage.from_config("t", ["a"], base_dir=DATA, key_path="rights_packages.t")  # type: ignore[arg-type]
    assert info.value.key_path == "rights_packages.t"


# --- scope_body: decoding, exact numbers, refusals ----------------------------------------

ALL = package(["v"])


@pytest.mark.parametrize(
    "literal",
    [
        "0",
        "-0",
        "1.10",
        "1e400",
        "-1E-400",
        "-0.0",
        "0.1",
        "1.0e+2",
        "123456789012345678901234567890",
        str(2**64 + 1),
        "-" + "9" * 4400,
        "1" + "0" * 5000 + ".5",
    ],
)
def test_numbers_keep_their_exact_text(literal: str) -> None:
    result = scope_body(b'{"v": [' + literal.encode() + b'], "w": 1}', ALL, ScopeContext())
    assert result.body == b'{"v":[' + literal.encode() + b"]}"


def test_strings_come_out_with_the_same_value() -> None:
    text = 'æøå \u2603 \U0001f600 "q" \\ \n\t\x01 \u2028'
    body = json.dumps({"v": text}, ensure_ascii=True).encode()
    assert json.loads(scope_body(body, ALL, ScopeContext()).body)["v"] == text
    body = json.dumps({"v": text}, ensure_ascii=False).encode()
    out = scope_body(body, ALL, ScopeContext()).body
    assert json.loads(out)["v"] == text
    assert "æøå".encode() in out  # non-ASCII stays readable UTF-8


def test_lone_surrogates_survive_as_escapes() -> None:
    body = b'{"v": ["\\ud800", "\\udfff x", "\xc3\xa6"]}'
    out = scope_body(body, ALL, ScopeContext()).body
    assert out.isascii()
    assert json.loads(out) == json.loads(body)


def test_strings_looking_like_number_markers_are_not_confused() -> None:
    markers = "".join(f"\\u{c:04x}" for c in (*range(0x08), *range(0x10, 0x1A)))
    for prefix in ("", markers):
        body = ('{"v": ["' + prefix + '", "\\u00001.5", "\\\\u00001.5", 1.50]}').encode()
        out = scope_body(body, ALL, ScopeContext()).body
        assert json.loads(out) == json.loads(body)
        assert out.endswith(b",1.50]}")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b'{"v": "\xff"}',
        b"NaN",
        b'{"v": Infinity}',
        b'{"v": -Infinity}',
        b"[1,]",
        b"{} {}",
        b"[01]",
        b"'x'",
        b'{"v": "a\x01b"}',
        b"[" * 65 + b"]" * 65,
        b"[" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
)
def test_non_json_bodies_raise_upstream_error(body: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        scope_body(body, ALL, ScopeContext())
    assert info.value.reason == "upstream_body_not_json"
    assert info.value.status_code == 502


def test_max_depth_counts_nested_containers() -> None:
    def nested(depth: int) -> bytes:  # an object holding depth - 1 arrays
        return b'{"v":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert scope_body(nested(64), ALL, ScopeContext(), max_depth=64).body == nested(64)
    assert scope_body(nested(3), ALL, ScopeContext(), max_depth=3).body == b'{"v":[[]]}'
    for depth, limit in ((65, 64), (4, 3), (2, 1)):
        with pytest.raises(UpstreamError):
            scope_body(nested(depth), ALL, ScopeContext(), max_depth=limit)
    # brackets inside strings do not count
    tricky = b'{"v": "[[[[[[[[[[\\"\\\\[[[[[[[[[[[[[[[[[["}'
    assert scope_body(tricky, ALL, ScopeContext(), max_depth=2).body == tricky.replace(b" ", b"")


def test_scope_body_accepts_bytearray_and_memoryview() -> None:
    body = b'{"v": 1.0}'
    for view in (bytearray(body), memoryview(body)):
        assert scope_body(view, ALL, ScopeContext()).body == b'{"v":1.0}'  # type: ignore[arg-type]


def test_codec_round_trip_without_source() -> None:
    value = decode_json(b'[1.10, "\\u0000", -0, {"k": 2e5}]')
    assert value == [JsonNumber("1.10"), "\x00", JsonNumber("-0"), {"k": JsonNumber("2e5")}]
    assert encode_json(value) == b'[1.10,"\\u0000",-0,{"k":2e5}]'
    with pytest.raises(TypeError):
        encode_json({"x": object()})
    with pytest.raises(ValueError, match="max_depth"):
        decode_json(b"[]", max_depth=0)


def test_json_number_equality_is_textual() -> None:
    assert JsonNumber("1.10") != JsonNumber("1.1")
    assert JsonNumber("1.10") == JsonNumber("1.10")
    assert JsonNumber("1") != 1
    assert len({JsonNumber("2"), JsonNumber("2")}) == 1
    assert repr(JsonNumber("1e5")) == "JsonNumber('1e5')"
