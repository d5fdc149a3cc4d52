"""Where an RLHFJob runs on Kubernetes (`spec.cluster`): the Ray cluster the operator asks KubeRay for.
`kuberlhf run` on an embedded Ray ignores this section."""

from __future__ import annotations

from pydantic import Field

from kuberlhf.spec_base import SpecModel


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

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The variable, e.g. `HF_TOKEN`, `AWS_ACCESS_KEY_ID`."""
    secret_name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """The Secret in the job's namespace."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """The key within the Secret."""


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
    ttl_seconds_after_finished: int = Field(default=600, ge=0)
    """How long the finished RayJob (and its logs) stays before KubeRay deletes it."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job (DeadlineExceeded) when it runs longer than this."""
    backoff_limit: int = Field(default=0, ge=0)
    """Retries of a failed job submission (each a new Ray cluster; runs resume from their newest checkpoint)."""
