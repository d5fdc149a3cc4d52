"""The operator's own Prometheus metrics (served on `--metrics-port`, scraped through the chart's Service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PHASES = ("Pending", "Starting", "Running", "Suspended", "Succeeded", "Failed")

JOBS = Gauge("kuberlhf_operator_jobs", "RLHFJobs the operator has seen, by phase", ["phase"])
RECONCILES = Counter("kuberlhf_operator_reconciles_total", "Reconciles of RLHFJobs", ["trigger"])
RECONCILE_ERRORS = Counter("kuberlhf_operator_reconcile_errors_total",
                           "Reconciles that failed with an error (retried by kopf)", ["trigger"])
RECONCILE_SECONDS = Histogram("kuberlhf_operator_reconcile_duration_seconds", "Time to reconcile one RLHFJob",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class PhaseBook:
    """The last phase of every job, so the per-phase gauge counts each job once."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}

    def record(self, key: str, phase: str | None) -> None:
        if phase is None:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase
        for name in PHASES:
            JOBS.labels(phase=name).set(sum(1 for p in self.phases.values() if p == name))
