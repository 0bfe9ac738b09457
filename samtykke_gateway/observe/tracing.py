"""Optional OpenTelemetry tracing: one span per proxied request (extra ``otel``).

Enabled by ``SAMTYKKE_GATEWAY_TRACING=1`` for ``samtykke-gateway serve``; the exporter and
sampler come from the OpenTelemetry SDK's own environment variables (``OTEL_*``), set up by
whoever installs the SDK. The span is ``samtykke-gateway`` with attributes ``http.request.method``,
``http.response.status_code`` and ``samtykke.correlation_id`` — never the path (it holds person
ids), a token or a consent id.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_tracer", "traced"]


def get_tracer() -> Any:
    """The gateway's tracer.

    :raises RuntimeError: ``opentelemetry-api`` is not installed (with how to install it).
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise RuntimeError(
            "tracing needs OpenTelemetry: pip install 'samtykke-gateway[otel]' "
            "(or unset SAMTYKKE_GATEWAY_TRACING)"
        ) from None
    return trace.get_tracer("samtykke_gateway")


async def traced(tracer: Any, app: Any, scope: Any, receive: Any, send: Any, correlation_id: str) -> None:
    """Run ``app`` inside a server span; records the response status."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    # record_exception=False: an exception's text may quote personal data (the logs redact it, a span would not)
    with tracer.start_as_current_span("samtykke-gateway", kind=SpanKind.SERVER, record_exception=False) as span:
        span.set_attribute("http.request.method", scope.get("method", ""))
        span.set_attribute("samtykke.correlation_id", correlation_id)

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        await app(scope, receive, send_wrapper)
