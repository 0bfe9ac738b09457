"""The gateway's one error tree. Every class carries its HTTP meaning.

::

    ConfigError (ValueError)          the configuration is refused at start, reload or check-config;
                                      ``key_path`` names the key; never raised per request

    class                             HTTP default reason                  raised when
    GatewayError                      503  internal_error                  (base; never raised directly)
    ├── BadRequestError               400  bad_request                     the request is malformed (duplicate
    │                                                                      governed params, CL+TE, no subject)
    ├── AuthenticationError           401  unauthenticated                 RFC 6750 ``WWW-Authenticate: Bearer``:
    │   │                                                                  ONLY the Maskinporten bearer itself
    │   │                                                                  (docs/protocol.md §4)
    │   ├── MissingTokenError         401  missing_token                   no bearer (no ``error=``, RFC 6750 §3.1)
    │   └── InvalidTokenError         401  invalid_token                   ``error="invalid_token"``: malformed, bad
    │                                                                      signature, unknown key, expired, too old,
    │                                                                      wrong issuer, alg not allowed
    ├── ForbiddenError                403  forbidden                       authenticated, but not allowed (scope,
    │   │                                                                  rights-package agreement)
    │   └── InsufficientConsentError  403  consent_does_not_cover_request  the consent does not cover the request
    │       ├── InvalidConsentError   403  bad_consent_claims              consent missing, malformed, wrongly
    │       │                                                              signed or expired (an Altinn 2 consent
    │       │                                                              token, an Altinn 3 consent detail)
    │       └── ConsentSpentError     403  consent_spent                   one-time consent delivered / revoked
    ├── NotFoundError                 404  no_route                        no route (or unknown rights package)
    ├── MethodNotAllowedError         405  method_not_allowed              the path is a route, the method is not
    ├── RequestBodyTimeoutError       408  request_body_timeout            a body the gateway reads came too slowly
    ├── RequestBodyTooLargeError      413  request_body_too_large          a body the gateway reads is too large
    ├── UnsupportedMediaTypeError     415  unsupported_media_type          a body subject in anything but JSON
    ├── UsageLimitError               429  usage_limit_reached             per-consent daily usage limit reached
    ├── ClientDisconnectedError       499  client_disconnected             the client left mid-request (recorded,
    │                                                                      never answered)
    ├── UpstreamError                 502  upstream_error                  upstream refused / unparsable /
    │   │                                                                  oversized / unknown encoding
    │   └── UpstreamTimeoutError      504  upstream_timeout                the upstream was too slow
    └── UnavailableError              503  unavailable                     the gateway cannot decide
        ├── KeysUnavailableError      503  keys_unavailable                no JWKS keys for an issuer
        ├── AuditUnavailableError     503  audit_unavailable               the disclosure log cannot take the record
        └── StateUnavailableError     503  state_unavailable               consent state (Redis) unreachable

``tests/test_exceptions.py`` checks this drawing against the classes (parent, status, default
reason). The default reason is only the fallback: most refusals pass a more precise ``reason``
(``token_expired``, ``subject_mismatch``, ...); every code, with its status and meaning,
is in the catalogue :mod:`samtykke_gateway.reasons` (``docs/reasons.md``).

No consent problem is ever a 401: a client that sees 401 ``invalid_token`` fetches a new
Maskinporten token, which cannot help when the consent is the problem (docs/protocol.md §4).
``code_kind`` names the family a data source may give its own published error code per route
(``[routes.error_codes]``: ``unauthenticated``, ``forbidden``, ``consent``).

``reason`` is a stable machine code (goes to the disclosure log, metrics labels and the error
body); ``detail`` is a human sentence. Neither may contain a token or a personal identifier:
those live only in the disclosure record.

Errors outside this tree never reach a response: ``FeedError``
(:mod:`samtykke_gateway.state.feed`, one failed poll of the Altinn 2 consent list: logged, retried,
and a stale feed becomes :class:`StateUnavailableError`), ``ExplainUsageError``
(:mod:`samtykke_gateway.cli.explain`, a bad command line: exit status 2) and a few private
control-flow exceptions inside one module each.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditUnavailableError",
    "AuthenticationError",
    "BadRequestError",
    "ClientDisconnectedError",
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
    "RequestBodyTimeoutError",
    "RequestBodyTooLargeError",
    "StateUnavailableError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
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

    status_code: ClassVar[int] = 503  # the gateway cannot decide: never a 500 (docs/protocol.md §4)
    default_reason: ClassVar[str] = "internal_error"
    #: Tax-administration style error code (``{"kode": ...}`` bodies), per status.
    kode: ClassVar[str] = "SG-503"
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


class RequestBodyTimeoutError(GatewayError):
    """408 (RFC 9110 §15.5.9): a request body the gateway must read did not arrive within
    ``request_body_timeout_seconds`` (a slow upload would hold the request open)."""

    status_code = 408
    default_reason = "request_body_timeout"
    kode = "SG-408"


class RequestBodyTooLargeError(GatewayError):
    """413: a request body the gateway must read is larger than ``max_request_body_bytes``."""

    status_code = 413
    default_reason = "request_body_too_large"
    kode = "SG-413"


class UnsupportedMediaTypeError(GatewayError):
    """415: a body subject needs ``Content-Type: application/json`` without a content coding."""

    status_code = 415
    default_reason = "unsupported_media_type"
    kode = "SG-415"


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
