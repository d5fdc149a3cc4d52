"""The children of an RLHFJob, as pure functions of the job: a ConfigMap holding the job file, the job's
ServiceAccount and status Role (access.py), its NetworkPolicy, and a KubeRay `RayJob` (ray.io/v1) whose
entrypoint runs `kuberlhf run` on the job file, with Ray's token auth on (KubeRay `authOptions`, 1.6+).

Cluster size: the placement-group bundles of the job's plan (`kuberlhf.plan.compile_plan`: exactly the roles its
algorithm starts, laid out as the job itself reserves them), for the largest stage of a chained job. The head pod runs the driver and
the dashboard only (`num-cpus: 0`); worker pods of `cluster.gpusPerWorker` GPUs hold every bundle, so Ray can
place the job's placement group. Both children are owned by the RLHFJob (deleting it deletes them) and are
named after it, so a second create of the same child fails with a conflict instead of making a duplicate.
The ConfigMap and the RayJob carry the digest of the spec they were made from (SPEC_HASH), so a stale one is
found and replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

from kuberlhf.storage.lease import OWNER_ENV
from kuberlhf_operator import access
from kuberlhf.spec import API_VERSION, KIND, RLHFJob, RLHFJobSpec
from kuberlhf.spec_cluster import OPERATOR_VOLUMES
from kuberlhf.stages import stage_jobs
from kuberlhf.plan import compile_plan

JOB_DIR, JOB_FILE, DATA_DIR = OPERATOR_VOLUMES["job"], "job.yaml", OPERATOR_VOLUMES["data"]
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_HASH = "kuberlhf.io/spec-hash"
SUSPEND_REQUESTED = "kuberlhf.io/suspend-requested"  # the last spec.suspend the operator forwarded
RUNTIME_UID = 1000  # the user of images/runtime/Dockerfile
WRITABLE_DIRS = tuple((name, OPERATOR_VOLUMES[name]) for name in ("tmp", "shm", "home"))  # emptyDirs, read-only root
JOB_LABEL = "kuberlhf.io/job"
RAY_VERSION = "2.60.0"
MAX_GPUS_PER_WORKER = 8


@dataclass(frozen=True)
class OperatorSettings:
    """What the Helm chart configures (handlers.operator_settings reads it from the environment).

    - runtime_image: the image of jobs that name none.
    - ray_auth: Ray's token auth on the job's cluster (KubeRay `authOptions.mode: token`, KubeRay 1.6+).
    - network_policy: render a NetworkPolicy per job; monitoring_namespaces: labels of the namespaces allowed to
      scrape the metrics ports (None: none); kuberay: the NetworkPolicy peer of the KubeRay operator.
    - allowed_images / allowed_service_accounts: what an RLHFJob may ask for (creating an RLHFJob amounts to
      creating pods with its image and service account); empty: anything.
    """

    runtime_image: str
    image_pull_policy: str = "IfNotPresent"
    ray_auth: bool = True
    network_policy: bool = True
    monitoring_namespaces: dict[str, str] | None = None
    kuberay: dict[str, Any] = field(default_factory=lambda: {
        "namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}})
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterSize:
    """What the job's placement group needs: total CPUs and GPUs, and the largest single bundle."""

    cpus: float
    gpus: float
    largest_bundle_gpus: float
    largest_bundle_cpus: float


def cluster_size(spec: RLHFJobSpec, name: str) -> ClusterSize:
    """Resources of the largest stage (a single-stage job is its own only stage)."""
    jobs = stage_jobs(RLHFJob.model_validate({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
                                              "spec": spec.model_dump(by_alias=True, exclude_unset=True)})) \
        if spec.stages else [None]
    sizes = []
    for job in jobs:
        stage_spec = job.spec if job is not None else spec
        bundles = compile_plan(stage_spec).bundles
        sizes.append(ClusterSize(cpus=sum(b["CPU"] for b in bundles), gpus=sum(b.get("GPU", 0) for b in bundles),
                                 largest_bundle_gpus=max(b.get("GPU", 0) for b in bundles),
                                 largest_bundle_cpus=max(b["CPU"] for b in bundles)))
    return max(sizes, key=lambda s: (s.gpus, s.cpus))


