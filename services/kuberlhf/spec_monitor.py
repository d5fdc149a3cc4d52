"""Spec sections for watching a job: the Prometheus endpoint (`spec.metrics`), the reward-hacking monitor
(`spec.monitor`) and what a run writes beside its metrics (`spec.logging`). Pydantic and the standard library
only (the operator imports the spec)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from kuberlhf.spec_base import SpecModel


class MetricsSpec(SpecModel):
    """The job's Prometheus endpoint (`/metrics`), served from the Ray head (the driver's node)."""

    enabled: bool = True
    """Serve the endpoint. Actors' own metrics go to Ray's metrics endpoint either way."""
    port: int = Field(default=9400, ge=0, le=65535)
    """TCP port of the endpoint; 0 picks a free one (`kuberlhf run` prints where it listens). On Kubernetes
    the head pod declares it as the port `kuberlhf`, which the chart's PodMonitor scrapes."""
    bind_address: str | None = None
    """The address the endpoint listens on. Default: `127.0.0.1` on an embedded local Ray (only this machine
    can scrape it); `0.0.0.0` (every interface) on a Ray cluster, as on Kubernetes, where the job's
    NetworkPolicy admits only the monitoring namespaces. `0.0.0.0` locally lets other machines scrape it."""

    @field_validator("bind_address")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {value[:60]!r}") from None
        return value


class MonitorSpec(SpecModel):
    """Reward-hacking and stability signals, judged every step over the last `window` steps (online
    algorithms). A signal that trips is logged, exported as `kuberlhf_reward_hacking_suspected{signal}` and
    shown as the RLHFJob condition `RewardHackingSuspected` with its evidence; `action: stop` also checkpoints
    and ends the job as failed with that reason."""

    action: Literal["warn", "stop"] = "warn"
    """What a tripped signal does: `warn` (log, metric, condition) or `stop` (also checkpoint and fail)."""
    window: int = Field(default=5, ge=2)
    """Steps each signal averages over; the first `window` steps are the baseline later steps are compared to."""
    length_correlation: float = Field(default=0.5, gt=0, le=1)
    """Length signal, part 1: the mean Pearson correlation between a sample's response length and its reward
    over the window is at least this (the reward pays for length)."""
    length_drift: float = Field(default=0.3, gt=0)
    """Length signal, part 2: the window's mean response length grew by at least this fraction over the
    baseline's. Both parts must hold: a reward may rightly prefer longer answers without the policy drifting."""
    kl_budget: float | None = Field(default=None, gt=0)
    """KL signal: the window's mean sequence KL to the reference (nats) exceeds this. Unset: not checked."""
    kl_growth: float | None = Field(default=None, gt=0)
    """KL-growth signal: the least-squares slope of the sequence KL over the window exceeds this many nats per
    step. Unset: not checked."""
    entropy_collapse: float = Field(default=0.2, gt=0, lt=1)
    """Entropy signal: the window's mean policy entropy fell below this fraction of the baseline's."""
    heldout_drop: float = Field(default=0.5, gt=0)
    """Proxy-divergence signal (needs `data.eval` and `training.evalEverySteps`): the training reward rose
    while the held-out reward fell, both since the first evaluation, the fall by at least this many baseline
    reward standard deviations."""


class LoggingSpec(SpecModel):
    """What a run writes besides metrics.jsonl."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Experiment trackers that get every metrics.jsonl record (TRL's `report_to`) and the samples.jsonl
    samples, from the driver; their files go to `<output.dir>/<tracker>` and are copied to `output.uri` with
    the other logs. `tensorboard`: event files (`tensorboard --logdir` them); a resumed run drops the events
    after its checkpoint's step. `wandb` (the `kuberlhf[wandb]` extra): a Weights & Biases run in project
    `$WANDB_PROJECT` (default `kuberlhf`), offline unless `WANDB_API_KEY` or `WANDB_MODE` says otherwise
    (`wandb sync` it later). `mlflow` (the `kuberlhf[mlflow]` extra): an MLflow run in experiment
    `$MLFLOW_EXPERIMENT_NAME` (default `kuberlhf`) at `$MLFLOW_TRACKING_URI`, else in a SQLite store in
    `<output.dir>/mlflow`. Both name the run after the job (`<job>/<stage>` in a chained job), take the spec
    as its config, and continue the same run when the job resumes."""

    samples_every_steps: int = Field(default=10, ge=0)
    """Every this many steps, append some of the step's samples to `samples.jsonl` (prompt, completion,
    reward, step; and any column the reward function logged with `log_extra`), for reading what the policy
    writes as it trains; `kuberlhf report` shows the newest. 0 = never."""
    samples_per_step: int = Field(default=8, ge=1)
    """Samples written each time: the step's first rows, i.e. all samples of its first prompts."""
