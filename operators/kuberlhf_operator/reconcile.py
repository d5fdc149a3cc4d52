"""Reconcile, as pure functions: an RLHFJob and the children observed in the cluster in, the actions to take
and the job's new status out. kopf handlers (handlers.py) only read the objects, call `reconcile` and apply
its result; every decision is here and unit-tested.

- An invalid spec never reaches Ray: `Failed/InvalidSpec` with pydantic's message, and no children.
- Missing children are created (named after the job: a replayed event or a restarted operator finds them
  and creates nothing); existing ones are never replaced.
- A spec change after submission is not applied (a running Ray job cannot change its model or data): the
  `Accepted` condition says so (`SpecChangeRejected`) and the job runs on as submitted. `spec.suspend` is the
  exception: it is patched into the RayJob, which suspends or resumes it.
- The status follows KubeRay's RayJob status (`jobDeploymentStatus`, `jobStatus`, `reason`). A failed Ray job
  that KubeRay retries (`spec.cluster.backoffLimit`: deployment status `Retrying`, then a new cluster) is not
  failed: `status.restarts` counts the retries, each of which resumes from the newest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kuberlhf.spec import RLHFJobSpec
from kuberlhf_operator.rayjob import SPEC_HASH, OperatorSettings, build_configmap, build_rayjob, spec_hash

FAILURE_REASONS = {"DeadlineExceeded", "SubmissionFailed", "AppFailed", "ValidationFailed", "JobDeploymentStatusTransitionGracePeriodExceeded"}


@dataclass
class Actions:
    """What the handler does: create these objects, merge-patch the RayJob, write this status."""

    create: list[dict[str, Any]] = field(default_factory=list)
    patch_rayjob: dict[str, Any] | None = None
    status: dict[str, Any] = field(default_factory=dict)


def reconcile(job: dict[str, Any], rayjob: dict[str, Any] | None, configmap: dict[str, Any] | None,
              settings: OperatorSettings, now: str) -> Actions:
    actions = Actions()
    status = dict(job.get("status") or {})
    conditions = list(status.get("conditions") or [])
    generation = job["metadata"].get("generation")
    try:
        spec = RLHFJobSpec.model_validate(job.get("spec") or {})
    except ValidationError as err:
        if rayjob is None:  # never submitted: fail it
            conditions = set_condition(conditions, "Accepted", "False", "InvalidSpec", invalid_message(err),
                                       now, generation)
            conditions = set_condition(conditions, "Failed", "True", "InvalidSpec", invalid_message(err), now,
                                       generation)
            actions.status = finish_status(status, conditions, generation, rayjob=None, now=now)
            return actions
        spec = None  # an edit broke a running job's spec: it runs on as submitted
    if rayjob is not None and not owned_by(rayjob, job):
        message = (f"a RayJob named {rayjob['metadata']['name']} exists and belongs to something else; "
                   "rename the RLHFJob or remove that RayJob")
        conditions = set_condition(conditions, "Failed", "True", "RayJobNameTaken", message, now, generation)
        actions.status = finish_status(status, conditions, generation, rayjob=None, now=now)
        return actions
    if spec is not None:
        conditions = storage_condition(conditions, spec, now, generation)
        if rayjob is None and not persistent(spec) and not spec.output.ephemeral:
            conditions = set_condition(conditions, "Accepted", "False", "NoPersistentStorage",
                                       NO_PERSISTENT_STORAGE, now, generation)
            conditions = set_condition(conditions, "Failed", "True", "NoPersistentStorage", NO_PERSISTENT_STORAGE,
                                       now, generation)
            actions.status = finish_status(status, conditions, generation, rayjob=None, now=now)
            return actions
    if configmap is None and rayjob is None and spec is not None:
        actions.create.append(build_configmap(job))
    if rayjob is None and spec is not None:
        actions.create.append(build_rayjob(job, spec, settings))
        conditions = set_condition(conditions, "Accepted", "True", "Submitted",
                                   "the RayJob was created", now, generation)
    elif rayjob is not None:
        submitted = (rayjob["metadata"].get("annotations") or {}).get(SPEC_HASH)
        if spec is None or spec_hash(job["spec"]) != submitted:
            conditions = set_condition(conditions, "Accepted", "True", "SpecChangeRejected",
                                       "the spec changed after submission; the job runs as submitted (only "
                                       "spec.suspend applies to a submitted job): delete and re-create it to "
                                       "change anything else", now, generation)
        else:
            conditions = set_condition(conditions, "Accepted", "True", "Submitted", "the RayJob was created",
                                       now, generation)
        suspend = bool((job.get("spec") or {}).get("suspend", False))
        if bool(rayjob.get("spec", {}).get("suspend", False)) != suspend:
            actions.patch_rayjob = {"spec": {"suspend": suspend}}
        conditions = rayjob_conditions(conditions, rayjob, suspend, now, generation)
        conditions = monitor_condition(conditions, status.get("monitor"), now, generation)
    actions.status = finish_status(status, conditions, generation, rayjob, now)
    return actions


NO_PERSISTENT_STORAGE = ("spec.output: the checkpoints and the final model would be lost when KubeRay tears the "
                         "cluster down (pods do not share a disk): set spec.output.uri (an object store) or "
                         "spec.cluster.persistentVolumeClaim, or spec.output.ephemeral: true to run anyway")


def persistent(spec: RLHFJobSpec) -> bool:
    """Whether the job's outputs outlive its cluster: an object store, or a volume every pod mounts."""
    return bool(spec.output.uri or spec.cluster.persistent_volume_claim)