def worker_group(spec: RLHFJobSpec, size: ClusterSize, settings: OperatorSettings, name: str) -> dict[str, Any]:
    cluster = spec.cluster
    if size.gpus > 0:
        per_worker = cluster.gpus_per_worker or min(MAX_GPUS_PER_WORKER, math.ceil(size.gpus))
        per_worker = max(per_worker, math.ceil(size.largest_bundle_gpus))
        replicas = math.ceil(size.gpus / per_worker)
        cpus = max(math.ceil(per_worker * cluster.cpus_per_gpu), math.ceil(size.cpus / replicas))
        memory = _scaled(cluster.memory_per_gpu, per_worker)
        limits = {"cpu": str(cpus), "memory": memory, "nvidia.com/gpu": str(per_worker)}
    else:
        replicas, cpus = 1, max(1, math.ceil(size.cpus))
        limits = {"cpu": str(cpus), "memory": _scaled(cluster.memory_per_gpu, max(1, math.ceil(cpus / 8)))}
    return {
        "groupName": "workers", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
        "rayStartParams": {},
        "template": pod_template(spec, settings, "ray-worker", limits, name),
    }


def pod_template(spec: RLHFJobSpec, settings: OperatorSettings, container: str, limits: dict[str, str],
                 job_name: str, job_file: str | None = None) -> dict[str, Any]:
    """A Ray pod; the head (`job_file`: the ConfigMap holding the job) mounts the job file and runs the
    driver. Labelled with the job's name, which the PodMonitor finds a job's pods by."""
    cluster = spec.cluster
    head = job_file is not None
    # A read-only root: Ray writes its session to /tmp, its object store to /dev/shm (memory-backed, or Ray
    # falls back to a slow disk store), and the job its outputs and caches under its home.
    mounts = [{"name": name, "mountPath": path} for name, path in WRITABLE_DIRS]
    volumes = [{"name": name, "emptyDir": {"medium": "Memory"} if name == "shm" else {}} for name, _ in WRITABLE_DIRS]
    if head:
        mounts.append({"name": "job", "mountPath": JOB_DIR, "readOnly": True})
        volumes.append({"name": "job", "configMap": {"name": job_file}})
    if cluster.persistent_volume_claim:
        mounts.append({"name": "data", "mountPath": DATA_DIR})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": cluster.persistent_volume_claim}})
    for volume in cluster.volumes:  # the job's own: spec.cluster.volumes
        mounts.append({"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only})
        volumes.append({"name": volume.name, **_volume_source(volume)})
    main = {
        "name": container, "image": cluster.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    env = [{"name": name, "value": value} for name, value in sorted(cluster.env.items())]
    # references only: the operator never reads a Secret
    env += [{"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret_name, "key": e.key}}}
            for e in cluster.secret_env]
    if env:
        main["env"] = env
    if head:
        main["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                         {"containerPort": 10001, "name": "client"}, {"containerPort": 8080, "name": "metrics"}]
        if spec.metrics.enabled and spec.metrics.port:  # the job's own endpoint: its driver runs on the head
            main["ports"].append({"containerPort": spec.metrics.port, "name": "kuberlhf"})
    else:
        main["ports"] = [{"containerPort": 8080, "name": "metrics"}]
    # The runtime image runs as uid 1000 (Ray's convention); fsGroup lets it write to the PVC.
    security = {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID, "fsGroup": RUNTIME_UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
    pod: dict[str, Any] = {"containers": [main], "volumes": volumes, "securityContext": security}
    pod["serviceAccountName"] = cluster.service_account_name or job_account_name(job_name)
    if cluster.node_selector:
        pod["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in cluster.tolerations]
    if cluster.affinity:
        pod["affinity"] = cluster.affinity
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in cluster.image_pull_secrets]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "kuberlhf", JOB_LABEL: job_name}}, "spec": pod}


def _volume_source(volume: Any) -> dict[str, Any]:
    if volume.config_map:
        return {"configMap": {"name": volume.config_map}}
    if volume.secret:
        return {"secret": {"secretName": volume.secret}}
    return {"persistentVolumeClaim": {"claimName": volume.persistent_volume_claim, "readOnly": volume.read_only}}


def build_children(job: dict[str, Any], spec: RLHFJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every child of a job, in the order they are created: what the RayJob's pods use comes first."""
    name, namespace = job["metadata"]["name"], namespace_of(job)
    children = [build_configmap(job)]
    account = spec.cluster.service_account_name
    if not account:
        account = job_account_name(name)
        children.append(access.service_account(child_metadata(job, account)))
    role = status_role_name(name)
    children += [access.status_role(job, child_metadata(job, role)),
                 access.status_role_binding(child_metadata(job, role), role, account, namespace)]
    if settings.network_policy:
        port = spec.metrics.port if spec.metrics.enabled else None
        children.append(access.network_policy(job, child_metadata(job, name), JOB_LABEL, port,
                                              settings.monitoring_namespaces, settings.kuberay))
    children.append(build_rayjob(job, spec, settings))
    return children


def job_account_name(job_name: str) -> str:
    return f"{job_name}-job"


def status_role_name(job_name: str) -> str:
    return f"{job_name}-status"


def build_configmap(job: dict[str, Any]) -> dict[str, Any]:
    """The job file the head pod mounts: the RLHFJob's name, namespace, labels and spec as the user wrote it."""
    meta = job["metadata"]
    document = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                             "labels": dict(meta.get("labels") or {})},
                "spec": job["spec"]}
    metadata = child_metadata(job, configmap_name(job))
    metadata["annotations"] = {SPEC_HASH: spec_hash(job["spec"])}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {JOB_FILE: yaml.safe_dump(document, sort_keys=False)}}


def build_rayjob(job: dict[str, Any], spec: RLHFJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """The RayJob that runs `kuberlhf run` on the mounted job file."""
    name = job["metadata"]["name"]
    size = cluster_size(spec, name)
    head_limits = {"cpu": _cpus(spec.cluster.head_cpus), "memory": spec.cluster.head_memory}
    head = pod_template(spec, settings, "ray-head", head_limits, name, job_file=configmap_name(job))
    workers = worker_group(spec, size, settings, name)
    workdir = f"cd {DATA_DIR} && " if spec.cluster.persistent_volume_claim else ""
    rayjob_spec: dict[str, Any] = {
        "entrypoint": f"{workdir}kuberlhf run {JOB_DIR}/{JOB_FILE}",
        # Stored with the Ray job submission: the Ray dashboard's Jobs page names the RLHFJob.
        "metadata": {"rlhfjob": name, "namespace": job["metadata"].get("namespace") or ""},
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
        "backoffLimit": spec.cluster.backoff_limit,
        # With a Kueue queue, Kueue admits the job by unsuspending it: it starts suspended, whatever the spec says.
        "suspend": spec.suspend or queue_of(job) is not None,
        "submissionMode": "K8sJobMode",
        # KUBERLHF_OWNER: a retry of this RLHFJob (a new cluster) takes over the lease on its outputs at once.
        "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"KUBERLHF_RLHFJOB": f"{namespace_of(job)}/{name}",
                                                       OWNER_ENV: job["metadata"].get("uid", "")}}),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            # The dashboard listens on the pod's interfaces for the submitter and KubeRay; the token guards it.
            "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"}, "template": head},
            "workerGroupSpecs": [workers],
        },
    }
    if settings.ray_auth:
        rayjob_spec["rayClusterSpec"]["authOptions"] = {"mode": "token"}
    if spec.cluster.active_deadline_seconds:
        rayjob_spec["activeDeadlineSeconds"] = spec.cluster.active_deadline_seconds
    metadata = child_metadata(job, name)
    metadata["annotations"] = {SPEC_HASH: spec_hash(job["spec"]), SUSPEND_REQUESTED: str(spec.suspend).lower()}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}


