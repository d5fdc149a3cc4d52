"""The operator's pure parts: the RayJob and ConfigMap built from an RLHFJob, and reconcile's decisions and
status for every RayJob state KubeRay reports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberlhf_operator.rayjob import OperatorSettings, build_children, build_configmap, build_rayjob, cluster_size
from kuberlhf_operator.reconcile import phase_of, reconcile, status_patch
from kuberlhf.spec import RLHFJobSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(runtime_image="ghcr.io/kuberlhf/runtime:0.1.0")
T0, T1 = "2026-11-24T12:00:00Z", "2026-11-24T12:05:00Z"


def k8s_job(example: str = "ppo-tiny", **spec_changes: Any) -> dict[str, Any]:
    """An example as the API server holds it (uid, generation, namespace)."""
    job = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    job["metadata"].update(uid="1234-abcd", generation=1, namespace="team-a")
    job["spec"]["output"] = {**job["spec"].get("output", {}), "uri": f"s3://team-a/{job['metadata']['name']}"}
    job["spec"].update(spec_changes)
    return job


def spec_of(job: dict[str, Any]) -> RLHFJobSpec:
    return RLHFJobSpec.model_validate(job["spec"])


def test_the_rayjob_runs_kuberlhf_on_the_mounted_job_file_and_is_owned_by_the_job():
    job = k8s_job()
    rayjob = build_rayjob(job, spec_of(job), SETTINGS)
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["metadata"]["name"] == "ppo-tiny"
    assert rayjob["metadata"]["namespace"] == "team-a"
    assert rayjob["metadata"]["ownerReferences"] == [{"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob",
                                                      "name": "ppo-tiny", "uid": "1234-abcd", "controller": True,
                                                      "blockOwnerDeletion": True}]
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "kuberlhf run /etc/kuberlhf/job.yaml"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
    assert spec["backoffLimit"] == 0 and spec["suspend"] is False
    assert spec["metadata"] == {"rlhfjob": "ppo-tiny", "namespace": "team-a"}  # on the Ray dashboard's Jobs page
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, not the roles
    pod = head["template"]["spec"]
    assert {"name": "job", "configMap": {"name": "ppo-tiny-job"}} in pod["volumes"]
    assert pod["containers"][0]["image"] == SETTINGS.runtime_image
    assert pod["serviceAccountName"] == "ppo-tiny-job"  # the job's own account (access.py)
    assert "ppo-tiny-job" == build_configmap(job)["metadata"]["name"]


def test_the_configmap_holds_the_job_as_written():
    job = k8s_job()
    document = yaml.safe_load(build_configmap(job)["data"]["job.yaml"])
    assert document["spec"] == job["spec"] and document["metadata"]["name"] == "ppo-tiny"
    from kuberlhf.jobfile import validate_job

    assert validate_job(document).spec.algorithm == "ppo"  # what `kuberlhf run` in the head pod reads


def test_a_cpu_job_gets_one_worker_pod_with_every_bundles_cpus():
    job = k8s_job()
    group = build_rayjob(job, spec_of(job), SETTINGS)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "1" and "nvidia.com/gpu" not in limits  # colocated roles share one 1-CPU bundle


def gpu_job(placement: str, workers: int, **cluster: Any) -> dict[str, Any]:
    role = {"workers": workers, "gpus": 1, "cpus": 4}
    return k8s_job(resources={"placement": placement, "policy": role, "rollout": role, "critic": role},
                   cluster=cluster)


@pytest.mark.parametrize("placement, workers, cluster, replicas, gpus", [
    ("colocate", 4, {}, 1, 4),                      # ranks share bundles: 4 GPUs in all
    ("separate", 4, {}, 2, 8),                      # policy, rollout and critic 4 each: 12 GPUs in 8-GPU pods
    ("colocate", 4, {"gpusPerWorker": 2}, 2, 2),    # the user's pod size
])
def test_gpu_jobs_get_worker_pods_that_hold_every_bundle(placement, workers, cluster, replicas, gpus):
    job = gpu_job(placement, workers, **cluster)
    group = build_rayjob(job, spec_of(job), SETTINGS)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (group["replicas"], int(limits["nvidia.com/gpu"])) == (replicas, gpus)
    assert group["replicas"] * gpus >= cluster_size(spec_of(job), "x").gpus
    assert limits["memory"] == f"{64 * gpus}Gi" and int(limits["cpu"]) == 8 * gpus


def test_a_chained_job_is_sized_for_its_largest_stage():
    job = k8s_job("chain-tiny")
    job["spec"]["stages"][2]["resources"] = {"policy": {"workers": 2, "gpus": 1}, "rollout": {"workers": 2, "gpus": 1}}
    assert cluster_size(spec_of(job), "chain-tiny").gpus == 2


def test_kueue_queue_label_suspend_pvc_and_deadline_pass_through():
    job = k8s_job(suspend=True, cluster={"persistentVolumeClaim": "rlhf-data", "activeDeadlineSeconds": 3600,
                                         "nodeSelector": {"gpu": "h100"},
                                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    rayjob = build_rayjob(job, spec_of(job), SETTINGS)
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert rayjob["spec"]["suspend"] is True and rayjob["spec"]["activeDeadlineSeconds"] == 3600
    assert rayjob["spec"]["entrypoint"].startswith("cd /data && ")
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["volumes"][-1] == {"name": "data", "persistentVolumeClaim": {"claimName": "rlhf-data"}}
    assert worker["nodeSelector"] == {"gpu": "h100"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


# ------------------------------------------------------------------------------------------- reconcile


def submitted(job: dict[str, Any], deployment: str = "", ray_status: str = "", **status: Any) -> dict[str, Any]:
    rayjob = build_rayjob(job, spec_of(job), SETTINGS)
    rayjob["status"] = {"jobDeploymentStatus": deployment, "jobStatus": ray_status, **status}
    return rayjob


def run(job: dict[str, Any], rayjob: dict[str, Any] | None, configmap: dict[str, Any] | None, now: str,
        settings: OperatorSettings = SETTINGS):
    """reconcile, with the given RayJob and ConfigMap in the cluster, and the job's other children as made
    when a RayJob is there."""
    others = {c["kind"]: c for c in build_children(job, spec_of(job), settings)} if rayjob is not None else {}
    return reconcile(job, {**others, "RayJob": rayjob, "ConfigMap": configmap}, settings, now)


def conditions(actions) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in actions.status["conditions"]}


def test_a_new_job_creates_its_configmap_and_rayjob_once():
    job = k8s_job()
    actions = run(job, None, None, T0)
    assert [o["kind"] for o in actions.create] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                                                   "NetworkPolicy", "RayJob"]
    assert actions.status["phase"] == "Starting" and conditions(actions)["Accepted"] == ("True", "Submitted")
    replay = run({**job, "status": actions.status}, submitted(job), build_configmap(job), T1)
    assert replay.create == [] and replay.patch_rayjob is None  # a replayed event or a restart: nothing new


def test_a_job_whose_outputs_would_die_with_its_cluster_is_refused_unless_it_opts_in():
    job = k8s_job(output={"dir": "runs/ppo-tiny"})
    actions = run(job, None, None, T0)
    assert actions.create == [] and actions.status["phase"] == "Failed"
    assert conditions(actions)["Accepted"] == ("False", "NoPersistentStorage")
    assert conditions(actions)["OutputsPersistent"] == ("False", "NoPersistentStorage")
    failed = next(c for c in actions.status["conditions"] if c["type"] == "Failed")
    assert failed["message"].startswith("spec.output: the checkpoints and the final model would be lost")
    ephemeral = run(k8s_job(output={"dir": "runs/x", "ephemeral": True}), None, None, T0)
    assert [o["kind"] for o in ephemeral.create][-1] == "RayJob"
    assert conditions(ephemeral)["OutputsPersistent"] == ("False", "Ephemeral")
    volume = run(k8s_job(output={"dir": "runs/x"}, cluster={"persistentVolumeClaim": "rlhf-data"}), None, None,
                       T0)
    assert conditions(volume)["OutputsPersistent"] == ("True", "PersistentVolume") and len(volume.create) == 6
    stored = run(k8s_job(), None, None, T0)
    assert conditions(stored)["OutputsPersistent"] == ("True", "ObjectStore")
    environment = yaml.safe_load(stored.create[-1]["spec"]["runtimeEnvYAML"])["env_vars"]
    assert environment["KUBERLHF_OWNER"] == "1234-abcd"  # a KubeRay retry takes over its own lease at once


def test_an_invalid_spec_fails_the_job_and_never_reaches_ray():
    job = k8s_job()
    job["spec"]["training"]["steps"] = 0
    actions = run(job, None, None, T0)
    assert actions.create == []
    assert conditions(actions)["Failed"] == ("True", "InvalidSpec")
    failed = next(c for c in actions.status["conditions"] if c["type"] == "Failed")
    assert "spec.training.steps: must be >= 1, got 0" in failed["message"]
    assert actions.status["phase"] == "Failed" and actions.status["completionTime"] == T0


@pytest.mark.parametrize("deployment, ray_status, reason, phase, failed", [
    ("Initializing", "", "", "Starting", None),
    ("Running", "PENDING", "", "Starting", None),
    ("Running", "RUNNING", "", "Running", None),
    ("Complete", "SUCCEEDED", "", "Succeeded", None),
    ("Failed", "FAILED", "AppFailed", "Failed", "AppFailed"),
    ("Failed", "", "DeadlineExceeded", "Failed", "DeadlineExceeded"),
    ("Failed", "", "SubmissionFailed", "Failed", "SubmissionFailed"),
    ("Complete", "FAILED", "", "Failed", "AppFailed"),
    ("Suspended", "", "", "Suspended", None),
])
def test_the_status_follows_the_rayjob(deployment, ray_status, reason, phase, failed):
    job = k8s_job()
    rayjob = submitted(job, deployment, ray_status, reason=reason, message="details",
                       dashboardURL="ppo-tiny-head-svc.team-a.svc:8265", startTime=T0, endTime=T1,
                       jobId="ppo-tiny-x7k2p")
    actions = run(job, rayjob, build_configmap(job), T1)
    assert actions.status["phase"] == phase
    assert conditions(actions)["Failed"] == (("True", failed) if failed else ("False", "NotFailed"))
    assert actions.status["rayJobName"] == "ppo-tiny" and actions.status["observedGeneration"] == 1
    assert actions.status["dashboardURL"] == "ppo-tiny-head-svc.team-a.svc:8265"
    assert actions.status["raySubmissionId"] == "ppo-tiny-x7k2p"
    assert ("completionTime" in actions.status) == (phase in ("Succeeded", "Failed"))


def test_a_failed_attempt_that_kuberay_retries_is_a_restart_not_a_failure():
    job = k8s_job(cluster={"backoffLimit": 2})
    cm = build_configmap(job)
    # KubeRay after attempt 1 failed: Failed -> Retrying in one status write, the Ray job's FAILED lingers
    retrying = run(job, submitted(job, "Retrying", "FAILED", failed=1, message="worker OOM", endTime=T0),
                         cm, T0)
    assert retrying.status["phase"] == "Starting" and retrying.status["restarts"] == 1
    assert conditions(retrying)["Failed"] == ("False", "NotFailed")
    assert conditions(retrying)["Running"] == ("False", "RayJobRetrying")
    assert "completionTime" not in retrying.status
    job["status"] = retrying.status
    again = run(job, submitted(job, "Running", "RUNNING", failed=1), cm, T1)
    assert again.status["phase"] == "Running" and again.status["restarts"] == 1
    job["status"] = again.status
    done = run(job, submitted(job, "Complete", "SUCCEEDED", failed=1, succeeded=1), cm, T1)
    assert done.status["phase"] == "Succeeded" and done.status["restarts"] == 1
    # the last attempt allowed fails: Failed, and the final failure is not a restart
    final = run(job, submitted(job, "Failed", "FAILED", failed=3, reason="AppFailed"), cm, T1)
    assert final.status["phase"] == "Failed" and final.status["restarts"] == 2


def test_the_status_patch_sends_what_changed_and_nulls_what_went():
    old = {"phase": "Failed", "completionTime": T0, "progress": {"step": 5}, "restarts": 0}
    new = {"phase": "Starting", "progress": {"step": 5}, "restarts": 1}
    # progress is the job's own: not sent, so a newer value it wrote meanwhile survives
    assert status_patch(old, new) == {"completionTime": None, "phase": "Starting", "restarts": 1}
    assert status_patch(None, new) == new


def test_a_spec_change_after_submission_is_rejected_but_suspend_applies():
    job = k8s_job()
    rayjob = submitted(job, "Running", "RUNNING")
    changed = copy.deepcopy(job)
    changed["metadata"]["generation"] = 2
    changed["spec"]["training"]["steps"] = 80
    actions = run(changed, rayjob, build_configmap(job), T1)
    assert conditions(actions)["Accepted"] == ("True", "SpecChangeRejected") and actions.patch_rayjob is None
    assert actions.status["phase"] == "Running"  # runs on as submitted
    suspended = copy.deepcopy(job)
    suspended["spec"]["suspend"] = True
    actions = run(suspended, rayjob, build_configmap(job), T1)
    assert actions.patch_rayjob == {"metadata": {"annotations": {"kuberlhf.io/suspend-requested": "true"}},
                                    "spec": {"suspend": True}}
    assert conditions(actions)["Accepted"] == ("True", "Submitted")


def test_transition_times_move_only_when_a_condition_changes():
    job = k8s_job()
    first = run(job, submitted(job, "Running", "RUNNING"), build_configmap(job), T0)
    later = run({**job, "status": first.status}, submitted(job, "Running", "RUNNING"), build_configmap(job),
                      T1)
    assert [c["lastTransitionTime"] for c in later.status["conditions"]] == [T0] * 7
    done = run({**job, "status": later.status}, submitted(job, "Complete", "SUCCEEDED"), build_configmap(job),
                     T1)
    times = {c["type"]: c["lastTransitionTime"] for c in done.status["conditions"]}
    assert times["Succeeded"] == T1 and times["Running"] == T1 and times["Accepted"] == T0


def test_a_rayjob_of_the_same_name_that_is_not_ours_is_left_alone():
    job = k8s_job()
    stranger = submitted(job, "Running", "RUNNING")
    stranger["metadata"]["ownerReferences"] = []
    actions = run(job, stranger, None, T0)
    assert actions.create == [] and actions.patch_rayjob is None
    assert conditions(actions)["Failed"] == ("True", "RayJobNameTaken")


def test_phase_is_derived_from_conditions():
    assert phase_of([]) == "Pending"
    assert phase_of([{"type": "Failed", "status": "True"}, {"type": "Running", "status": "True"}]) == "Failed"


def test_the_monitor_signals_the_job_writes_become_the_reward_hacking_condition():
    job = k8s_job()
    rayjob = submitted(job, "Running", "RUNNING")
    quiet = run(job, rayjob, build_configmap(job), T1)
    assert "RewardHackingSuspected" not in conditions(quiet)  # the job has reported no verdict yet
    evidence = "reward correlates with response length (mean r=0.93) and responses grew from 3.1 to 7.9 tokens"
    job["status"] = {"monitor": {"step": 12, "signals": [{"signal": "length", "step": 12, "evidence": evidence}]}}
    actions = run(job, rayjob, build_configmap(job), T1)
    assert conditions(actions)["RewardHackingSuspected"] == ("True", "Length")
    condition = next(c for c in actions.status["conditions"] if c["type"] == "RewardHackingSuspected")
    assert evidence in condition["message"] and actions.status["phase"] == "Running"
    job["status"] = {**actions.status, "monitor": {"step": 13, "signals": []}}
    cleared = run(job, rayjob, build_configmap(job), T1)
    assert conditions(cleared)["RewardHackingSuspected"] == ("False", "NoSignal")


def test_the_head_declares_the_jobs_metrics_port_for_the_pod_monitor():
    job = k8s_job(metrics={"port": 9555})
    head = build_rayjob(job, spec_of(job), SETTINGS)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert {"containerPort": 9555, "name": "kuberlhf"} in head["spec"]["containers"][0]["ports"]
    job = k8s_job(metrics={"enabled": False})
    head = build_rayjob(job, spec_of(job), SETTINGS)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert all(p["name"] != "kuberlhf" for p in head["spec"]["containers"][0]["ports"])


def test_ray_pods_run_as_non_root_without_privilege_escalation_and_get_secrets_by_reference():
    job = k8s_job(cluster={"secretEnv": [{"name": "HF_TOKEN", "secretName": "hub", "key": "token"}]})
    rayjob = build_rayjob(job, spec_of(job), SETTINGS)
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        (container,) = pod["containers"]
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        # a read-only root, with Ray's session dir, its memory-backed object store and the job's home writable
        writable = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {"/tmp", "/dev/shm", "/home/ray"} <= set(writable)
        assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
        assert container["env"] == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}]
    with pytest.raises(ValueError, match="secretEnv.0.name"):
        spec_of(k8s_job(cluster={"secretEnv": [{"name": "HF TOKEN=x", "secretName": "hub", "key": "token"}]}))