def storage_condition(conditions: list[dict[str, Any]], spec: RLHFJobSpec, now: str,
                      generation: int | None) -> list[dict[str, Any]]:
    """OutputsPersistent: where the checkpoints and final model go, and whether they outlive the cluster."""
    if spec.output.uri:
        return set_condition(conditions, "OutputsPersistent", "True", "ObjectStore",
                             f"checkpoints and the final model go to {spec.output.uri}", now, generation)
    if spec.cluster.persistent_volume_claim:
        return set_condition(conditions, "OutputsPersistent", "True", "PersistentVolume",
                             f"checkpoints and the final model go to the volume {spec.cluster.persistent_volume_claim}",
                             now, generation)
    return set_condition(conditions, "OutputsPersistent", "False", "Ephemeral" if spec.output.ephemeral else
                         "NoPersistentStorage", "the outputs are lost when the cluster is torn down "
                         "(spec.output.ephemeral)" if spec.output.ephemeral else NO_PERSISTENT_STORAGE,
                         now, generation)


def owned_by(child: dict[str, Any], job: dict[str, Any]) -> bool:
    return any(ref.get("uid") == job["metadata"]["uid"] for ref in child["metadata"].get("ownerReferences") or [])


def rayjob_conditions(conditions: list[dict[str, Any]], rayjob: dict[str, Any], suspend: bool, now: str,
                      generation: int | None) -> list[dict[str, Any]]:
    """ClusterReady, Running, Suspended, Succeeded and Failed from the RayJob's status."""
    observed = rayjob.get("status") or {}
    deployment = observed.get("jobDeploymentStatus", "")
    ray_status = observed.get("jobStatus", "")
    message = observed.get("message", "")
    reason = observed.get("reason", "")

    def put(kind: str, holds: bool, why: str, text: str = "") -> None:
        nonlocal conditions
        conditions = set_condition(conditions, kind, "True" if holds else "False", why, text, now, generation)

    cluster_ready = deployment in ("Running", "Complete") or ray_status in ("RUNNING", "SUCCEEDED", "FAILED")
    put("ClusterReady", cluster_ready, "RayClusterReady" if cluster_ready else "RayClusterStarting",
        f"RayJob {deployment or 'submitted'}")
    suspended = deployment in ("Suspending", "Suspended") or (suspend and deployment not in ("Running",))
    put("Suspended", suspended, "Suspended" if suspended else "NotSuspended")
    running = deployment == "Running" and ray_status == "RUNNING"
    retrying = deployment == "Retrying"  # the failed attempt's jobStatus lingers until the new cluster starts
    if retrying:
        why = message or reason or "no reason given"
        put("Running", False, "RayJobRetrying", f"attempt {failures(rayjob)} failed ({why}); KubeRay starts a "
            "new cluster and the job resumes from its newest checkpoint")
    else:
        put("Running", running, "RayJobRunning" if running else ("RayJobFinished" if ray_status in
            ("SUCCEEDED", "FAILED", "STOPPED") else "RayJobNotRunning"), message)
    succeeded = ray_status == "SUCCEEDED" and deployment in ("Complete", "Running", "")
    put("Succeeded", succeeded, "RayJobSucceeded" if succeeded else "NotSucceeded")
    failed_reason = ""
    if deployment == "Failed" or (ray_status in ("FAILED", "STOPPED") and not retrying):
        failed_reason = reason if reason in FAILURE_REASONS else "AppFailed"
    if deployment == "ValidationFailed":
        failed_reason = "ValidationFailed"
    put("Failed", bool(failed_reason), failed_reason or "NotFailed", message if failed_reason else "")
    return conditions