def child_metadata(job: dict[str, Any], name: str) -> dict[str, Any]:
    meta = job["metadata"]
    labels = {"app.kubernetes.io/name": "kuberlhf", "app.kubernetes.io/managed-by": "kuberlhf-operator",
              JOB_LABEL: meta["name"]}
    queue = queue_of(job)
    if queue:
        labels[QUEUE_LABEL] = queue
    return {"name": name, "namespace": namespace_of(job), "labels": labels,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}]}


def queue_of(job: dict[str, Any]) -> str | None:
    """The Kueue LocalQueue the job asks for (its `kueue.x-k8s.io/queue-name` label), if any."""
    return (job["metadata"].get("labels") or {}).get(QUEUE_LABEL) or None


def configmap_name(job: dict[str, Any]) -> str:
    return f"{job['metadata']['name']}-job"


def namespace_of(job: dict[str, Any]) -> str:
    return job["metadata"].get("namespace") or "default"


def spec_hash(raw_spec: dict[str, Any]) -> str:
    """A digest of the spec without `suspend` (the one field that may change while the job runs)."""
    stable = {k: v for k, v in raw_spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def _cpus(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(value * 1000)}m"


def _scaled(quantity: str, factor: int) -> str:
    """`factor` times a Kubernetes quantity ("64Gi" x 2 = "128Gi"), in the largest binary unit that divides it
    exactly, else in bytes."""
    total = parse_quantity(quantity) * factor
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if total % size == 0:
            return f"{int(total // size)}{unit}"
    return str(math.ceil(total))
