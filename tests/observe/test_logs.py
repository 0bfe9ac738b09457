"""Application logs (``samtykke_gateway/observe/logs.py``): the JSON shape, redaction of tokens
and person ids, the decision log's levels, and where an exception came from without its text."""

from __future__ import annotations

import io
import json
import logging

from samtykke_gateway.observe.logs import JsonFormatter, frames, redact
from tests.support import INCOME_PERSON


def test_decision_log_puts_released_answers_at_debug_and_refusals_at_info_or_warning() -> None:
    from samtykke_gateway.audit.record import DisclosureRecord
    from samtykke_gateway.observe.hooks import NullObserver
    from samtykke_gateway.observe.logs import DecisionLog

    stream = io.StringIO()
    logger = logging.getLogger("samtykke_gateway.decision.test")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    log = DecisionLog(NullObserver(), logger=logger)

    def record(decision: str, status: int, reason: str) -> DisclosureRecord:
        return DisclosureRecord(time="2026-12-08T00:00:00Z", correlation_id="c-1", decision=decision,
                                reason=reason, status=status, method="GET", path="/x")

    cases = [record("allow", 200, "released"), record("deny", 403, "consent_revoked"),
             record("error", 503, "audit_unavailable")]
    try:
        for level in (logging.INFO, logging.DEBUG):
            logger.setLevel(level)
            for r in cases:
                log.decision(r, 0.001)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(ln["decision"], ln["level"]) for ln in lines] == [
        ("deny", "info"), ("error", "warning"),  # at INFO: the refusals only
        ("allow", "debug"), ("deny", "info"), ("error", "warning"),  # at DEBUG: every decision
    ]


def test_redact_masks_tokens_and_person_ids() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    text = f"got {token} for {INCOME_PERSON}; Authorization: Bearer abc.def; ApiKey: s3cret; org 999999999"
    out = redact(text)
    assert token not in out and INCOME_PERSON not in out and "abc.def" not in out and "s3cret" not in out
    assert "999999999" in out  # organisation numbers are not personal


def test_json_formatter_shape() -> None:
    record = logging.LogRecord("samtykke_gateway.x", logging.WARNING, __file__, 1,
                               "person %s", (INCOME_PERSON,), None)
    record.event = "decision"
    record.subject = INCOME_PERSON  # not a safe field: dropped
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["event"] == "decision" and line["message"] == "person [person-id]"
    assert "subject" not in line and line["time"].endswith("Z")


def _payments(person: str) -> None:
    raise ValueError(f"no payments for {person}")


def test_frames_name_where_an_exception_came_from_but_not_its_text() -> None:
    try:
        _payments(INCOME_PERSON)
    except ValueError as exc:
        where = frames(exc)
    assert where.startswith("observe/test_logs.py:") and " in _payments <- observe/test_logs.py:" in where
    assert where.endswith("in test_frames_name_where_an_exception_came_from_but_not_its_text")
    assert INCOME_PERSON not in where and "no payments" not in where
