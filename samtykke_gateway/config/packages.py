"""The ``[rights_packages.<name>]`` tables (docs/protocol.md §6): the package itself is compiled
by :meth:`samtykke_gateway.scoping.package.RightsPackage.from_config` (the path language lives
with the scoping); this module adds the gateway's own key, ``consumers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.identifiers import is_org_number
from samtykke_gateway.scoping.package import RightsPackage

__all__ = ["read_rights_packages"]


def read_rights_packages(
    packages_raw: dict[str, Any], base_dir: Path
) -> tuple[dict[str, RightsPackage], dict[str, frozenset[str]]]:
    """The compiled packages by name, and package name → the consumers (organisation numbers)
    allowed to use it, for the packages that say ``consumers``.

    :param base_dir: directory relative ``in_file`` names resolve against.
    :raises ConfigError: naming the key path of the first problem.
    """
    packages: dict[str, RightsPackage] = {}
    package_consumers: dict[str, frozenset[str]] = {}
    for name, table in packages_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"rights_packages.{name}", "must be a table")
        if "consumers" in table:
            table = dict(table)
            package_consumers[name] = _package_consumers(table.pop("consumers"), f"rights_packages.{name}.consumers")
        packages[name] = RightsPackage.from_config(
            name, table, base_dir=base_dir, key_path=f"rights_packages.{name}"
        )
    return packages, package_consumers


def _package_consumers(value: Any, key: str) -> frozenset[str]:
    """``consumers``: the organisation numbers (9 ASCII digits) whose requests may use the
    package — the data source's agreements; an empty list is refused (it would lock everyone
    out, and not listing the key means "any consumer")."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of organisation numbers")
    for i, item in enumerate(value):
        if not is_org_number(item):
            raise ConfigError(f"{key}[{i}]", "is not an organisation number (9 digits)")
    return frozenset(value)
