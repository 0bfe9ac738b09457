"""The gateway's one error tree. Every class carries its HTTP meaning.

::

    GatewayError                      (base; never raised directly)
    ├── BadRequestError               400  request is malformed (duplicate governed params, CL+TE)
    ├── AuthenticationError           401  RFC 6750 ``WWW-Authenticate: Bearer``: ONLY the
    │   │                                  Maskinporten bearer itself (docs/protocol.md §4)
    │   ├── MissingTokenError         401  no bearer (no ``error=`` per RFC 6750 §3.1)
    │   └── InvalidTokenError         401  ``error="invalid_token"``: malformed, bad signature,
    │                                      unknown key, expired, too old, wrong issuer, alg not allowed
    ├── ForbiddenError                403  authenticated, but not allowed (scope, rights-package agreement)
    │   └── InsufficientConsentError  403  the consent does not cover the request
    │       ├── InvalidConsentError   403  consent missing, malformed, wrongly signed or expired (an
    │       │                              Altinn 2 consent token, an Altinn 3 consent detail)
    │       └── ConsentSpentError     403  one-time consent already delivered / revoked
    ├── NotFoundError                 404  no route (or unknown rights package)
    ├── MethodNotAllowedError         405  the path is a route, the method is not
    ├── UsageLimitError               429  per-consent daily usage limit reached
    ├── UpstreamError                 502  upstream refused / unparsable / oversized / unknown encoding
    │   └── UpstreamTimeoutError      504
    └── UnavailableError              503  the gateway cannot decide
        ├── KeysUnavailableError      503  no JWKS keys for an issuer (nothing cached, fetch failed)
        ├── AuditUnavailableError     503  disclosure log store cannot take the record
        └── StateUnavailableError     503  consent state backend (Redis) unreachable

No consent problem is ever a 401: a client that sees 401 ``invalid_token`` fetches a new
Maskinporten token, which cannot help when the consent is the problem (docs/protocol.md §4).
``code_kind`` names the family a data source may give its own published error code per route
(``[routes.error_codes]``: ``unauthenticated``, ``forbidden``, ``consent``).

``reason`` is a stable machine code (goes to the disclosure log, metrics labels and the error
body); ``detail`` is a human sentence. Neither may contain a token or a personal identifier:
those live only in the disclosure record.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditUnavailableError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConsentSpentError",
    "ForbiddenError",
    "GatewayError",
    "InsufficientConsentError",
    "InvalidConsentError",
    "InvalidTokenError",
    "KeysUnavailableError",
    "MethodNotAllowedError",
    "MissingTokenError",
    "NotFoundError",
    "StateUnavailableError",
    "UnavailableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UsageLimitError",
]


class ConfigError(ValueError):
    """Invalid configuration; ``key_path`` names the offending key (``routes[2].subject``)."""

    def __init__(self, key_path: str, message: str) -> None:
        self.key_path = key_path
        self.message = message
        super().__init__(f"{key_path}: {message}" if key_path else message)


class GatewayError(Exception):
    """Base of every request-time refusal.

    :param reason: stable machine code, e.g. ``"token_expired"``; defaults to the class default.
    :param detail: one human sentence without tokens or personal identifiers.
    """

    status_code: ClassVar[int] = 500
    default_reason: ClassVar[str] = "internal_error"
    #: Tax-administration style error code (``{"kode": ...}`` bodies), per status.
    kode: ClassVar[str] = "SG-000"
    #: Family for a route's own error codes (``[routes.error_codes]``), or ``None``.
    code_kind: ClassVar[str | None] = None

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        self.detail = detail or self.reason.replace("_", " ")
        super().__init__(self.detail)

    @property
    def www_authenticate(self) -> str | None:
        """Value for ``WWW-Authenticate`` (RFC 6750 §3), or ``None`` when not a 401/403."""
        return None


class BadRequestError(GatewayError):
    status_code = 400
    default_reason = "bad_request"
    kode = "SG-400"


class AuthenticationError(GatewayError):
    status_code = 401
    default_reason = "unauthenticated"
    kode = "SG-401"
    code_kind = "unauthenticated"

    @property
    def www_authenticate(self) -> str | None:
        return 'Bearer error="invalid_token"'


class MissingTokenError(AuthenticationError):
    default_reason = "missing_token"

    @property
    def www_authenticate(self) -> str | None:
        # RFC 6750 §3.1: no error code when the request carried no authentication.
        return "Bearer"


class InvalidTokenError(AuthenticationError):
    default_reason = "invalid_token"


class ForbiddenError(GatewayError):
    """403 for what is not about the consent: the route's scope is missing from the access
    token, the consumer has no agreement for the rights package."""

    status_code = 403
    default_reason = "forbidden"
    kode = "SG-403"
    code_kind = "forbidden"

    @property
    def www_authenticate(self) -> str | None:
        return 'Bearer error="insufficient_scope"'


class InsufficientConsentError(ForbiddenError):
    """403: the consent does not cover the request (consumer, subject, resource, action,
    metadata, validity)."""

    default_reason = "consent_does_not_cover_request"
    kode = "SG-010"
    code_kind = "consent"


class InvalidConsentError(InsufficientConsentError):
    """403: the consent itself is missing or unusable — an Altinn 2 consent token missing,
    malformed, wrongly signed or expired, an Altinn 3 consent detail (``authorization_details``)
    malformed. Never a 401: the Maskinporten bearer is fine (docs/protocol.md §4)."""

    default_reason = "bad_consent_claims"


class ConsentSpentError(InsufficientConsentError):
    default_reason = "consent_spent"


class NotFoundError(GatewayError):
    status_code = 404
    default_reason = "no_route"
    kode = "SG-404"


class MethodNotAllowedError(GatewayError):
    """The path is a route, the method is not (RFC 9110 §15.5.6: the answer carries
    ``Allow``).

    :param allow: the methods the path's routes take, e.g. ``("GET", "HEAD")``.
    """

    status_code = 405
    default_reason = "method_not_allowed"
    kode = "SG-405"

    def __init__(self, detail: str = "", *, reason: str | None = None, allow: tuple[str, ...] = ()) -> None:
        super().__init__(detail, reason=reason)
        self.allow = allow


class UsageLimitError(GatewayError):
    status_code = 429
    default_reason = "usage_limit_reached"
    kode = "SG-429"


class ClientDisconnectedError(GatewayError):
    """The client disconnected before its request was complete (mid-body, or while the data
    API was still answering): nothing more is forwarded and nothing is released; the disclosure
    record says so. Status 499 is nginx's "client closed request" (never seen by the client)."""

    status_code = 499
    default_reason = "client_disconnected"
    kode = "SG-499"


class UpstreamError(GatewayError):
    status_code = 502
    default_reason = "upstream_error"
    kode = "SG-502"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    default_reason = "upstream_timeout"
    kode = "SG-504"


class UnavailableError(GatewayError):
    status_code = 503
    default_reason = "unavailable"
    kode = "SG-503"


class KeysUnavailableError(UnavailableError):
    default_reason = "keys_unavailable"


class AuditUnavailableError(UnavailableError):
    default_reason = "audit_unavailable"


class StateUnavailableError(UnavailableError):
    default_reason = "state_unavailable"
