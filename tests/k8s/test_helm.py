"""The Helm chart, rendered by the real helm binary (installed by scripts/bootstrap.sh): lint --strict is
clean, every rendered object passes kubernetes-validate --strict, the security settings the chart promises
are there, values.schema.json refuses bad values, and the RayJobs the operator builds hold valid pods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kuberlhf.spec import RLHFJobSpec
from kuberlhf_operator.rayjob import OperatorSettings, build_children

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kuberlhf"
HELM = shutil.which("helm", path=str(REPO / ".venv" / "bin")) or shutil.which("helm")
K8S_VERSION = "1.31.0"

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm: run scripts/install_helm.sh")


@pytest.fixture()
def helm_env(tmp_path) -> dict[str, str]:
    return {**os.environ, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120)


def render(env: dict[str, str], *sets: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "kuberlhf-system", "--include-crds"]
    for value in sets:
        args += ["--set", value]
    result = helm(env, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_lint_strict_is_clean(helm_env):
    result = helm(helm_env, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("sets", [
    (),
    ("metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
     "metrics.grafanaDashboard.enabled=true", "security.networkPolicy.monitoringNamespaceLabels.team=monitoring",
     "jobPolicy.allowedImages={registry.corp/}"),
])
def test_every_rendered_object_is_valid_kubernetes(helm_env, sets):
    objects = render(helm_env, *sets)
    kinds = sorted(o["kind"] for o in objects)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "Service"} <= set(kinds)
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # Prometheus Operator kinds: not in kubernetes-validate's schemas
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    if sets:
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds)
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert json.loads(env["KUBERLHF_MONITORING_NAMESPACE_LABELS"]) == {"team": "monitoring"}
        assert env["KUBERLHF_ALLOWED_IMAGES"] == "registry.corp/" and env["KUBERLHF_RAY_AUTH"] == "token"


def test_the_operator_runs_unprivileged_on_a_read_only_root(helm_env):
    (deployment,) = [o for o in render(helm_env) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"] and container["livenessProbe"] and container["readinessProbe"]
    assert {"name": "KUBERLHF_RUNTIME_IMAGE", "value": "ghcr.io/kuberlhf/runtime:0.1.0"} in container["env"]


def rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {(group, resource): set(rule["verbs"]) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]}


def test_rbac_is_least_privilege(helm_env):
    objects = render(helm_env)
    verbs = {key: value for o in objects if o["kind"] == "ClusterRole" for key, value in rules(o).items()}
    assert all("*" not in v and "delete" not in v for v in verbs.values())  # owner references clean up
    assert verbs[("ray.io", "rayjobs")] == {"get", "list", "watch", "create", "patch"}
    assert ("", "secrets") not in verbs
    assert verbs[("kuberlhf.io", "rlhfjobs/finalizers")] == {"update"}  # owner references that block deletion
    job = yaml.safe_load((REPO / "examples" / "ppo-tiny.yaml").read_text())
    job["metadata"].update(uid="1234", namespace="team-a")
    for child in build_children(job, RLHFJobSpec.model_validate(job["spec"]), OperatorSettings("runtime:1")):
        group = child["apiVersion"].rpartition("/")[0]
        plural = {"NetworkPolicy": "networkpolicies"}.get(child["kind"], child["kind"].lower() + "s")
        assert {"get", "create"} <= verbs[(group, plural)], child["kind"]  # every child the operator makes
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]  # jobs get their own, per job


def test_watch_namespaces_grants_the_operator_its_rights_in_those_namespaces_only(helm_env):
    objects = render(helm_env, "watchNamespaces={team-a,team-b}")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    roles = {o["metadata"]["name"]: rules(o) for o in objects if o["kind"] == "ClusterRole"}
    bindings = {(o["kind"], o["metadata"].get("namespace")): o["roleRef"]["name"] for o in objects
                if o["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    # cluster-wide only what kopf needs to find the CRD and the namespaces; jobs and children per namespace
    assert bindings == {("ClusterRoleBinding", None): "rel-operator-discovery",
                        ("RoleBinding", "team-a"): "rel-operator", ("RoleBinding", "team-b"): "rel-operator"}
    assert set(roles["rel-operator-discovery"]) == {("apiextensions.k8s.io", "customresourcedefinitions"),
                                                    ("", "namespaces")}
    assert ("ray.io", "rayjobs") in roles["rel-operator"]
    everywhere = render(helm_env)
    (deployment,) = [o for o in everywhere if o["kind"] == "Deployment"]
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert sorted(o["roleRef"]["name"] for o in everywhere if o["kind"] == "ClusterRoleBinding") == [
        "rel-operator", "rel-operator-discovery"]


def test_the_chart_installs_as_a_subchart_of_an_umbrella_chart_with_global_values(helm_env, tmp_path):
    """Helm hands an umbrella chart's `global` values to every subchart: the values schema must take them."""
    umbrella = tmp_path / "platform"
    umbrella.mkdir()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (umbrella / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "kuberlhf", "version": chart["version"], "repository": f"file://{CHART}"}]}))
    (umbrella / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.corp"}, "kuberlhf": {"watchNamespaces": ["team-a"]}}))
    built = helm(helm_env, "dependency", "build", str(umbrella))
    assert built.returncode == 0, built.stderr
    result = helm(helm_env, "template", "rel", str(umbrella), "--namespace", "platform")
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert [o["metadata"]["namespace"] for o in objects if o["kind"] == "RoleBinding"] == ["team-a"]


def test_the_crd_in_the_chart_is_the_generated_one(helm_env):
    from kuberlhf.crd import crd_document

    (crd,) = [o for o in render(helm_env) if o["kind"] == "CustomResourceDefinition"]
    assert crd == crd_document()


@pytest.mark.parametrize("value, message", [
    ("replicaCount=3", "maximum"),
    ("image.pullPolicy=Sometimes", "image/pullPolicy"),
    ("metrics.port=0", "minimum"),
    ("security.rayAuth=maybe", "security/rayAuth"),
])
def test_the_values_schema_refuses_bad_values(helm_env, value, message):
    result = helm(helm_env, "template", "rel", str(CHART), "--set", value)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_rayjobs_the_operator_builds_hold_valid_pods(example):
    job = yaml.safe_load(example.read_text())
    job["metadata"].update(uid="1234", namespace="team-a")
    job["spec"]["cluster"] = {"persistentVolumeClaim": "data", "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    children = build_children(job, RLHFJobSpec.model_validate(job["spec"]), OperatorSettings(
        "runtime:1", monitoring_namespaces={"kubernetes.io/metadata.name": "monitoring"}))
    for child in children[:-1]:  # ConfigMap, ServiceAccount, Role, RoleBinding, NetworkPolicy
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)
    rayjob = children[-1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    validate_rayjob_fields(rayjob)


def test_pod_overrides_reach_every_ray_pod_and_stay_valid():
    """spec.cluster's env, imagePullSecrets, volumes, affinity, nodeSelector and tolerations: in the head's and
    the workers' pods, which still pass kubernetes-validate --strict; user code from a ConfigMap on PYTHONPATH."""
    job = yaml.safe_load((REPO / "examples" / "grpo-tiny.yaml").read_text())
    job["metadata"].update(uid="1234", namespace="team-a")
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}
    job["spec"]["cluster"] = {
        "env": {"PYTHONPATH": "/code", "HF_HUB_OFFLINE": "1"}, "imagePullSecrets": ["registry"],
        "secretEnv": [{"name": "HF_TOKEN", "secretName": "hub", "key": "token"}],
        "volumes": [{"name": "code", "mountPath": "/code", "configMap": "reward-code"},
                    {"name": "cache", "mountPath": "/cache", "persistentVolumeClaim": "hf-cache", "readOnly": False}],
        "affinity": affinity, "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    rayjob = build_children(job, RLHFJobSpec.model_validate(job["spec"]), OperatorSettings("runtime:1"))[-1]
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": template}, K8S_VERSION, strict=True)
        pod = template["spec"]
        (container,) = pod["containers"]
        assert container["env"] == [
            {"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "PYTHONPATH", "value": "/code"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]
        assert pod["imagePullSecrets"] == [{"name": "registry"}] and pod["affinity"] == affinity
        assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["code"]["configMap"] == {"name": "reward-code"}
        assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache", "readOnly": False}
        mounts = {m["name"]: (m["mountPath"], m.get("readOnly")) for m in container["volumeMounts"]}
        assert mounts["code"] == ("/code", True) and mounts["cache"] == ("/cache", False)


@pytest.mark.parametrize("cluster, message", [
    ({"volumes": [{"name": "home", "mountPath": "/x", "secret": "s"}]}, "the operator mounts"),
    ({"volumes": [{"name": "a", "mountPath": "/etc/kuberlhf/", "secret": "s"}]}, "the operator mounts"),
    ({"volumes": [{"name": "a", "mountPath": "/a", "secret": "s", "configMap": "c"}]}, "exactly one of"),
    ({"env": {"HF_TOKEN": "x"}, "secretEnv": [{"name": "HF_TOKEN", "secretName": "h", "key": "t"}]},
     "env and secretEnv both set HF_TOKEN"),
    ({"env": {"MY-VAR": "x"}}, "not an environment variable name"),
])
def test_pod_overrides_that_would_clash_are_refused(cluster, message):
    from pydantic import ValidationError

    job = yaml.safe_load((REPO / "examples" / "grpo-tiny.yaml").read_text())
    with pytest.raises(ValidationError, match=message):
        RLHFJobSpec.model_validate({**job["spec"], "cluster": cluster})


# The ray.io/v1 RayJob fields KubeRLHF emits, with their types (KubeRay 1.3+ API reference).
RAYJOB_SPEC_FIELDS = {"entrypoint": str, "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int,
                      "backoffLimit": int, "suspend": bool, "submissionMode": str, "runtimeEnvYAML": str,
                      "rayClusterSpec": dict, "activeDeadlineSeconds": int, "metadata": dict}
WORKER_GROUP_FIELDS = {"groupName": str, "replicas": int, "minReplicas": int, "maxReplicas": int,
                       "rayStartParams": dict, "template": dict}


def validate_rayjob_fields(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    for key, value in rayjob["spec"].items():
        assert isinstance(value, RAYJOB_SPEC_FIELDS[key]), key
    assert rayjob["spec"]["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode")
    yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in rayjob["spec"]["metadata"].values())  # map[string]string
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert set(cluster) <= {"rayVersion", "headGroupSpec", "workerGroupSpecs", "authOptions"}
    assert cluster.get("authOptions", {"mode": "token"}) == {"mode": "token"}  # KubeRay 1.6+: token | disabled
    assert all(isinstance(v, str) for v in cluster["headGroupSpec"]["rayStartParams"].values())  # KubeRay wants strings
    for group in cluster["workerGroupSpecs"]:
        for key, value in group.items():
            assert isinstance(value, WORKER_GROUP_FIELDS[key]), key
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
