"""The reason-code catalogue (``samtykke_gateway/reasons.py``): every code the package can emit
is catalogued and documented in ``docs/reasons.md``, and the doc is the generated table."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import samtykke_gateway
from samtykke_gateway.exceptions import GatewayError
from samtykke_gateway.policy.decide import CONSENT_TOKEN_REASONS
from samtykke_gateway.reasons import CATALOGUE, REASONS, markdown_table

PACKAGE = Path(samtykke_gateway.__file__).parent
DOC = Path(__file__).resolve().parent.parent / "docs" / "reasons.md"


def _strings(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _emitted_in(tree: ast.Module) -> set[str]:
    """String literals that reach a ``reason``: ``reason=`` keywords, ``default_reason = ...``,
    ``x.reason = ...``, the ``reason`` argument of a module's own helpers
    (``_deny("consumer_mismatch", ...)``) and the cause of ``end_stream(...)`` (a ``stream_cut``
    record's detail)."""
    helpers: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__init__":
            params = [a.arg for a in node.args.args]
            if "reason" in params:
                helpers[node.name] = params.index("reason") - (params[0] in ("self", "cls"))
    codes: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            codes += [c for k in node.keywords if k.arg == "reason" for c in _strings(k.value)]
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in helpers and len(node.args) > helpers[name]:
                codes += _strings(node.args[helpers[name]])
            if name == "end_stream" and node.args:  # a stream_cut's cause is a reason code (its detail)
                codes += _strings(node.args[-1])
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Name) and target.id == "default_reason") or (
                        isinstance(target, ast.Attribute) and target.attr == "reason"):
                    codes += _strings(node.value)
    return {code for code in codes if code}  # "" is a record's placeholder before the decision


def _scan() -> dict[str, list[str]]:
    """code -> the package files (relative) whose source emits it (reason=, default_reason, ...)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "reasons.py":
            for code in _emitted_in(ast.parse(path.read_text(encoding="utf-8"))):
                found.setdefault(code, []).append(path.relative_to(PACKAGE).as_posix())
    return found


def emitted_reasons() -> dict[str, set[str]]:
    """code -> the package files (relative) that emit it.

    Parsed in a child interpreter: CPython 3.11.7's ast module keeps a process-wide recursion
    counter that earlier tests' threads can leave off ("AST constructor recursion depth
    mismatch", gh-106905, fixed in 3.11.8), after which every ``ast.parse`` in the process fails.
    """
    out = subprocess.run(
        [sys.executable, "-c", "import json, tests.test_reasons as t; print(json.dumps(t._scan()))"],
        cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    found = {code: set(files) for code, files in json.loads(out).items()}
    # the Altinn 2 consent-token codes are looked up in a table, not written as reason=...
    for code in (*CONSENT_TOKEN_REASONS.values(), "consent_token_invalid"):  # + the table's fallback
        found.setdefault(code, set()).add("policy/decide.py")
    return found


def test_the_scanner_finds_the_codes_of_every_emitting_form() -> None:
    found = emitted_reasons()
    # one of each way a code is written: reason= keyword, helper argument, default_reason,
    # record.reason assignment, conditional expression
    for code in ("scope_missing", "consumer_mismatch", "request_body_too_large", "audit_unavailable",
                 "stream_cut", "upstream_status", "token_expired", "upstream_unreachable"):
        assert code in found, code
    assert len(found) >= 80


def test_every_emitted_reason_code_is_catalogued() -> None:
    missing = {code: sorted(files) for code, files in emitted_reasons().items() if code not in REASONS}
    assert not missing, f"add these to samtykke_gateway/reasons.py CATALOGUE: {missing}"


def test_every_catalogued_reason_code_is_emitted() -> None:
    assert sorted(set(REASONS) - set(emitted_reasons())) == []


def test_catalogue_codes_are_unique_snake_case_with_known_statuses_and_forms() -> None:
    assert len(REASONS) == len(CATALOGUE)
    for reason in CATALOGUE:
        assert reason.code.replace("_", "").isalnum() and reason.code == reason.code.lower(), reason
        assert reason.status in (None, 400, 401, 403, 404, 405, 408, 413, 415, 429, 499, 502, 503, 504), reason
        assert reason.forms and set(reason.forms) <= {"middleware", "sidecar", "cli"}, reason
        assert reason.meaning and "\n" not in reason.meaning and "|" not in reason.meaning, reason


def test_each_error_class_default_reason_has_the_class_status() -> None:
    def subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(GatewayError):  # the base too: a bare GatewayError must not be a 500
        assert REASONS[cls.default_reason].status == cls.status_code, cls


def test_docs_reasons_md_is_the_generated_catalogue() -> None:
    assert DOC.read_text(encoding="utf-8") == markdown_table(), (
        "docs/reasons.md is stale: regenerate it with\n"
        "  python -c 'from samtykke_gateway.reasons import markdown_table as m; "
        "open(\"docs/reasons.md\", \"w\").write(m())'")


def test_every_emitted_reason_code_appears_in_the_docs() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert [code for code in sorted(emitted_reasons()) if f"`{code}`" not in doc] == []
