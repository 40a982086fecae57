"""deploy/observability, checked without a running stack: the scrape config and alert rules by
Debian's ``promtool`` (config and rules load; the rules' unit tests pass, and every alert has a case
where it fires and one where it stays quiet), the Grafana dashboard against Grafana's own models
(``grafana-foundation-sdk``, generated from Grafana's schema), and every query of the dashboard and
the rules against the metrics the services really export. tests/e2e/test_stack.py then runs a real
Prometheus with these files against ``omost serve``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from planner_service.metrics import PlannerMetrics
from render_service.api.health import _Snapshot
from render_service.store import QueueStats
from tests.prometheus_server import OBSERVABILITY, binary, dashboard_expressions, metric_names

DASHBOARD = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
RULES = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> str:
    result = subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def exported_names() -> set[str]:
    """Every sample name the planner's and the render API's /metrics produce (from their own collectors)."""
    render = _Snapshot(QueueStats(live_workers=1, heartbeats={"w": 1.0}, busy={"w": True}), depth_limit=1000)
    families = [*PlannerMetrics().registry.collect(), *render.collect()]
    return {sample.name for family in families for sample in family.samples} | {"up"}


def exported_families() -> set[str]:
    render = _Snapshot(QueueStats(heartbeats={"w": 1.0}, busy={"w": True}), depth_limit=1000)
    return {family.name for family in [*PlannerMetrics().registry.collect(), *render.collect()]}


def test_promtool_loads_the_scrape_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert f"SUCCESS: {len(ALERTS)} rules found" in promtool("check", "rules", "alerts.yml")


def test_the_alert_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = yaml.safe_load((OBSERVABILITY / "alerts_test.yml").read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    names = {rule["alert"] for rule in ALERTS}
    assert names >= {
        "OmostRenderQueueBackingUp",
        "OmostNoLiveRenderWorkers",
        "OmostRenderJobFailureRatioHigh",
        "OmostPlannerLLMDown",
        "OmostRedisUnreachable",
    }
    for name in names:
        fired = [c for c in checks if c["alertname"] == name and c.get("exp_alerts")]
        quiet = [c for c in checks if c["alertname"] == name and not c.get("exp_alerts")]
        assert fired and quiet, f"{name}: needs a case where it fires and one where it stays quiet"


def _subset(mine: Any, theirs: Any, path: str = "") -> list[str]:
    """Where ``mine`` has a field or value that ``theirs`` lacks or differs in."""
    if isinstance(mine, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: not an object in the schema"]
        return [
            problem
            for key, value in mine.items()
            for problem in (_subset(value, theirs[key], f"{path}/{key}") if key in theirs else [f"{path}/{key}"])
        ]
    if isinstance(mine, list):
        if not isinstance(theirs, list) or len(mine) != len(theirs):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) for p in _subset(a, b, f"{path}[{i}]")]
    return [] if mine == theirs else [f"{path}: {mine!r} became {theirs!r}"]


def test_the_dashboard_fits_grafanas_schema() -> None:
    """Read through Grafana's generated models (panel options and Prometheus queries included) and
    written back: a field the schema does not know is dropped, so the round trip shows it."""
    register_default_plugins()
    model = Dashboard.from_json(DASHBOARD)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _subset(DASHBOARD, again) == []
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_catches_a_field_the_schema_does_not_know() -> None:
    register_default_plugins()
    broken = json.loads(json.dumps(DASHBOARD))
    broken["panels"][1]["targets"][0]["exrp"] = "up"
    again = json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder))
    assert _subset(broken, again) == ["/panels[1]/targets[0]/exrp"]


def test_dashboard_and_alerts_read_only_metrics_the_services_export() -> None:
    exported = exported_names()
    expressions = dashboard_expressions(DASHBOARD) + [rule["expr"] for rule in ALERTS]
    for expression in expressions:
        unknown = metric_names(expression) - exported
        assert not unknown, f"{expression!r} reads {unknown}, which no service exports"
    shown = set().union(*(metric_names(e) for e in dashboard_expressions(DASHBOARD)))
    # Every family the services export is on the dashboard (a histogram through its _bucket or _sum).
    missing = {f for f in exported_families() if not any(n == f or n.startswith(f"{f}_") for n in shown)}
    assert not missing, f"exported but not on the dashboard: {missing}"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    queries = dashboard_expressions(DASHBOARD)
    rules = [{"record": f"omost:dashboard_query_{n}", "expr": query} for n, query in enumerate(queries)]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", "queries.yml", cwd=tmp_path)


@pytest.mark.parametrize(
    "expression, names",
    [
        ('sum by (status) (rate(omost_render_jobs_finished_total{status="omost_x"}[5m]))',
         {"omost_render_jobs_finished_total"}),
        ('up{job=~"omost-planner"} == 0', {"up"}),
        ("time() - max without (instance) (omost_render_worker_last_heartbeat_timestamp_seconds)",
         {"omost_render_worker_last_heartbeat_timestamp_seconds"}),
    ],
)  # fmt: skip
def test_metric_names_are_read_from_queries(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names
