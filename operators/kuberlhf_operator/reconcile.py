"""Reconcile, as pure functions: an RLHFJob and the children observed in the cluster in, the actions to take
and the job's new status out. kopf handlers (handlers.py) only read the objects, call `reconcile` and apply
its result; every decision is here and unit-tested.

- A finished job (Succeeded or Failed) is left as it is: its children are never recreated, whatever happens to
  them (deleted by hand, by a KubeRay TTL) and however often the operator restarts.
- An invalid spec, a name KubeRay cannot carry, or an image or service account the chart does not allow never
  reaches Ray: `Failed` with the reason, and no children.
- Children are named after the job and made together (rayjob.build_children): a missing one is created (a
  replayed event or a restarted operator finds the others and creates nothing), a stale one (made from another
  spec, e.g. a ConfigMap left from before a RayJob was deleted by hand and the spec edited) is replaced before
  the RayJob is created, so the RayJob always runs the job file it was sized for.
- A spec change after submission is refused by the CRD's CEL rules; where the API server lacks them it is not
  applied (a running Ray job cannot change its model or data): the `Accepted` condition says so
  (`SpecChangeRejected`). `spec.suspend` is the exception: a change the user makes is forwarded to the RayJob.
  With a Kueue queue label Kueue owns the RayJob's `suspend` (it starts suspended and Kueue admits it); the
  operator forwards only the user's own changes, recorded in the RayJob's SUSPEND_REQUESTED annotation.
- The status follows KubeRay's RayJob status (`jobDeploymentStatus`, `jobStatus`, `reason`). A failed Ray job
  that KubeRay retries (`spec.cluster.backoffLimit`: deployment status `Retrying`, then a new cluster) is not
  failed: `status.restarts` counts the retries, each of which resumes from the newest checkpoint.
- Messages are bounded (MAX_MESSAGE): a failed Ray job's status carries its driver log, which stays there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kuberlhf.spec import MAX_NAME_LENGTH, RLHFJobSpec
from kuberlhf.spec_errors import format_error
from kuberlhf.stages import check_stages
from kuberlhf_operator.rayjob import (SPEC_HASH, SUSPEND_REQUESTED, OperatorSettings, build_children, queue_of,
                                      spec_hash)

FAILURE_REASONS = {"DeadlineExceeded", "SubmissionFailed", "AppFailed", "ValidationFailed", "JobDeploymentStatusTransitionGracePeriodExceeded"}
MAX_MESSAGE = 1024
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Actions:
    """What the handler does: create these objects, replace these (same kind and name), merge-patch the RayJob,
    write this status."""

    create: list[dict[str, Any]] = field(default_factory=list)
    replace: list[dict[str, Any]] = field(default_factory=list)
    patch_rayjob: dict[str, Any] | None = None
    status: dict[str, Any] = field(default_factory=dict)


def reconcile(job: dict[str, Any], children: dict[str, dict[str, Any] | None], settings: OperatorSettings,
              now: str) -> Actions:
    """`children`: the job's children found in the cluster, by kind (a missing kind or None: absent)."""
    status = dict(job.get("status") or {})
    if status.get("phase") in TERMINAL_PHASES:
        return Actions(status=status)
    rayjob = children.get("RayJob")
    conditions = list(status.get("conditions") or [])
    generation = job["metadata"].get("generation")

    def refuse(reason: str, message: str) -> Actions:
        refused = set_condition(conditions, "Accepted", "False", reason, message, now, generation)
        refused = set_condition(refused, "Failed", "True", reason, message, now, generation)
        return Actions(status=finish_status(status, refused, generation, rayjob=None, now=now))

    try:
        spec = RLHFJobSpec.model_validate(job.get("spec") or {})
        check_stages(spec)
    except (ValidationError, ValueError) as err:
        if rayjob is None:  # never submitted: fail it
            return refuse("InvalidSpec", invalid_message(err))
        spec = None  # an edit broke a running job's spec: it runs on as submitted
    if rayjob is not None and not owned_by(rayjob, job):
        conditions = set_condition(conditions, "Failed", "True", "RayJobNameTaken",
                                   f"a RayJob named {rayjob['metadata']['name']} exists and belongs to something "
                                   "else; rename the RLHFJob or remove that RayJob", now, generation)
        return Actions(status=finish_status(status, conditions, generation, rayjob=None, now=now))
    if spec is not None:
        conditions = storage_condition(conditions, spec, now, generation)
    if rayjob is None and spec is not None:
        problem = admission_problem(job, spec, settings)
        if problem is None and not persistent(spec) and not spec.output.ephemeral:
            problem = ("NoPersistentStorage", NO_PERSISTENT_STORAGE)
        if problem:
            return refuse(*problem)
    actions = Actions()
    if rayjob is None:
        actions.create, actions.replace = children_to_make(job, spec, children, settings, with_rayjob=True)
        conditions = set_condition(conditions, "Accepted", "True", "Submitted", "the RayJob was created", now,
                                   generation)
    else:
        submitted = (rayjob["metadata"].get("annotations") or {}).get(SPEC_HASH)
        if spec is None or spec_hash(job["spec"]) != submitted:
            conditions = set_condition(conditions, "Accepted", "True", "SpecChangeRejected",
                                       "the spec changed after submission; the job runs as submitted (only "
                                       "spec.suspend applies to a submitted job): delete and re-create it to "
                                       "change anything else", now, generation)
        else:  # the children it runs with, as they were made: a lost one is made again
            actions.create, _ = children_to_make(job, spec, children, settings, with_rayjob=False)
            conditions = set_condition(conditions, "Accepted", "True", "Submitted", "the RayJob was created",
                                       now, generation)
        actions.patch_rayjob = suspend_patch(job, rayjob)
        conditions = rayjob_conditions(conditions, rayjob, job, now, generation)
        conditions = monitor_condition(conditions, status.get("monitor"), now, generation)
    actions.status = finish_status(status, conditions, generation, rayjob, now)
    return actions


