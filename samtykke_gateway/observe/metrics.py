"""Prometheus metrics (``/metrics``) on a per-gateway ``CollectorRegistry``, never the global one.

:class:`GatewayMetrics` is the :class:`~samtykke_gateway.observe.hooks.Observer` the enforcement path
calls, plus the consent state's and the consent feed's counters. Label values are only: route
name, decision (``allow``/``deny``/``error``), reason code, status class (``2xx``…), issuer
name, backend operation name, feed result. Never a token, ``jti``, consent id, subject or path.

==========================================  =========  ====================================
metric                                      type       labels
==========================================  =========  ====================================
samtykke_decisions_total                    counter    route, decision, reason, status_class
samtykke_gate_seconds                       histogram  route
samtykke_upstream_seconds                   histogram  status_class (``error`` on failure)
samtykke_upstream_errors_total              counter    —
samtykke_disclosure_write_seconds           histogram  ok (``true``/``false``)
samtykke_state_errors_total                 counter    operation
samtykke_jti_reuse_total                    counter    —
samtykke_feed_polls_total                   counter    result (``ok``/``error``)
samtykke_feed_revocations_total             counter    —
samtykke_config_reloads_total               counter    result (``ok``/``refused``)
samtykke_jwks_ready                         gauge      issuer (1 = keys loaded)
samtykke_jwks_failing                       gauge      issuer (1 = last fetch failed)
samtykke_jwks_fetches_total                 counter    issuer (attempts)
samtykke_jwks_fetch_failures_total          counter    issuer (when ``KeySet.failure_count`` exists)
==========================================  =========  ====================================

prometheus-client is confined to this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from samtykke_gateway.audit.record import DisclosureRecord
    from samtykke_gateway.tokens.verify import IssuerPolicy

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "metrics_of", "parse_text", "status_class"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
log = logging.getLogger("samtykke_gateway.metrics")

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def status_class(status: int | None) -> str:
    """``200`` → ``"2xx"``; ``None``/0 → ``"error"``."""
    if not status:
        return "error"
    return f"{status // 100}xx"


class _KeySetCollector(Collector):
    """Reads the current gateway's key sets at scrape time (``ready``, ``last_error``,
    ``fetch_count``)."""

    def __init__(self) -> None:
        self.issuers: Mapping[str, IssuerPolicy] = {}

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("samtykke_jwks_ready", "1 when keys are loaded for the issuer", labels=["issuer"])
        failing = GaugeMetricFamily("samtykke_jwks_failing", "1 when the last JWKS fetch failed", labels=["issuer"])
        fetches = CounterMetricFamily("samtykke_jwks_fetches", "JWKS fetch attempts", labels=["issuer"])
        failures = CounterMetricFamily("samtykke_jwks_fetch_failures", "JWKS fetches that failed", labels=["issuer"])
        has_failures = False
        for name, policy in self.issuers.items():
            keys = policy.keys
            ready.add_metric([name], 1.0 if keys.ready else 0.0)
            failing.add_metric([name], 1.0 if keys.last_error else 0.0)
            fetches.add_metric([name], float(getattr(keys, "fetch_count", 0)))
            failure_count = getattr(keys, "failure_count", None)  # reported once KeySet counts them
            if isinstance(failure_count, int):
                failures.add_metric([name], float(failure_count))
                has_failures = True
        yield ready
        yield failing
        yield fetches
        if has_failures:
            yield failures


def metrics_of(observer: object) -> GatewayMetrics | None:
    """The :class:`GatewayMetrics` behind an observer: itself, or the one a
    :class:`~samtykke_gateway.observe.logs.DecisionLog` wraps (its ``inner``); else ``None``."""
    if isinstance(observer, GatewayMetrics):
        return observer
    inner = getattr(observer, "inner", None)
    return inner if isinstance(inner, GatewayMetrics) else None


class GatewayMetrics:
    """Observer + state/feed metrics on its own registry.

    :param registry: defaults to a new :class:`CollectorRegistry` (one per process/gateway, so
        tests and several gateways in one process never share counters).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._decisions = Counter("samtykke_decisions", "Decisions by outcome",
                                  ["route", "decision", "reason", "status_class"], registry=r)
        self._gate = Histogram("samtykke_gate_seconds", "Time to decide (tokens, policy, binding)",
                               ["route"], buckets=_FAST, registry=r)
        self._upstream = Histogram("samtykke_upstream_seconds", "Upstream time until the response starts",
                                   ["status_class"], buckets=_SLOW, registry=r)
        self._upstream_errors = Counter("samtykke_upstream_errors", "Upstream exchanges that failed", registry=r)
        self._audit = Histogram("samtykke_disclosure_write_seconds", "Disclosure-log append time",
                                ["ok"], buckets=_SLOW, registry=r)
        self._state_errors = Counter("samtykke_state_errors", "Consent-state backend failures",
                                     ["operation"], registry=r)
        self._jti = Counter("samtykke_jti_reuse", "Maskinporten tokens seen again (same jti)", registry=r)
        self._feed_polls = Counter("samtykke_feed_polls", "Consent feed polls", ["result"], registry=r)
        self._feed_revocations = Counter("samtykke_feed_revocations", "Revocations learnt from the feed",
                                         registry=r)
        self._reloads = Counter("samtykke_config_reloads", "Configuration reloads", ["result"], registry=r)
        self._keys = _KeySetCollector()
        r.register(self._keys)
        # labelled children by label values: ``labels()`` validates and locks on every call
        # (~2 µs); the label sets are bounded (route names, reason codes, status classes)
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- wiring --------------------------------------------------------------------------------
    def bind_issuers(self, issuers: Mapping[str, IssuerPolicy]) -> None:
        """Report these key sets from now on (a reload binds the new gateway's)."""
        self._keys.issuers = issuers

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE

    # -- Observer ------------------------------------------------------------------------------
    def decision(self, record: DisclosureRecord, gate_seconds: float) -> None:
        try:
            route = record.route or "none"
            self._child(self._decisions, route, record.decision or "none", record.reason or "none",
                        status_class(record.status)).inc()
            if gate_seconds > 0:
                self._child(self._gate, route).observe(gate_seconds)
        except Exception:  # noqa: BLE001 - metrics must never break a request
            log.debug("metrics: decision not recorded")

    def audit_write(self, seconds: float, *, ok: bool) -> None:
        try:
            self._child(self._audit, "true" if ok else "false").observe(seconds)
        except Exception:  # noqa: BLE001
            log.debug("metrics: audit write not recorded")

    def upstream(self, seconds: float, *, status: int | None) -> None:
        try:
            self._child(self._upstream, status_class(status)).observe(seconds)
            if status is None:
                self._upstream_errors.inc()
        except Exception:  # noqa: BLE001
            log.debug("metrics: upstream not recorded")

    # -- state / feed / reload -----------------------------------------------------------------
    def state_error(self, operation: str) -> None:
        self._state_errors.labels(operation).inc()

    def jti_reused(self) -> None:
        self._jti.inc()

    def feed_poll(self, *, ok: bool, revocations: int = 0) -> None:
        self._feed_polls.labels("ok" if ok else "error").inc()
        if revocations:
            self._feed_revocations.inc(revocations)

    def reload(self, *, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "refused").inc()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """A sample's value (tests and the load script): ``sample("samtykke_decisions_total",
        {"decision": "allow", ...})`` sums every sample matching the given labels."""
        total: float | None = None
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    total = (total or 0.0) + s.value
        return total


def parse_text(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse Prometheus text (for tests / bench): name → [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out
