"""The error tree: one module holds every request-time error, its docstring draws the tree with
each class's status and default reason, and every class is public."""

from __future__ import annotations

import re

import samtykke_gateway
from samtykke_gateway import exceptions
from samtykke_gateway.exceptions import GatewayError
from samtykke_gateway.reasons import REASONS

# "    │   ├── MissingTokenError         401  missing_token   no bearer ..."
_ROW = re.compile(r"^    (?P<indent>[│├└─ ]*)(?P<name>[A-Z][A-Za-z]+Error)\s+(?P<status>\d{3})\s+(?P<reason>[a-z_]+)\b")


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("samtykke_gateway"):
            found.append(sub)
            found.extend(_subclasses(sub))
    return found


def _drawn_tree() -> dict[str, tuple[str | None, int, str]]:
    """name → (parent drawn above it, status, default reason), read from the docstring."""
    assert exceptions.__doc__ is not None
    rows: dict[str, tuple[str | None, int, str]] = {}
    stack: list[tuple[int, str]] = []  # (depth, name)
    for line in exceptions.__doc__.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        depth = len(m["indent"]) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        rows[m["name"]] = (parent, int(m["status"]), m["reason"])
        stack.append((depth, m["name"]))
    return rows


def test_every_gateway_error_lives_in_the_exceptions_module() -> None:
    for cls in _subclasses(GatewayError):
        assert cls.__module__ == "samtykke_gateway.exceptions", cls


def test_the_docstring_draws_every_class_with_its_parent_status_and_default_reason() -> None:
    drawn = _drawn_tree()
    classes: list[type[GatewayError]] = [GatewayError, *_subclasses(GatewayError)]
    assert sorted(drawn) == sorted(cls.__name__ for cls in classes)
    for cls in classes:
        parent, status, reason = drawn[cls.__name__]
        expected_parent = None if cls is GatewayError else cls.__bases__[0].__name__
        assert (parent, status, reason) == (expected_parent, cls.status_code, cls.default_reason), cls


def test_every_error_is_public_in_the_module_and_the_package() -> None:
    classes: list[type[GatewayError]] = [GatewayError, *_subclasses(GatewayError)]
    names = {cls.__name__ for cls in classes} | {"ConfigError"}
    assert names == set(exceptions.__all__)
    assert exceptions.__all__ == sorted(exceptions.__all__)
    assert names <= set(samtykke_gateway.__all__)
    for name in names:
        assert getattr(samtykke_gateway, name) is getattr(exceptions, name)


def test_every_default_reason_is_catalogued_with_the_class_status() -> None:
    for cls in _subclasses(GatewayError):
        reason = REASONS.get(cls.default_reason)
        assert reason is not None, cls.default_reason
        assert reason.status == cls.status_code, cls
