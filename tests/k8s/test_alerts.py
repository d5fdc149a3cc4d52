"""The alert rules (helm/kuberlhf/rules/kuberlhf-alerts.yaml) as the chart ships them in its PrometheusRule:
promtool accepts them, their unit tests (tests/k8s/rules/) pass on them and make every alert fire and stay
quiet, the chart's values reach their thresholds, and they read only metrics that jobs or the operator export."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kuberlhf.telemetry.catalog import exported_names

from .promql import metric_names
from .test_helm import CHART, HELM, REPO, render

PROMTOOL = shutil.which("promtool", path=str(REPO / ".venv" / "bin")) or shutil.which("promtool")
RULES = CHART / "rules" / "kuberlhf-alerts.yaml"
UNIT_TESTS = Path(__file__).parent / "rules" / "kuberlhf-alerts.test.yaml"
SOURCE_RULES = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
ALERTS = [rule["alert"] for rule in SOURCE_RULES if "alert" in rule]
# Alerts that cannot name the job in their annotations, and why.
NOT_PER_JOB = {"KubeRLHFJobFailed": "the operator's kuberlhf_operator_jobs counts jobs per phase, unnamed"}

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm: run scripts/install_helm.sh")


def test_promtool_is_installed():
    """scripts/bootstrap.sh installs it; without it every rule test below would prove nothing."""
    assert PROMTOOL is not None, "no promtool: run scripts/install_prometheus.sh"


@pytest.fixture()
def helm_env(tmp_path) -> dict[str, str]:
    return {**os.environ, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}


def rendered_groups(env: dict[str, str], *sets: str) -> list[dict[str, Any]]:
    """spec.groups of the PrometheusRule `helm template` renders."""
    (rule,) = [o for o in render(env, "metrics.prometheusRule.enabled=true", *sets) if o["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def write_rules(groups: list[dict[str, Any]], directory: Path) -> Path:
    path = directory / "kuberlhf-alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def operator_metric_names() -> set[str]:
    """The series the operator's metrics (kuberlhf_operator/metrics.py) appear as in Prometheus."""
    from kuberlhf_operator import metrics

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {family.name + suffix for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)
            for family in value.describe() for suffix in suffixes[family.type]}


CHANGED_THRESHOLDS = ("metrics.prometheusRule.klBudget=2.5", "metrics.prometheusRule.noProgressMinutes=60")


@pytest.mark.parametrize("sets", [(), CHANGED_THRESHOLDS])
def test_promtool_accepts_the_rules_the_chart_renders(helm_env, tmp_path, sets):
    result = promtool("check", "rules", str(write_rules(rendered_groups(helm_env, *sets), tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_pass_on_the_rules_the_chart_renders(helm_env, tmp_path):
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(write_rules(rendered_groups(helm_env), tmp_path))]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_ships_the_rules_file_unchanged_with_default_values(helm_env):
    # So `promtool test rules tests/k8s/rules/kuberlhf-alerts.test.yaml` by hand tests what the chart installs.
    assert rendered_groups(helm_env) == yaml.safe_load(RULES.read_text())["groups"]


def test_the_chart_values_set_the_thresholds(helm_env):
    groups = rendered_groups(helm_env, *CHANGED_THRESHOLDS)
    records = {rule["record"]: rule["expr"] for group in groups for rule in group["rules"] if "record" in rule}
    assert records == {"kuberlhf:kl_budget_nats": "vector(2.5)",
                       "kuberlhf:no_progress_threshold_seconds": "vector(60 * 60)"}


def test_the_values_schema_refuses_a_kl_budget_that_is_not_a_number(helm_env):
    result = subprocess.run([HELM, "template", "rel", str(CHART), "--set", "metrics.prometheusRule.klBudget=1;x"],
                            capture_output=True, text=True, env=helm_env, timeout=120)
    assert result.returncode != 0 and "prometheusRule/klBudget" in result.stderr, result.stderr


@pytest.mark.parametrize("alert", ALERTS)
def test_the_alert_has_unit_tests_where_it_fires_and_where_it_stays_quiet(alert):
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == alert]
    assert any(case.get("exp_alerts") for case in cases), f"no unit test expects {alert} to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"no unit test expects {alert} to stay quiet"


@pytest.mark.parametrize("alert", ALERTS)
def test_the_alert_has_a_duration_a_severity_and_annotations_naming_the_job(alert):
    (rule,) = [rule for rule in SOURCE_RULES if rule.get("alert") == alert]
    assert "for" in rule and rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    if alert not in NOT_PER_JOB:
        for label in ("namespace", "job", "stage"):
            assert f"$labels.{label}" in rule["annotations"]["summary"], label


def test_the_rules_read_only_metrics_that_jobs_and_the_operator_export():
    known = exported_names() | operator_metric_names() | {rule["record"] for rule in SOURCE_RULES if "record" in rule}
    unknown = {rule.get("alert", rule.get("record")): metric_names(rule["expr"]) - known for rule in SOURCE_RULES}
    assert not {name: metrics for name, metrics in unknown.items() if metrics}


def test_metric_names_skips_functions_labels_ranges_and_keywords():
    expr = 'max by (role) (rate(a_total{job=~"$job"}[5m] offset 1h)) > on() group_left() b:c and d < 1e3'
    assert metric_names(expr) == {"a_total", "b:c", "d"}