def children_to_make(job: dict[str, Any], spec: RLHFJobSpec, children: dict[str, dict[str, Any] | None],
                     settings: OperatorSettings, with_rayjob: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(to create, to replace): the missing children, and those made from another spec."""
    create, replace = [], []
    for child in build_children(job, spec, settings):
        if child["kind"] == "RayJob" and not with_rayjob:
            continue
        found = children.get(child["kind"])
        if found is None:
            create.append(child)
        elif with_rayjob and SPEC_HASH in child["metadata"].get("annotations", {}) and \
                (found["metadata"].get("annotations") or {}).get(SPEC_HASH) != child["metadata"]["annotations"][SPEC_HASH]:
            replace.append(child)
    return create, replace


def suspend_patch(job: dict[str, Any], rayjob: dict[str, Any]) -> dict[str, Any] | None:
    """The user's change of `spec.suspend` since the operator last forwarded it, as a RayJob patch. Without the
    annotation (a RayJob made by an older operator) the RayJob's own `suspend` is the last forwarded value."""
    requested = bool((job.get("spec") or {}).get("suspend", False))
    annotation = (rayjob["metadata"].get("annotations") or {}).get(SUSPEND_REQUESTED)
    forwarded = annotation == "true" if annotation is not None else bool(rayjob.get("spec", {}).get("suspend"))
    if requested == forwarded:
        return None
    return {"metadata": {"annotations": {SUSPEND_REQUESTED: str(requested).lower()}}, "spec": {"suspend": requested}}


def admission_problem(job: dict[str, Any], spec: RLHFJobSpec, settings: OperatorSettings) -> tuple[str, str] | None:
    """(reason, message) when the job may not be run: a name its children cannot carry, or an image or service
    account outside what the chart allows (an RLHFJob creates pods with both)."""
    name = job["metadata"]["name"]
    if len(name) > MAX_NAME_LENGTH:
        return "InvalidName", (f"metadata.name: at most {MAX_NAME_LENGTH} characters (the RayJob and the Ray pods "
                               f"are named after the job), got {len(name)}")
    image = spec.cluster.image or settings.runtime_image
    if settings.allowed_images and not any(image.startswith(prefix) for prefix in settings.allowed_images):
        return "ImageNotAllowed", (f"spec.cluster.image: {image[:200]} is not allowed here; allowed: "
                                   f"{', '.join(settings.allowed_images)}* (Helm value jobPolicy.allowedImages)")
    account = spec.cluster.service_account_name
    if account and settings.allowed_service_accounts and account not in settings.allowed_service_accounts:
        return "ServiceAccountNotAllowed", (
            f"spec.cluster.serviceAccountName: {account} is not allowed here; allowed: "
            f"{', '.join(settings.allowed_service_accounts)} (Helm value jobPolicy.allowedServiceAccounts), or "
            "none: the job's own account")
    return None


def child_error(status: dict[str, Any], generation: int | None, kind: str, name: str, code: int, api_reason: str,
                api_message: str, now: str) -> tuple[dict[str, Any], bool]:
    """The job's status after the API refused to create or change a child, and whether retrying is pointless.
    422 (the object is invalid, e.g. refused by an admission webhook) fails the job; a quota (403), missing
    permission (403) or missing kind (404: KubeRay not installed) may be fixed meanwhile: retried with backoff."""
    hint = {404: f" (is the {kind} kind served? KubeRay installed?)" if kind == "RayJob" else "",
            403: " (a quota, or the operator's RBAC)"}.get(code, "")
    message = f"creating {kind} {name}: {api_message}{hint}"
    reason = f"{kind}{api_reason or 'Error'}"
    conditions = set_condition(list(status.get("conditions") or []), "Accepted", "False", reason, message, now,
                               generation)
    permanent = code == 422
    if permanent:
        conditions = set_condition(conditions, "Failed", "True", reason, message, now, generation)
    return finish_status(status, conditions, generation, rayjob=None, now=now), permanent


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


def rayjob_conditions(conditions: list[dict[str, Any]], rayjob: dict[str, Any], job: dict[str, Any], now: str,
                      generation: int | None) -> list[dict[str, Any]]:
    """ClusterReady, Running, Suspended, Succeeded and Failed from the RayJob's status. A RayJob that Kueue holds
    (queue label, suspended, not by the user) is Suspended with reason `Queued`."""
    suspend = bool((job.get("spec") or {}).get("suspend", False))
    queue = queue_of(job)
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
    held = deployment in ("Suspending", "Suspended", "") and bool(rayjob.get("spec", {}).get("suspend"))
    if queue and held and not suspend:
        put("Suspended", True, "Queued", f"waiting for Kueue to admit it (queue {queue})")
    else:
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
    """`conditions` with `kind` set; lastTransitionTime moves only when the status changes. The message is
    bounded: its first MAX_MESSAGE characters, without the driver log KubeRay appends to a failed job's."""
    message = bounded(message)
    previous = next((c for c in conditions if c["type"] == kind), None)
    changed = previous is None or previous["status"] != status
    condition = {"type": kind, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": now if changed else previous["lastTransitionTime"]}
    if generation is not None:
        condition["observedGeneration"] = generation
    return [c for c in conditions if c["type"] != kind] + [condition]


def bounded(message: str) -> str:
    message = message.split("last available logs")[0].rstrip(" ,:;\n")
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "..."


def phase_of(conditions: list[dict[str, Any]]) -> str:
    """The printer column's one word, derived from the conditions."""
    holds = {c["type"] for c in conditions if c["status"] == "True"}
    for kind, phase in (("Failed", "Failed"), ("Succeeded", "Succeeded"), ("Suspended", "Suspended"),
                        ("Running", "Running")):
        if kind in holds:
            queued = any(c["type"] == "Suspended" and c["reason"] == "Queued" for c in conditions)
            return "Queued" if phase == "Suspended" and queued else phase
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


def invalid_message(err: ValidationError | ValueError) -> str:
    """pydantic's errors (or a stage's, already one line) as `spec.<field>: <message>` lines (the CLI's format)."""
    if not isinstance(err, ValidationError):
        return f"spec.{err}"
    return "; ".join(f"spec.{format_error(error)}" for error in err.errors())
