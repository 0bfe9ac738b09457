"""Gateway configuration: TOML → frozen dataclasses.

Every error is a :class:`~samtykke_gateway.exceptions.ConfigError` naming the key path
(``routes[2].subject``). Unknown keys are errors: a typo must not silently disable a check.
The format is documented in ``docs/configuration.md``.

The modules, in reading order:

- :mod:`.model` — the frozen dataclasses (:class:`GatewayConfig` and its parts).
- :mod:`.reader` — :class:`~.reader.Table`, one TOML table with key-path errors.
- :mod:`.profiles` — the ``tt02``/``prod`` presets and the ``[issuers.*]`` tables.
- :mod:`.packages` — the ``[rights_packages.*]`` tables.
- :mod:`.subject` — where a request names its data subject, one class per location.
- :mod:`.routes` — the ``[[routes]]`` tables.
- :mod:`.load` — :func:`parse_config` and :func:`load_config`: the whole document.
"""

from __future__ import annotations

from samtykke_gateway.config.load import load_config, memory_state_warning, parse_config
from samtykke_gateway.config.model import (
    FeedAuthConfig,
    FeedConfig,
    GatewayConfig,
    IssuerConfig,
    PeriodConstraint,
    RouteConfig,
    YearConstraint,
)
from samtykke_gateway.config.subject import SubjectSource

__all__ = [
    "FeedAuthConfig",
    "FeedConfig",
    "GatewayConfig",
    "IssuerConfig",
    "PeriodConstraint",
    "RouteConfig",
    "SubjectSource",
    "YearConstraint",
    "load_config",
    "memory_state_warning",
    "parse_config",
]