def failures(rayjob: dict[str, Any]) -> int:
    """How many attempts of the Ray job failed (KubeRay's `status.failed`)."""
    return int((rayjob.get("status") or {}).get("failed") or 0)


def restarts(rayjob: dict[str, Any]) -> int:
    """How many times KubeRay started the job again after a failure: every failed attempt but a final one."""
    final = (rayjob.get("status") or {}).get("jobDeploymentStatus") == "Failed"
    return max(failures(rayjob) - (1 if final else 0), 0)


def monitor_condition(conditions: list[dict[str, Any]], monitor: dict[str, Any] | None, now: str,
                      generation: int | None) -> list[dict[str, Any]]:
    """RewardHackingSuspected from the verdict the running job wrote to `status.monitor` (absent until the job
    reports one): True with each signal's evidence, False once none holds."""
    if not monitor:
        return conditions
    signals = monitor.get("signals") or []
    if not signals:
        return set_condition(conditions, "RewardHackingSuspected", "False", "NoSignal",
                             f"no signal at step {monitor.get('step', 0)}", now, generation)
    reason = "".join(part.capitalize() for part in signals[0]["signal"].split("_"))
    message = "; ".join(f"{s['signal']} (step {s['step']}): {s['evidence']}" for s in signals)
    return set_condition(conditions, "RewardHackingSuspected", "True", reason, message, now, generation)


def set_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str, now: str,
                  generation: int | None) -> list[dict[str, Any]]:
    """`conditions` with `kind` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c["type"] == kind), None)
    changed = previous is None or previous["status"] != status
    condition = {"type": kind, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": now if changed else previous["lastTransitionTime"]}
    if generation is not None:
        condition["observedGeneration"] = generation
    return [c for c in conditions if c["type"] != kind] + [condition]


def phase_of(conditions: list[dict[str, Any]]) -> str:
    """The printer column's one word, derived from the conditions."""
    holds = {c["type"] for c in conditions if c["status"] == "True"}
    for kind, phase in (("Failed", "Failed"), ("Succeeded", "Succeeded"), ("Suspended", "Suspended"),
                        ("Running", "Running")):
        if kind in holds:
            return phase
    return "Starting" if "Accepted" in holds else "Pending"


def finish_status(status: dict[str, Any], conditions: list[dict[str, Any]], generation: int | None,
                  rayjob: dict[str, Any] | None, now: str) -> dict[str, Any]:
    order = ["Accepted", "OutputsPersistent", "ClusterReady", "Running", "Suspended", "Succeeded", "Failed",
             "RewardHackingSuspected"]
    conditions = sorted(conditions, key=lambda c: order.index(c["type"]))
    new = {**status, "conditions": conditions, "observedGeneration": generation, "phase": phase_of(conditions)}
    if rayjob is not None:
        observed = rayjob.get("status") or {}
        new["rayJobName"] = rayjob["metadata"]["name"]
        for source, target in (("dashboardURL", "dashboardURL"), ("startTime", "startTime"),
                               ("jobId", "raySubmissionId")):
            if observed.get(source):
                new[target] = observed[source]
        new["restarts"] = restarts(rayjob)
    if new["phase"] in ("Succeeded", "Failed") and not new.get("completionTime"):
        new["completionTime"] = (rayjob or {}).get("status", {}).get("endTime") or now
    if new["phase"] not in ("Succeeded", "Failed"):
        new["completionTime"] = None  # an attempt ended but KubeRay runs the job again
    return {k: v for k, v in new.items() if v is not None}


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns status `old` into `new`: only the fields that changed, and null for a
    field `new` lacks. Fields the operator left as they were (the job's own `progress`, `monitor`,
    `lastCheckpoint`) are not sent, so a newer value the job wrote meanwhile is not overwritten."""
    old = old or {}
    removed = {key: None for key in old if key not in new}
    return {**removed, **{key: value for key, value in new.items() if old.get(key) != value}}


def invalid_message(err: ValidationError) -> str:
    """pydantic's errors as `spec.<field>: <message>` lines (the CLI's format)."""
    from kuberlhf.jobfile import format_error

    return "; ".join(f"spec.{format_error(error)}" for error in err.errors())
