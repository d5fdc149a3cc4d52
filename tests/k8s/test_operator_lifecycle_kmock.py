"""The real operator against kmock in the situations a shared cluster brings: a finished job whose RayJob is
deleted (and an operator restart) gets no new RayJob; Kueue suspending and admitting a queued RayJob is not
fought; the API refusing a child (a quota's 403, a webhook's 422) reaches the job's status; a ConfigMap deleted
by hand is made again; every child (account, Role, NetworkPolicy) is made with the RayJob."""

from __future__ import annotations

import time

import kmock
import kubernetes
import pytest

from .kmock_cluster import (CONFIGMAPS, NETWORKPOLICIES, RAYJOBS, ROLEBINDINGS, ROLES, SERVICEACCOUNTS, KmockCluster,
                            wait_for)
from .test_operator_kmock import NAMESPACE, cluster, condition, job_status, kuberay_reports, operator, submit

pytestmark = pytest.mark.slow
__all__ = ["cluster"]  # the fixture, imported for this module's tests


def rayjob_creates(cluster: KmockCluster, name: str) -> int:
    return cluster.created_names(RAYJOBS).count(name)


def patch_rayjob(name: str, body: dict) -> None:
    kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs", name,
                                                                        body)


def test_finished_jobs_stay_finished_and_lost_children_of_running_ones_are_made_again(cluster, monkeypatch):
    with operator(monkeypatch) as runner:
        submit("done")
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "done"), "the RayJob")
        for resource, name in ((SERVICEACCOUNTS, "done-job"), (ROLES, "done-status"), (ROLEBINDINGS, "done-status"),
                               (NETWORKPOLICIES, "done"), (CONFIGMAPS, "done-job")):
            assert cluster.stored(resource, NAMESPACE, name) is not None, name
        kuberay_reports("done", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        wait_for(lambda: job_status(cluster, "done").get("phase") == "Succeeded", "phase Succeeded")
        kubernetes.client.CustomObjectsApi().delete_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs",
                                                                             "done")  # KubeRay's TTL
        submit("running")
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "running"), "the second job's RayJob")
        kubernetes.client.CoreV1Api().delete_namespaced_config_map("running-job", NAMESPACE)
        wait_for(lambda: cluster.stored(CONFIGMAPS, NAMESPACE, "running-job"), "the ConfigMap to be made again")
    assert runner.exception is None, runner.output
    with operator(monkeypatch) as runner:  # a restart resumes both jobs
        submit("probe")
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "probe"), "a job submitted after the restart")
        time.sleep(1)
    assert runner.exception is None, runner.output
    assert cluster.stored(RAYJOBS, NAMESPACE, "done") is None and rayjob_creates(cluster, "done") == 1
    assert job_status(cluster, "done")["phase"] == "Succeeded"
    assert rayjob_creates(cluster, "running") == 1


def test_kueue_owns_a_queued_rayjobs_suspend(cluster, monkeypatch):
    with operator(monkeypatch) as runner:
        submit("queued", labels={"kueue.x-k8s.io/queue-name": "research"})
        rayjob = wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "queued"), "the RayJob")
        assert rayjob["spec"]["suspend"] is True and rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == \
            "research"
        kuberay_reports("queued", jobDeploymentStatus="Suspended")
        wait_for(lambda: job_status(cluster, "queued").get("phase") == "Queued", "phase Queued")
        patch_rayjob("queued", {"spec": {"suspend": False}})  # Kueue admits it
        kuberay_reports("queued", jobDeploymentStatus="Running", jobStatus="RUNNING")
        wait_for(lambda: job_status(cluster, "queued").get("phase") == "Running", "phase Running")
        patch_rayjob("queued", {"spec": {"suspend": True}})  # Kueue preempts it
        kuberay_reports("queued", jobDeploymentStatus="Suspended", jobStatus="")
        wait_for(lambda: job_status(cluster, "queued").get("phase") == "Queued", "phase Queued again")
        time.sleep(0.5)
        assert cluster.stored(RAYJOBS, NAMESPACE, "queued")["spec"]["suspend"] is True  # not unsuspended
        assert condition(cluster, "queued", "Suspended") == ("True", "Queued")
    assert runner.exception is None, runner.output


def test_a_refused_child_reaches_the_status_and_is_retried_until_the_api_accepts_it(cluster, monkeypatch):
    quota = "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=8, used: 4, limited: 8"
    cluster.refuse(kmock.action.CREATE, RAYJOBS, 403, "Forbidden", quota)
    cluster.refuse(kmock.action.CREATE, NETWORKPOLICIES, 422, "Invalid", "denied by policy-webhook: no")
    with operator(monkeypatch) as runner:
        submit("rejected")
        wait_for(lambda: job_status(cluster, "rejected").get("phase") == "Failed", "the invalid child to fail it")
        assert condition(cluster, "rejected", "Failed") == ("True", "NetworkPolicyInvalid")
        cluster.allow(kmock.action.CREATE, NETWORKPOLICIES)
        submit("over-quota")
        wait_for(lambda: condition(cluster, "over-quota", "Accepted") == ("False", "RayJobForbidden"),
                 "the quota error in the status")
        message = next(c["message"] for c in job_status(cluster, "over-quota")["conditions"] if c["type"] == "Accepted")
        assert message.startswith(f"creating RayJob over-quota: {quota}")
        assert job_status(cluster, "over-quota")["phase"] == "Pending"
        cluster.allow(kmock.action.CREATE, RAYJOBS)  # the quota freed: the next retry (10 s) goes through
        wait_for(lambda: cluster.stored(RAYJOBS, NAMESPACE, "over-quota"), "the retried RayJob", timeout=30)
        wait_for(lambda: condition(cluster, "over-quota", "Accepted") == ("True", "Submitted"), "Submitted")
    assert cluster.stored(RAYJOBS, NAMESPACE, "rejected") is None
    assert runner.exception is None, runner.output
