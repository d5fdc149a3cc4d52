"""The operator's lifecycle decisions as pure functions: finished jobs stay finished, Kueue owns a queued RayJob's
`suspend`, children are repaired and replaced together, refused children become conditions, and what a job may
ask for (image, service account, name) and what its pods may reach and do (NetworkPolicy, own-status Role,
Ray token auth)."""

from __future__ import annotations

import copy
from typing import Any

from kuberlhf_operator.rayjob import SPEC_HASH, OperatorSettings, build_children, build_configmap
from kuberlhf_operator.reconcile import MAX_MESSAGE, child_error, reconcile

from .test_operator import SETTINGS, T0, T1, conditions, k8s_job, run, spec_of, submitted


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objects]


def test_a_finished_job_never_gets_new_children_even_when_its_rayjob_is_gone():
    job = k8s_job()
    done = run(job, submitted(job, "Complete", "SUCCEEDED"), build_configmap(job), T0)
    assert done.status["phase"] == "Succeeded"
    finished = {**job, "status": done.status}
    for _ in range(2):  # the RayJob deleted (by hand, by a TTL), then an operator restart: same answer
        after = reconcile(finished, {}, SETTINGS, T1)
        assert after.create == [] and after.replace == [] and after.patch_rayjob is None
        assert after.status == done.status
    failed = run(job, submitted(job, "Failed", "FAILED", reason="AppFailed"), build_configmap(job), T0)
    assert failed.status["phase"] == "Failed"
    assert reconcile({**job, "status": failed.status}, {}, SETTINGS, T1).create == []
    assert kinds(reconcile(job, {}, SETTINGS, T1).create)[-1] == "RayJob"  # what a job still running would get


def queued_job(**spec: Any) -> dict[str, Any]:
    job = k8s_job(**spec)
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    return job


def test_with_a_queue_the_rayjob_starts_suspended_and_kueue_owns_suspend():
    job = queued_job()
    created = run(job, None, None, T0)
    rayjob = next(c for c in created.create if c["kind"] == "RayJob")
    assert rayjob["spec"]["suspend"] is True  # Kueue admits it by unsuspending
    assert rayjob["metadata"]["annotations"]["kuberlhf.io/suspend-requested"] == "false"
    # waiting for admission: no patch (the operator must not unsuspend it), phase Queued
    waiting = run(job, {**rayjob, "status": {"jobDeploymentStatus": "Suspended"}}, build_configmap(job), T1)
    assert waiting.patch_rayjob is None and waiting.status["phase"] == "Queued"
    assert conditions(waiting)["Suspended"] == ("True", "Queued")
    admitted = copy.deepcopy(rayjob)
    admitted["spec"]["suspend"] = False
    admitted["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    assert run(job, admitted, build_configmap(job), T1).status["phase"] == "Running"
    preempted = copy.deepcopy(admitted)  # Kueue suspends it again (preemption): still not the operator's call
    preempted["spec"]["suspend"] = True
    preempted["status"] = {"jobDeploymentStatus": "Suspended"}
    assert run(job, preempted, build_configmap(job), T1).patch_rayjob is None
    # the user's own suspend is forwarded, once
    job["spec"]["suspend"] = True
    patch = run(job, admitted, build_configmap(job), T1).patch_rayjob
    assert patch == {"metadata": {"annotations": {"kuberlhf.io/suspend-requested": "true"}}, "spec": {"suspend": True}}
    admitted["metadata"]["annotations"].update(patch["metadata"]["annotations"])
    assert run(job, {**admitted, "spec": {**admitted["spec"], "suspend": True}}, build_configmap(job),
               T1).patch_rayjob is None


def test_a_configmap_deleted_by_hand_is_made_again_and_a_stale_one_replaced_before_a_new_rayjob():
    job = k8s_job()
    running = submitted(job, "Running", "RUNNING")
    repaired = run(job, running, None, T1)
    assert kinds(repaired.create) == ["ConfigMap"] and repaired.create[0] == build_configmap(job)
    lost = reconcile(job, {"RayJob": running}, SETTINGS, T1)  # every other child lost too
    assert kinds(lost.create) == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"]
    # the RayJob deleted by hand, then the spec edited: the new RayJob and a ConfigMap of the new spec, together
    old_configmap = build_configmap(job)
    job["spec"]["training"]["steps"] = 7
    others = {c["kind"]: c for c in build_children(k8s_job(), spec_of(k8s_job()), SETTINGS)}
    actions = reconcile(job, {**others, "RayJob": None, "ConfigMap": old_configmap}, SETTINGS, T1)
    assert kinds(actions.create) == ["RayJob"] and kinds(actions.replace) == ["ConfigMap"]
    assert "steps: 7" in actions.replace[0]["data"]["job.yaml"]
    assert actions.replace[0]["metadata"]["annotations"][SPEC_HASH] == \
        actions.create[0]["metadata"]["annotations"][SPEC_HASH]


def test_a_child_the_api_refuses_becomes_a_condition_and_only_an_invalid_one_fails_the_job():
    quota = ("exceeded quota: compute, requested: requests.nvidia.com/gpu=8, used: 0, limited: 4" + " x" * 900)
    status, permanent = child_error({}, 1, "RayJob", "ppo-tiny", 403, "Forbidden", quota, T0)
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "RayJobForbidden") and not permanent
    assert accepted["message"].startswith("creating RayJob ppo-tiny: exceeded quota") and \
        len(accepted["message"]) <= MAX_MESSAGE
    assert status["phase"] == "Pending"
    status, permanent = child_error({}, 1, "RayJob", "ppo-tiny", 404, "NotFound", "the server could not find "
                                    "the requested resource", T0)
    assert "KubeRay installed?" in status["conditions"][0]["message"] and not permanent
    status, permanent = child_error({}, 1, "RayJob", "ppo-tiny", 422, "Invalid", "admission webhook denied it", T0)
    assert permanent and status["phase"] == "Failed"


