"""No personal data in application logs or metrics (issue 5, docs/protocol.md §7): person ids, tokens and
consent ids live in the disclosure record only.

The sidecar as ``samtykke-gateway serve`` builds it (:class:`ReloadingApp`: decision log +
metrics) runs under uvicorn on loopback in front of the example upstream. Allowed and denied
requests carrying the two test persons' ids, tokens and consent ids go through it with every
logger at DEBUG, then some of them again while the disclosure store is locked (503s, the
store's failure log); then the *raw* log records (message, arguments, ``extra`` fields, formatted
tracebacks - before the JSON formatter's redaction, which is only the second line of defence)
and the ``/metrics`` text must contain no 11-digit number, no fragment of a token and no
consent id or ``jti``. Records from the test's own thread (its HTTP client logs URLs) are left
out; everything the servers' threads log is in.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from samtykke_gateway.dev.server import ThreadedServer
from samtykke_gateway.dev.examples import ExampleUpstream
from samtykke_gateway.sidecar.serve import ReloadingApp
from samtykke_gateway.dev.issuer import DevIssuer

from tests.state_support import cli, free_port, sidecar_process, write_config
from tests.support import (
    BANK,
    INCOME_PATH,
    INCOME_PERSON,
    TAX_BASE_PERSON,
    TAX_BASE_RESOURCE,
    TAX_BASE_SCOPE,
    a2_headers,
    tax_base_path,
)

ELEVEN_DIGITS = re.compile(r"(?<![0-9])[0-9]{11}(?![0-9])")
_STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}


class Secrets:
    """Everything that must stay out of logs and metrics, collected as requests are built."""

    def __init__(self) -> None:
        self.values: set[str] = {INCOME_PERSON, TAX_BASE_PERSON}

    def consent_id(self) -> str:
        value = str(uuid.uuid4())
        self.values |= {value, value.upper(), value.replace("-", "")}
        return value

    def jti(self) -> str:
        value = "jti-" + uuid.uuid4().hex
        self.values.add(value)
        return value

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        for value in headers.values():
            token = value.removeprefix("Bearer ").strip('"')
            for part in token.split("."):
                if len(part) >= 16:  # any 16-character window of a part would do: take three
                    self.values |= {part[:16], part[len(part) // 2 : len(part) // 2 + 16], part[-16:]}
        return headers

    def found_in(self, text: str) -> list[str]:
        found = sorted(v for v in self.values if v in text)
        found += [f"11 digits: {m}" for m in ELEVEN_DIGITS.findall(text)]
        return found


def _a3(issuer: DevIssuer, secrets: Secrets, *, year: str = "2022", subject: str = TAX_BASE_PERSON) -> dict[str, str]:
    details = [DevIssuer.altinn3_consent(subject=subject, consumer=BANK, consent_id=secrets.consent_id(),
                                         rights=[(TAX_BASE_RESOURCE, {"inntektsaar": year})])]
    bearer = issuer.mint_maskinporten(consumer=BANK, scope=TAX_BASE_SCOPE, authorization_details=details,
                                      jti=secrets.jti())
    return secrets.headers({"Authorization": f"Bearer {bearer}"})


def _a2(issuer: DevIssuer, secrets: Secrets, **kw: object) -> dict[str, str]:
    headers = a2_headers(issuer, consent_id=secrets.consent_id(), **kw)  # type: ignore[arg-type]
    return secrets.headers(headers)


def _cases(issuer: DevIssuer, secrets: Secrets) -> list[tuple[str, dict[str, str], int]]:
    income = INCOME_PATH + "?fraOgMed=2018-07&tilOgMed=2018-07"
    other_person = INCOME_PATH.replace(INCOME_PERSON, TAX_BASE_PERSON)
    garbage = f"eyJhbGciOiJSUzI1NiJ9.{INCOME_PERSON}{INCOME_PERSON}.c2lnbmF0dXJlc2lnbmF0dXJl"
    secrets.headers({"x": garbage})
    return [
        (income, _a2(issuer, secrets), 200),
        (tax_base_path("2022"), _a3(issuer, secrets), 200),
        (INCOME_PATH + "?fraOgMed=2018-09", _a2(issuer, secrets), 403),  # outside the period
        (other_person + "?fraOgMed=2018-07", _a2(issuer, secrets), 403),  # another person
        (tax_base_path("2021"), _a3(issuer, secrets), 403),  # year not consented
        (tax_base_path("2022", INCOME_PERSON), _a3(issuer, secrets), 403),
        (income, _a2(issuer, secrets, claims={"exp": 1_600_000_000, "nbf": 1_599_999_970}), 403),  # an expired consent token: a consent problem (issue 11)
        (income, {}, 401),
        (income, secrets.headers({"Authorization": f"Bearer {garbage}", "AltinnSamtykke": garbage}), 401),
        (income, {**_a2(issuer, secrets), "X-Correlation-ID": f"corr-{INCOME_PERSON}"}, 200),
        (f"/api/unknown/{INCOME_PERSON}", _a2(issuer, secrets), 404),
        (income + f"&extra={TAX_BASE_PERSON}", _a2(issuer, secrets), 200),
    ]


@pytest.fixture
def sidecar_url(tmp_path: Path, issuer_url: str) -> Iterator[str]:
    with ThreadedServer(ExampleUpstream().app) as upstream:
        config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream.url,
                              audit_url=f"sqlite:///{tmp_path / 'd.db'}?busy_timeout_ms=200")
        with ThreadedServer(ReloadingApp(config)) as server:
            yield server.url


# uvicorn writes its access log only when ``uvicorn.access`` has handlers; ``serve`` runs it with
# ``access_log=False`` (no handlers, no propagation; the subprocess test below checks that as
# run). pytest 9 attaches its capture handlers to non-propagating loggers, which would switch the
# access log on in-process only: they are taken off ``uvicorn.access`` for the requests, and
# levels are set directly rather than with ``caplog.set_level(logger=...)`` (which attaches too).
LOGGERS = ("samtykke_gateway", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "asyncio")


@contextlib.contextmanager
def _levels(level: int, *names: str) -> Iterator[None]:
    before = {name: logging.getLogger(name).level for name in names}
    access = logging.getLogger("uvicorn.access")
    handlers, access.handlers = access.handlers, []
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        access.handlers = handlers
        for name, old in before.items():
            logging.getLogger(name).setLevel(old)


def _server_side_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter()
    lines = []
    for record in records:
        if record.threadName == "MainThread":
            continue  # the test's own client
        lines.append(f"{record.name} {record.levelname} {record.getMessage()} {record.args!r}")
        lines += [f"  {k}={v!r}" for k, v in record.__dict__.items() if k not in _STANDARD]
        if record.exc_info:
            lines.append(formatter.formatException(record.exc_info))
    return "\n".join(lines)


def test_logs_and_metrics_carry_no_personal_data(sidecar_url: str, dev_issuer: DevIssuer, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    secrets = Secrets()
    cases = _cases(dev_issuer, secrets)
    caplog.set_level(logging.DEBUG)  # the root logger, where every record propagates to
    with _levels(logging.DEBUG, *LOGGERS), httpx.Client(base_url=sidecar_url, timeout=20) as client:
        for path, headers, expected in cases:
            response = client.get(path, headers=headers)
            assert response.status_code == expected, (path, response.text)
        # the same requests while the disclosure store is locked by another writer: 503s
        locker = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for path, headers, _ in cases[:3] + cases[7:9]:
                response = client.get(path, headers=headers)
                assert response.status_code == 503 and response.json()["reason"] == "audit_unavailable"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        metrics = client.get("/metrics").text
    logged = _server_side_text(caplog.records)
    assert "decision" in logged and "samtykke_gateway" in logged  # the capture did see the gateway
    assert logged.count("event='decision'") == len(cases) + 5
    assert "SQLITE_BUSY" in logged  # the store's failure log was captured as well
    assert "samtykke_decisions_total" in metrics
    assert secrets.found_in(logged) == [], logged[-3000:]
    assert secrets.found_in(metrics) == []


@pytest.mark.slow
def test_serve_at_debug_logs_nothing_personal(tmp_path: Path, dev_issuer: DevIssuer, issuer_url: str) -> None:
    """``samtykke-gateway serve`` as shipped, ``SAMTYKKE_GATEWAY_LOG_LEVEL=DEBUG``: its whole
    stderr. The JSON formatter would mask a person id or a JWT, so a mask in the output counts
    as a leak too (something at the source tried to log it)."""
    secrets = Secrets()
    cases = _cases(dev_issuer, secrets)
    with ThreadedServer(ExampleUpstream().app) as upstream:
        config = write_config(tmp_path / "gateway.toml", issuer_url=issuer_url, upstream_url=upstream.url,
                              audit_url=f"sqlite:///{tmp_path / 'd.db'}")
        port = free_port()
        args = [*cli(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        with sidecar_process(args, port=port, log_path=tmp_path / "log",
                             env={"SAMTYKKE_GATEWAY_LOG_LEVEL": "DEBUG"}), \
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            for path, headers, expected in cases:
                assert client.get(path, headers=headers).status_code == expected, path
            metrics = client.get("/metrics").text
    text = (tmp_path / "log").read_text()
    assert text.count('"event":"decision"') == len(cases), text[-2000:]
    assert secrets.found_in(text) == [], text[-3000:]
    for mask in ("[person-id]", "[token]", "[redacted]"):
        assert mask not in text
    assert secrets.found_in(metrics) == []
