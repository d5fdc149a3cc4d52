"""The Grafana dashboard (helm/kuberlhf/dashboards/kuberlhf.json) against telemetry/catalog.py: it queries only
metrics a job exports and draws every one of them (a new metric cannot be forgotten), every panel has a query
on the datasource variable, and the chart's ConfigMap carries the file unchanged for Grafana's sidecar."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

import pytest

from kuberlhf.telemetry.catalog import PHASES, exported_names

from .promql import metric_names
from .test_helm import CHART, HELM, render

DASHBOARD_FILE = CHART / "dashboards" / "kuberlhf.json"
DASHBOARD = json.loads(DASHBOARD_FILE.read_text())
NOT_DRAWN: dict[str, str] = {}  # exported metrics the dashboard leaves out on purpose, and why


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[str]:
    return [target["expr"] for panel in panels(DASHBOARD["panels"]) for target in panel.get("targets", [])]


def drawn() -> set[str]:
    return {name for expr in queries() for name in metric_names(expr)}


def test_the_dashboard_has_a_prometheus_datasource_variable_and_job_filters():
    assert DASHBOARD["schemaVersion"] >= 36 and DASHBOARD["uid"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job", "stage"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "stage"):
        assert re.match(rf"label_values\(kuberlhf_step\b.*, {name}\)$", variables[name]["definition"]), name
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_queries_the_datasource_variable():
    for panel in panels(DASHBOARD["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids))


def test_queries_read_only_metrics_a_job_exports():
    unknown = {expr: metric_names(expr) - exported_names() for expr in queries()}
    assert not {expr: names for expr, names in unknown.items() if names}


def test_every_exported_metric_is_drawn():
    assert not exported_names() - drawn() - set(NOT_DRAWN), "add a panel, or list the metric in NOT_DRAWN with why"
    assert not set(NOT_DRAWN) & drawn(), "drawn after all: remove it from NOT_DRAWN"


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_every_phase_of_a_step_is_drawn(phase):
    selectors = [re.search(r'phase(=~?)"([^"]*)"', expr) for expr in queries() if "kuberlhf_phase_seconds" in expr]
    assert any(s and (re.fullmatch(s[2], phase) if s[1] == "=~" else s[2] == phase) for s in selectors)


@pytest.fixture()
def helm_env(tmp_path) -> dict[str, str]:
    return {**os.environ, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}


@pytest.mark.skipif(HELM is None, reason="no helm: run scripts/install_helm.sh")
def test_the_chart_configmap_carries_the_dashboard_for_grafanas_sidecar(helm_env):
    (configmap,) = [o for o in render(helm_env, "metrics.grafanaDashboard.enabled=true") if o["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "kuberlhf-system"
    assert json.loads(configmap["data"]["kuberlhf.json"]) == DASHBOARD


@pytest.mark.skipif(HELM is None, reason="no helm: run scripts/install_helm.sh")
def test_the_dashboard_configmap_can_go_to_grafanas_namespace(helm_env):
    objects = render(helm_env, "metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.namespace=monitoring")
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["metadata"]["namespace"] == "monitoring"
