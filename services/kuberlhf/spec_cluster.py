"""Where an RLHFJob runs on Kubernetes (`spec.cluster`): the Ray cluster the operator asks KubeRay for.
`kuberlhf run` on an embedded Ray ignores this section."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from kuberlhf.spec_base import SpecModel


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # the names of ConfigMaps, Secrets, claims
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# What the operator mounts itself (kuberlhf_operator/rayjob.py): names and paths a volume of the job may not take
OPERATOR_VOLUMES = {"tmp": "/tmp", "shm": "/dev/shm", "home": "/home/ray", "job": "/etc/kuberlhf", "data": "/data"}


class TolerationSpec(SpecModel):
    """A pod toleration (Kubernetes `core/v1.Toleration`)."""

    key: str | None = None
    """Taint key (empty with operator Exists: every taint)."""
    operator: str = "Equal"
    """`Equal` or `Exists`."""
    value: str | None = None
    """Taint value (operator Equal)."""
    effect: str | None = None
    """`NoSchedule`, `PreferNoSchedule` or `NoExecute` (empty: all)."""


class SecretEnvSpec(SpecModel):
    """An environment variable of every pod, read from a Kubernetes Secret (`valueFrom.secretKeyRef`): how hub
    tokens and object-store credentials reach a job. Only the reference is in the job; the value never passes
    through the RLHFJob, its ConfigMap, its status, or the job's logs and metrics."""

    name: str = Field(pattern=ENV_NAME)
    """The variable, e.g. `HF_TOKEN`, `AWS_ACCESS_KEY_ID`."""
    secret_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The Secret in the job's namespace."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """The key within the Secret."""


class VolumeSpec(SpecModel):
    """A volume mounted on every Ray pod: a ConfigMap, a Secret or a PersistentVolumeClaim of the job's
    namespace (e.g. reward code, a CA bundle, a shared model cache)."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """The volume's name in the pod."""
    mount_path: str = Field(pattern=r"^/")
    """Where it is mounted in the Ray containers."""
    read_only: bool = True
    """Mount it read-only."""
    config_map: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A ConfigMap."""
    secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A Secret."""
    persistent_volume_claim: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A PersistentVolumeClaim."""

    @model_validator(mode="after")
    def _one_source(self) -> "VolumeSpec":
        sources = [s for s in (self.config_map, self.secret, self.persistent_volume_claim) if s]
        if len(sources) != 1:
            raise ValueError(f"volume {self.name!r}: set exactly one of configMap, secret or persistentVolumeClaim")
        taken = {path: name for name, path in OPERATOR_VOLUMES.items()}
        if self.name in OPERATOR_VOLUMES or self.mount_path.rstrip("/") in taken:
            raise ValueError(f"volume {self.name!r} at {self.mount_path}: the operator mounts "
                             f"{', '.join(f'{n} at {p}' for n, p in OPERATOR_VOLUMES.items())} itself")
        return self


class ClusterSpec(SpecModel):
    """The KubeRay Ray cluster of the job: one head pod (driver, dashboard; no training work) and enough
    worker pods to hold every role's resources (`spec.resources`), in pods of `gpusPerWorker` GPUs."""

    image: str | None = None
    """Runtime image (torch, Ray, DeepSpeed, vLLM, kuberlhf). Default: the operator's (Helm value
    `runtimeImage`)."""
    gpus_per_worker: int | None = Field(default=None, ge=1)
    """GPUs per worker pod. Default: all the job needs, up to 8 (one node's worth)."""
    cpus_per_gpu: float = Field(default=8.0, gt=0)
    """CPUs a worker pod asks for per GPU, for tokenization, data loading and vLLM's scheduler; at least what
    the roles ask for."""
    memory_per_gpu: str = Field(default="64Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    """Memory a worker pod asks for per GPU (Kubernetes quantity). CPU-only pods ask for this per 8 CPUs."""
    head_cpus: float = Field(default=2.0, gt=0)
    """CPUs of the head pod."""
    head_memory: str = Field(default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    """Memory of the head pod."""
    persistent_volume_claim: str | None = None
    """A PersistentVolumeClaim mounted at /data on every pod, the job's working directory: relative model,
    data, output and checkpoint paths resolve there, and outputs outlive the pods."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels every pod requires (e.g. a GPU type)."""
    tolerations: list[TolerationSpec] = Field(default_factory=list)
    """Taints the pods tolerate (e.g. `nvidia.com/gpu`)."""
    service_account_name: str | None = None
    """Service account of the pods. Default: one the operator makes for this job (`<name>-job`), allowed only
    to read this RLHFJob and write its status (the job's progress); a named account gets that permission too."""
    secret_env: list[SecretEnvSpec] = Field(default_factory=list)
    """Environment variables from Secrets, e.g. `{name: HF_TOKEN, secretName: hub, key: token}`."""
    env: dict[str, str] = Field(default_factory=dict)
    """Plain environment variables of every Ray pod (e.g. `HF_HUB_OFFLINE: "1"`, `NCCL_SOCKET_IFNAME`); values
    that are secret belong in `secretEnv`."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets the pods pull the runtime image with (a private registry)."""
    volumes: list[VolumeSpec] = Field(default_factory=list)
    """More volumes on every Ray pod (ConfigMaps, Secrets, PersistentVolumeClaims)."""
    affinity: dict[str, Any] | None = None
    """Kubernetes `affinity` of every Ray pod (nodeAffinity, podAffinity, podAntiAffinity), as in a pod spec;
    the API server checks it when KubeRay creates the pods."""
    ttl_seconds_after_finished: int = Field(default=600, ge=0)
    """How long the finished RayJob (and its logs) stays before KubeRay deletes it."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job (DeadlineExceeded) when it runs longer than this."""
    backoff_limit: int = Field(default=0, ge=0)
    """Retries of a failed job submission (each a new Ray cluster; runs resume from their newest checkpoint)."""

    @model_validator(mode="after")
    def _pod_overrides(self) -> "ClusterSpec":
        for name in self.env:
            if not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"env: {name!r} is not an environment variable name")
        both = set(self.env) & {e.name for e in self.secret_env}
        if both:
            raise ValueError(f"env and secretEnv both set {', '.join(sorted(both))}")
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError("volumes: two volumes have the same name")
        return self
