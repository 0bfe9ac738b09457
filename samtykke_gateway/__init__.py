"""samtykke-gateway: Altinn consent enforcement for Norwegian data sources.

Public API (see README): :class:`ConsentMiddleware` for ASGI apps, :class:`SidecarApp` for the
reverse proxy, :func:`load_config` for TOML configuration, :func:`configure_logging` for the
JSON logs ``serve`` writes, the error tree in
:mod:`samtykke_gateway.exceptions`, and the :class:`Grant` an app finds in
``scope["samtykke.consent"]``.
"""

from __future__ import annotations

from samtykke_gateway.sidecar.app import SidecarApp
from samtykke_gateway.audit.record import DisclosureRecord
from samtykke_gateway.config import GatewayConfig, load_config, parse_config
from samtykke_gateway.exceptions import (
    AuditUnavailableError,
    AuthenticationError,
    BadRequestError,
    ClientDisconnectedError,
    ConfigError,
    ConsentSpentError,
    ForbiddenError,
    GatewayError,
    InsufficientConsentError,
    InvalidConsentError,
    InvalidTokenError,
    KeysUnavailableError,
    MethodNotAllowedError,
    MissingTokenError,
    NotFoundError,
    RequestBodyTimeoutError,
    RequestBodyTooLargeError,
    StateUnavailableError,
    UnavailableError,
    UnsupportedMediaTypeError,
    UpstreamError,
    UpstreamTimeoutError,
    UsageLimitError,
)
from samtykke_gateway.observe.logs import configure_logging
from samtykke_gateway.policy.decide import Grant
from samtykke_gateway.runtime import Gateway
from samtykke_gateway.asgi.middleware import CONSENT_SCOPE_KEY, ConsentMiddleware
from samtykke_gateway.tokens.model import Consent, ConsentRight, MaskinportenToken

__all__ = [
    "CONSENT_SCOPE_KEY",
    "AuditUnavailableError",
    "AuthenticationError",
    "BadRequestError",
    "ClientDisconnectedError",
    "ConfigError",
    "Consent",
    "ConsentMiddleware",
    "ConsentRight",
    "ConsentSpentError",
    "DisclosureRecord",
    "ForbiddenError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Grant",
    "InsufficientConsentError",
    "InvalidConsentError",
    "InvalidTokenError",
    "KeysUnavailableError",
    "MaskinportenToken",
    "MethodNotAllowedError",
    "MissingTokenError",
    "NotFoundError",
    "RequestBodyTimeoutError",
    "RequestBodyTooLargeError",
    "SidecarApp",
    "StateUnavailableError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UsageLimitError",
    "configure_logging",
    "load_config",
    "parse_config",
]

__version__ = "0.1.0"