def test_a_failed_rayjobs_driver_log_stays_out_of_the_status():
    job = k8s_job()
    log = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    rayjob = submitted(job, "Failed", "FAILED", reason="AppFailed", message=log + "Traceback...\n" * 2000)
    failed = next(c for c in run(job, rayjob, build_configmap(job), T1).status["conditions"] if c["type"] == "Failed")
    assert failed["message"] == "Job entrypoint command failed with exit code 1"


def test_names_images_and_accounts_outside_the_charts_policy_are_refused():
    long_name = k8s_job()
    long_name["metadata"]["name"] = "a" * 48
    refused = run(long_name, None, None, T0)
    assert refused.create == [] and conditions(refused)["Failed"] == ("True", "InvalidName")
    strict = OperatorSettings(runtime_image="registry.corp/kuberlhf/runtime:1", allowed_images=("registry.corp/",),
                              allowed_service_accounts=("trainer",))
    assert kinds(run(k8s_job(), None, None, T0, strict).create)[-1] == "RayJob"
    image = run(k8s_job(cluster={"image": "docker.io/evil/miner"}), None, None, T0, strict)
    assert conditions(image)["Failed"] == ("True", "ImageNotAllowed") and image.create == []
    account = run(k8s_job(cluster={"serviceAccountName": "cluster-admin-sa"}), None, None, T0, strict)
    assert conditions(account)["Failed"] == ("True", "ServiceAccountNotAllowed")
    mine = run(k8s_job(cluster={"serviceAccountName": "trainer"}), None, None, T0, strict)
    assert "ServiceAccount" not in kinds(mine.create)  # the user's own account is used, not made
    binding = next(c for c in mine.create if c["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trainer", "namespace": "team-a"}]


def test_each_job_may_write_only_its_own_status_and_its_ray_pods_admit_only_its_peers():
    job = k8s_job(metrics={"port": 9555})
    children = {c["kind"]: c for c in build_children(job, spec_of(job), OperatorSettings(
        runtime_image="img", monitoring_namespaces={"kubernetes.io/metadata.name": "monitoring"}))}
    role = children["Role"]
    assert all(rule["resourceNames"] == ["ppo-tiny"] for rule in role["rules"])
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "patch"}
    assert children["RoleBinding"]["subjects"][0]["name"] == "ppo-tiny-job"
    policy = children["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"kuberlhf.io/job": "ppo-tiny"}}
    assert policy["policyTypes"] == ["Ingress"]
    peers, kuberay, monitoring = policy["ingress"]
    assert peers["from"] == [{"podSelector": {"matchLabels": {"kuberlhf.io/job": "ppo-tiny"}}},
                             {"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob",
                                                              "ray.io/originated-from-cr-name": "ppo-tiny"}}}]
    assert kuberay["ports"] == [{"protocol": "TCP", "port": 8265}]
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert [p["port"] for p in monitoring["ports"]] == [8080, 9555]
    cluster = children["RayJob"]["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay makes the token Secret and hands it to every pod
    off = OperatorSettings(runtime_image="img", ray_auth=False, network_policy=False)
    plain = {c["kind"]: c for c in build_children(job, spec_of(job), off)}
    assert "NetworkPolicy" not in plain and "authOptions" not in plain["RayJob"]["spec"]["rayClusterSpec"]
