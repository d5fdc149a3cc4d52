"""The RLHFJob's status, as the CRD declares it: written by the operator (conditions, children) and by the
running job (progress). Kubernetes API conventions: `conditions` is the source of truth, `phase` is derived
from them for the printer column only, time series stay in Prometheus.

Like `spec.py`, imported by the operator: pydantic and the standard library only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ConditionType = Literal["Accepted", "ClusterReady", "Running", "Suspended", "Succeeded", "Failed",
                        "RewardHackingSuspected"]
Phase = Literal["Pending", "Starting", "Running", "Suspended", "Succeeded", "Failed"]


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True)


class Condition(StatusModel):
    """One aspect of the job's state (Kubernetes `metav1.Condition`)."""

    type: ConditionType
    """Accepted, ClusterReady, Running, Suspended, Succeeded, Failed, or RewardHackingSuspected (from the job's
    monitor)."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """CamelCase reason, e.g. InvalidSpec, SubmissionFailed, AppFailed, DeadlineExceeded."""
    message: str = Field(default="", max_length=32768)
    """What happened, for people."""
    last_transition_time: str
    """When `status` last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` this condition was computed from."""


class Progress(StatusModel):
    """How far the running job is; written by the job itself through the status subresource."""

    stage: str | None = None
    """The running stage of a chained job (its name)."""
    step: int = Field(default=0, ge=0)
    """Steps done."""
    total_steps: int = Field(default=0, ge=0)
    """Steps in the run (of the running stage)."""
    steps: str = ""
    """`step/totalSteps`, for the printer column."""
    percent: float = Field(default=0.0, ge=0, le=100)
    """step / totalSteps in percent."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """Estimated seconds to the end of the run, from the mean step time so far."""
    eta: str | None = None
    """`etaSeconds` for people (`1h05m`, `4m10s`, `35s`), for the printer column."""
    reward: float | None = None
    """Mean reward of the last step (online algorithms)."""
    kl: float | None = None
    """Mean KL to the reference of the last step (online algorithms)."""
    loss: float | None = None
    """Loss of the last step (offline algorithms)."""
    updated_at: str | None = None
    """When the job last wrote its progress (RFC 3339)."""


class MonitorSignal(StatusModel):
    """A reward-hacking or stability signal that holds (see `spec.monitor`)."""

    signal: str
    """length, kl_budget, kl_growth, entropy_collapse or proxy_divergence."""
    step: int = Field(ge=0)
    """The step it was judged at."""
    evidence: str
    """The numbers behind it."""


class MonitorStatus(StatusModel):
    """The reward-hacking monitor's verdict at the last step it reported; written by the job itself."""

    signals: list[MonitorSignal] = Field(default_factory=list)
    """The signals that hold (empty: none)."""
    step: int = Field(default=0, ge=0)
    """The step of this verdict."""


class RLHFJobStatus(StatusModel):
    """Observed state of an RLHFJob."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """The job's conditions, one per type."""
    phase: Phase | None = None
    """Derived from the conditions, for `kubectl get` only: Pending, Starting, Running, Suspended, Succeeded or
    Failed."""
    ray_job_name: str | None = None
    """The KubeRay RayJob running this job."""
    ray_submission_id: str | None = None
    """The Ray job submission id KubeRay gave the job (`ray job status <id>`, the Ray dashboard's Jobs page)."""
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    """The Ray dashboard of the job's cluster (in-cluster address; port-forward the head service to reach it)."""
    start_time: str | None = None
    """When the RayJob started running (RFC 3339)."""
    completion_time: str | None = None
    """When the job succeeded or failed (RFC 3339)."""
    restarts: int | None = Field(default=None, ge=0)
    """Times KubeRay ran the job again after a failed attempt (`spec.cluster.backoffLimit`); each attempt
    resumes from the newest checkpoint on the job's storage."""
    last_checkpoint: str | None = None
    """The newest checkpoint the job wrote."""
    progress: Progress | None = None
    """Steps done, ETA and the last step's headline metrics."""
    monitor: MonitorStatus | None = None
    """The reward-hacking monitor's signals (online algorithms); the operator mirrors them in the
    RewardHackingSuspected condition."""
