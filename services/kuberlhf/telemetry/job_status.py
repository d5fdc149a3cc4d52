"""On Kubernetes, a running job writes its progress into its own RLHFJob's status (`status.progress`), which
`kubectl get rlhfjobs` shows as the Step and Reward columns.

The operator puts `KUBERLHF_RLHFJOB=<namespace>/<name>` into the RayJob's runtime environment; without it
(a local `kuberlhf run`) nothing is reported. Writes are merge-patches of the status subresource through the
in-cluster API, at most one every `interval` seconds plus the last step; a failed write is logged once and
never stops training (progress is a convenience, metrics.jsonl and Prometheus are the record).
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any, Callable

ENV = "KUBERLHF_RLHFJOB"
STAGE_LABEL = "kuberlhf.io/stage"
GROUP, VERSION, PLURAL = "kuberlhf.io", "v1alpha1", "rlhfjobs"

Patch = Callable[[str, str, dict[str, Any]], None]  # (namespace, name, body)


def progress_status(step: int, total_steps: int, first_step: int, seconds: float, metrics: dict[str, Any],
                    stage: str | None, now: str) -> dict[str, Any]:
    """`status.progress` after `step` of `total_steps`; the ETA extrapolates the mean time of the
    `step - first_step + 1` steps this process ran in `seconds`."""
    done = max(step - first_step + 1, 1)
    eta = round(seconds / done * max(total_steps - step, 0), 1)
    progress: dict[str, Any] = {
        "step": step, "totalSteps": total_steps, "steps": f"{step}/{total_steps}",
        "percent": round(100.0 * step / total_steps, 1) if total_steps else 0.0,
        "etaSeconds": eta, "eta": human_duration(eta), "updatedAt": now,
    }
    for key, field in (("reward/mean", "reward"), ("kl/sequence", "kl"), ("loss", "loss")):
        if key in metrics and metrics[key] is not None:
            progress[field] = round(float(metrics[key]), 6)
    if stage:
        progress["stage"] = stage
    return progress


def human_duration(seconds: float) -> str:
    """Whole seconds as kubectl prints ages: `35s`, `4m10s`, `1h05m`, `2d03h`."""
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StatusReporter:
    """Reports a run's progress to its RLHFJob (see the module docstring)."""

    def __init__(self, namespace: str, name: str, total_steps: int, first_step: int, stage: str | None,
                 patch: Patch, interval: float = 10.0) -> None:
        self.namespace, self.name = namespace, name
        self.total_steps, self.first_step, self.stage = total_steps, first_step, stage
        self.patch, self.interval = patch, interval
        self.started = time.monotonic()
        self.last_sent = float("-inf")
        self.failed = False

    def report(self, step: int, metrics: dict[str, Any], signals: list[Any] | None = None,
               force: bool = False) -> None:
        """Write progress (and the monitor's `signals`, when it runs) at most every `interval` seconds, on the
        last step, and at once when `force` (a monitor signal started or cleared)."""
        now = time.monotonic()
        if now - self.last_sent < self.interval and step < self.total_steps and not force:
            return
        self.last_sent = now
        status: dict[str, Any] = {"progress": progress_status(step, self.total_steps, self.first_step,
                                                              now - self.started, metrics, self.stage, _now())}
        if signals is not None:  # the operator turns these into the RewardHackingSuspected condition
            status["monitor"] = {"signals": [{"signal": s.name, "step": s.step, "evidence": s.evidence}
                                             for s in signals], "step": step}
        try:
            self.patch(self.namespace, self.name, {"status": status})
        except Exception as err:  # noqa: BLE001 - progress must never stop training
            if not self.failed:
                logging.getLogger("kuberlhf").warning(f"cannot write progress to RLHFJob {self.namespace}/"
                                                      f"{self.name}: {err}")
            self.failed = True


def status_reporter(total_steps: int, first_step: int, labels: dict[str, str]) -> StatusReporter | None:
    """A reporter when the job runs under the operator ($KUBERLHF_RLHFJOB), else None."""
    target = os.environ.get(ENV)
    if not target or "/" not in target:
        return None
    namespace, name = target.split("/", 1)
    return StatusReporter(namespace, name, total_steps, first_step, labels.get(STAGE_LABEL), kubernetes_patch())


def kubernetes_patch() -> Patch:
    """Merge-patch of the status subresource with the pod's service account."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = kubernetes.client.CustomObjectsApi()

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)

    return patch


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
