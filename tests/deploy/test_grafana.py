"""deploy/grafana/samtykke-gateway.json: a dashboard Grafana can import, whose every query
names a metric the gateway really exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import metric_names_in

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "samtykke-gateway.json"


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _expressions() -> list[str]:
    dashboard = _dashboard()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_importable_json_with_unique_panels() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "samtykke-gateway" and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in dashboard["panels"]:
        assert panel["targets"] and {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


async def test_every_metric_in_the_dashboard_is_exported(exported_metric_names: set[str]) -> None:
    used = set().union(*(metric_names_in(e) for e in _expressions()))
    assert len(used) >= 10 and used <= exported_metric_names, sorted(used - exported_metric_names)


def test_the_metric_check_can_fail() -> None:
    assert metric_names_in('rate(samtykke_decisions_totl[5m])') == {"samtykke_decisions_totl"}
