"""deploy/prometheus/: promtool checks the alert rules and runs their unit tests, and every
metric the rules read is one the gateway exports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import metric_names_in

yaml = pytest.importorskip("yaml", reason="the test extra installs pyyaml")

pytestmark = pytest.mark.anyio

RULES_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "samtykke-gateway.rules.yaml"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        message = "promtool is missing (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI") == "true" or os.environ.get("SAMTYKKE_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return tool


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    result = _run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = _run("test", "rules", "samtykke-gateway.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_named_in_the_issue_exists_and_is_unit_tested() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((RULES_DIR / "samtykke-gateway.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    names = {r["alert"] for r in rules}
    assert names == {"SamtykkeDisclosureStoreDown", "SamtykkeKeySetsStale", "SamtykkeGateway5xx",
                     "SamtykkeRefusalsSpiking", "SamtykkeRevocationFeedStale"}
    assert tested == names  # each fires in a test (and each test also checks a quiet time)


async def test_every_metric_the_rules_read_is_exported(exported_metric_names: set[str]) -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = set().union(*(metric_names_in(r["expr"]) for r in rules))
    assert used and used <= exported_metric_names, sorted(used - exported_metric_names)
