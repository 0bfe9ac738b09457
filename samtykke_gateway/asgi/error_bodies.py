"""Error bodies: RFC 9457 ``application/problem+json`` (default) or the tax administration's
``{"kode", "melding", "korrelasjonsid"}`` style (the tax administration's published error format,
https://github.com/Skatteetaten/api-dokumentasjon, ``docs/om/feil.md`` there; docs/protocol.md §4).

On 401 the RFC 6750 §3 ``WWW-Authenticate: Bearer`` challenge is added — and 401 is only
ever the Maskinporten bearer's own failure; a consent problem is 403 without the challenge
(docs/protocol.md §4). Bodies carry the reason code and a human sentence, never a token or a
personal identifier.

In the ``skatteetaten`` style ``kode`` is the route's own published code for the error's
family (``[routes.error_codes]``: ``unauthenticated`` 401, ``forbidden`` 403 not about the
consent, ``consent`` 403 about the consent — e.g. the income API's ``IM-004``/``IM-005``/
``IM-010``, the tax base's ``SSG-010``), else the gateway's generic ``SG-…`` code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from samtykke_gateway.exceptions import GatewayError

__all__ = ["generic_body", "render_error"]

Headers = list[tuple[bytes, bytes]]


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def render_error(
    exc: GatewayError,
    *,
    correlation_id: str,
    style: str = "problem",
    codes: Mapping[str, str] | None = None,
) -> tuple[int, Headers, bytes]:
    """An error → (status, ASGI headers, body bytes).

    :param style: ``"problem"`` (RFC 9457) or ``"skatteetaten"``.
    :param codes: the matched route's ``error_codes`` (family → ``kode``), used in the
        ``skatteetaten`` style for an error of that :attr:`~GatewayError.code_kind`.
    """
    status = exc.status_code
    if style == "skatteetaten":
        kode = exc.kode
        if codes and exc.code_kind is not None:
            kode = codes.get(exc.code_kind, kode)
        payload: dict[str, object] = {
            "kode": kode,
            "melding": exc.detail,
            "korrelasjonsid": correlation_id,
            "arsak": exc.reason,
        }
        content_type = b"application/json"
    else:
        payload = {
            "type": f"urn:samtykke-gateway:error:{exc.reason}",
            "title": _title(status),
            "status": status,
            "detail": exc.detail,
            "reason": exc.reason,
            "correlation_id": correlation_id,
        }
        content_type = b"application/problem+json"
    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()
    headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-correlation-id", correlation_id.encode()),
    ]
    challenge = exc.www_authenticate
    if challenge is not None and status == 401:
        headers.append((b"www-authenticate", challenge.encode()))
    allow = getattr(exc, "allow", None)
    if allow and status == 405:
        headers.append((b"allow", ", ".join(allow).encode("ascii")))
    return status, headers, body


def generic_body(status: int, *, correlation_id: str, style: str = "problem") -> tuple[Headers, bytes]:
    """A generic body for an upstream status other than 2xx on a scoped route: the upstream's
    own body may carry personal data, so it never leaves (the disclosure record keeps the
    status). The same fields as :func:`render_error`'s bodies, and the disclosure record's
    reason: ``upstream_status`` for 400 and above, ``no_data_released`` below (a 3xx)."""
    reason = "upstream_status" if status >= 400 else "no_data_released"
    detail = f"the data source answered {status} ({_title(status)}); its own body is withheld"
    if style == "skatteetaten":
        payload: dict[str, object] = {
            "kode": f"SG-{status}",
            "melding": detail,
            "korrelasjonsid": correlation_id,
            "arsak": reason,
        }
        content_type = b"application/json"
    else:
        payload = {
            "type": f"urn:samtykke-gateway:error:{reason}",
            "title": _title(status),
            "status": status,
            "detail": detail,
            "reason": reason,
            "correlation_id": correlation_id,
        }
        content_type = b"application/problem+json"
    body = json.dumps(payload, separators=(",", ":")).encode()
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-correlation-id", correlation_id.encode()),
    ], body
