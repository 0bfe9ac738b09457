"""Observability: Prometheus metrics, JSON logs, OpenTelemetry tracing, observer hooks."""
