"""Error bodies: RFC 9457 ``application/problem+json`` (default) or the tax administration's
``{"kode", "melding", "korrelasjonsid"}`` style (Skatteetaten api-dokumentasjon ``docs/om/feil.md``).

On 401 the RFC 6750 §3 ``WWW-Authenticate: Bearer`` challenge is added. Bodies carry the
reason code and a human sentence, never a token or a personal identifier.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from .exceptions import GatewayError

__all__ = ["generic_body", "render_error"]

Headers = list[tuple[bytes, bytes]]


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def render_error(exc: GatewayError, *, correlation_id: str, style: str = "problem") -> tuple[int, Headers, bytes]:
    """An error → (status, ASGI headers, body bytes).

    :param style: ``"problem"`` (RFC 9457) or ``"skatteetaten"``.
    """
    status = exc.status_code
    if style == "skatteetaten":
        payload: dict[str, object] = {
            "kode": exc.kode,
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
    """A generic body for an upstream error status on a scoped route: the upstream's own body
    may carry personal data, so it never leaves (the disclosure record keeps the status)."""
    if style == "skatteetaten":
        payload: dict[str, object] = {
            "kode": f"SG-{status}",
            "melding": _title(status),
            "korrelasjonsid": correlation_id,
        }
        content_type = b"application/json"
    else:
        payload = {
            "type": "urn:samtykke-gateway:error:upstream_status",
            "title": _title(status),
            "status": status,
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
