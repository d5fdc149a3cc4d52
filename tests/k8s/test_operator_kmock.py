"""The real operator (kopf, `kuberlhf_operator.handlers`) against an in-memory Kubernetes API (kmock):
create -> ConfigMap and RayJob owned by the job; KubeRay's status transitions -> the job's conditions and
phase, a retried attempt counted in status.restarts; an invalid spec -> Failed/InvalidSpec and no RayJob; a spec change -> rejected, suspend -> applied;
a restarted operator creates nothing twice; the metrics endpoint counts jobs by phase."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner

from .kmock_cluster import CONFIGMAPS, RAYJOBS, RLHFJOBS, KmockCluster, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "team-a"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    with KmockCluster([NAMESPACE]) as running:
        config = running.kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(config))
        # kubernetes.config resolves $KUBECONFIG at import: point its default (kopf's login uses it) here
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBERLHF_RUNTIME_IMAGE", "runtime:test")
        kubernetes.config.load_kube_config(config_file=str(config))
        yield running


def operator(monkeypatch, metrics_port: int = 0) -> KopfRunner:
    monkeypatch.setenv("KUBERLHF_METRICS_PORT", str(metrics_port))
    return KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "kuberlhf_operator.handlers"], timeout=30)


def submit(name: str, example: str = "ppo-tiny", labels: dict[str, str] | None = None, **spec: Any) -> None:
    job = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": NAMESPACE, "labels": labels or {}}
    job["spec"]["output"] = {**job["spec"].get("output", {}), "uri": f"s3://{NAMESPACE}/{name}"}
    job["spec"].update(spec)
    kubernetes.client.CustomObjectsApi().create_namespaced_custom_object("kuberlhf.io", "v1alpha1", NAMESPACE,
                                                                         "rlhfjobs", job)


def job_status(cluster: KmockCluster, name: str) -> dict[str, Any]:
    return (cluster.stored(RLHFJOBS, NAMESPACE, name) or {}).get("status") or {}


def condition(cluster: KmockCluster, name: str, kind: str) -> tuple[str, str] | None:
    found = [c for c in job_status(cluster, name).get("conditions", []) if c["type"] == kind]
    return (found[0]["status"], found[0]["reason"]) if found else None


def kuberay_reports(name: str, **status: Any) -> None:
    kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
        "ray.io", "v1", NAMESPACE, "rayjobs", name, {"status": status})


def test_the_operator_runs_jobs_as_rayjobs_and_follows_them(cluster, monkeypatch):
    port = free_port()
    with operator(monkeypatch, metrics_port=port) as runner:
        submit("ppo-tiny")
        rayjob = wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "ppo-tiny"), "the RayJob")
        configmap = wait_for(lambda: cluster.stored(CONFIGMAPS, NAMESPACE, "ppo-tiny-job"), "the ConfigMap")
        wait_for(lambda: job_status(cluster, "ppo-tiny").get("phase") == "Starting", "phase Starting")
        uid = cluster.stored(RLHFJOBS, NAMESPACE, "ppo-tiny")["metadata"]["uid"]
        for child in (rayjob, configmap):
            (owner,) = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"], owner["controller"]) == ("RLHFJob", uid, True)
        assert rayjob["spec"]["entrypoint"] == "kuberlhf run /etc/kuberlhf/job.yaml"
        assert yaml.safe_load(configmap["data"]["job.yaml"])["spec"]["algorithm"] == "ppo"
        assert condition(cluster, "ppo-tiny", "Accepted") == ("True", "Submitted")

        kuberay_reports("ppo-tiny", jobDeploymentStatus="Running", jobStatus="RUNNING",
                        dashboardURL="ppo-tiny-head-svc.team-a.svc:8265")
        wait_for(lambda: job_status(cluster, "ppo-tiny").get("phase") == "Running", "phase Running")
        assert condition(cluster, "ppo-tiny", "ClusterReady") == ("True", "RayClusterReady")
        assert job_status(cluster, "ppo-tiny")["dashboardURL"] == "ppo-tiny-head-svc.team-a.svc:8265"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'kuberlhf_operator_jobs{phase="Running"} 1.0' in metrics

        submit("broken", training={"steps": 0})
        wait_for(lambda: job_status(cluster, "broken").get("phase") == "Failed", "the invalid job to fail")
        assert condition(cluster, "broken", "Failed") == ("True", "InvalidSpec")
        message = next(c["message"] for c in job_status(cluster, "broken")["conditions"] if c["type"] == "Failed")
        assert "spec.training.steps: must be >= 1, got 0" in message
    assert runner.exception is None, runner.output
    assert cluster.stored(RAYJOBS, NAMESPACE, "broken") is None
    assert cluster.stored(CONFIGMAPS, NAMESPACE, "broken-job") is None
    assert cluster.requests(kmock.action.CREATE, RAYJOBS) == 1

    with operator(monkeypatch) as runner:  # a restarted operator resumes every job and creates nothing new
        # (runner.output blocks until the operator stops: progress is read from the cluster only)
        custom = kubernetes.client.CustomObjectsApi()
        custom.patch_namespaced_custom_object("kuberlhf.io", "v1alpha1", NAMESPACE, "rlhfjobs", "ppo-tiny",
                                              {"spec": {"training": {"steps": 80}}})
        wait_for(lambda: condition(cluster, "ppo-tiny", "Accepted") == ("True", "SpecChangeRejected"),
                 "the spec change to be rejected")
        custom.patch_namespaced_custom_object("kuberlhf.io", "v1alpha1", NAMESPACE, "rlhfjobs", "ppo-tiny",
                                              {"spec": {"training": {"steps": 40}, "suspend": True}})
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "ppo-tiny")["spec"]["suspend"] is True,
                 "the RayJob to be suspended")
        kuberay_reports("ppo-tiny", jobDeploymentStatus="Suspended", jobStatus="")
        wait_for(lambda: job_status(cluster, "ppo-tiny").get("phase") == "Suspended", "phase Suspended")
        custom.patch_namespaced_custom_object("kuberlhf.io", "v1alpha1", NAMESPACE, "rlhfjobs", "ppo-tiny",
                                              {"spec": {"suspend": False}})
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "ppo-tiny")["spec"]["suspend"] is False, "resume")
        kuberay_reports("ppo-tiny", jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1)
        wait_for(lambda: job_status(cluster, "ppo-tiny").get("restarts") == 1, "the retry to be counted")
        assert condition(cluster, "ppo-tiny", "Running") == ("False", "RayJobRetrying")
        assert condition(cluster, "ppo-tiny", "Failed") == ("False", "NotFailed")
        kuberay_reports("ppo-tiny", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                        endTime="2026-11-24T13:00:00Z")
        wait_for(lambda: job_status(cluster, "ppo-tiny").get("phase") == "Succeeded", "phase Succeeded")
        assert job_status(cluster, "ppo-tiny")["completionTime"] == "2026-11-24T13:00:00Z"
    assert runner.exception is None, runner.output
    assert cluster.requests(kmock.action.CREATE, RAYJOBS) == 1  # never a second RayJob
    items = kubernetes.client.CustomObjectsApi().list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs")
    assert [item["metadata"]["name"] for item in items["items"]] == ["ppo-tiny"]

    kubernetes.client.CustomObjectsApi().delete_namespaced_custom_object("kuberlhf.io", "v1alpha1", NAMESPACE,
                                                                         "rlhfjobs", "ppo-tiny")
    assert cluster.stored(RLHFJOBS, NAMESPACE, "ppo-tiny") is None  # no finalizer holds the deletion


def test_a_running_job_writes_its_progress_into_its_status(cluster, monkeypatch):
    from kuberlhf.telemetry.job_status import status_reporter

    submit("chain-tiny", example="chain-tiny")
    monkeypatch.setenv("KUBERLHF_RLHFJOB", f"{NAMESPACE}/chain-tiny")  # what the operator's RayJob sets
    reporter = status_reporter(total_steps=40, first_step=1, labels={"kuberlhf.io/stage": "ppo"})
    assert reporter is not None
    for step in range(1, 41):
        reporter.report(step, {"reward/mean": 0.5 + step / 100, "kl/sequence": 0.01})
    progress = job_status(cluster, "chain-tiny")["progress"]
    assert (progress["steps"], progress["stage"], progress["percent"], progress["reward"]) == ("40/40", "ppo", 100.0, 0.9)
    assert not reporter.failed
    assert cluster.stored(RLHFJOBS, NAMESPACE, "chain-tiny")["spec"]["stages"][0]["name"] == "sft"  # spec untouched
