"""The job's Prometheus endpoint: a step's metrics become the gauges of `telemetry.catalog`.

`JobMetrics` is plain prometheus-client (its own registry, so several jobs in one process never collide).
`MetricsServer` hosts it in a small Ray actor pinned to the driver's node (the Ray head on Kubernetes), so
the online driver and rank 0 of an offline stage's Ray Train workers feed one endpoint, on one port.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kuberlhf.errors import UserError, user_error_in
from kuberlhf.telemetry.catalog import HEALTH_KEYS, JOB_LABELS, OWN_METRICS, STEP_METRICS
MAIN_STAGE = "main"  # the stage label of a job without spec.stages


class JobMetrics:
    """Gauges for one job (stage); `observe_step` sets them from one step's metrics."""

    def __init__(self, labels: dict[str, str], total_steps: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = {name: labels.get(name, "") for name in JOB_LABELS}
        self.gauges: dict[str, Gauge] = {}
        for metric in STEP_METRICS:
            if metric.name not in self.gauges:
                self.gauges[metric.name] = Gauge(metric.name, metric.help, [*JOB_LABELS, *metric.labels],
                                                 registry=self.registry)
        own = {name: Gauge(name, help, list(JOB_LABELS), registry=self.registry)
               for name, help in OWN_METRICS.items()
               if name not in ("kuberlhf_nonfinite_steps_total", "kuberlhf_reward_hacking_suspected")}
        self.step, self.last_step_time = own["kuberlhf_step"], own["kuberlhf_last_step_timestamp_seconds"]
        own["kuberlhf_steps_total"].labels(**self.labels).set(total_steps)
        self.nonfinite = Counter("kuberlhf_nonfinite_steps", OWN_METRICS["kuberlhf_nonfinite_steps_total"],
                                 list(JOB_LABELS), registry=self.registry)
        self.nonfinite.labels(**self.labels)  # exported as 0 from the start, so increase() sees the first one
        self.suspected = Gauge("kuberlhf_reward_hacking_suspected", OWN_METRICS["kuberlhf_reward_hacking_suspected"],
                               [*JOB_LABELS, "signal"], registry=self.registry)

    def observe_step(self, step: int, metrics: dict[str, Any]) -> None:
        for metric in STEP_METRICS:
            value = metrics.get(metric.key)
            if isinstance(value, (int, float)):
                self.gauges[metric.name].labels(**self.labels, **metric.labels).set(value)
        self.step.labels(**self.labels).set(step)
        self.last_step_time.labels(**self.labels).set(time.time())
        if any(isinstance(metrics.get(k), float) and not math.isfinite(metrics[k]) for k in HEALTH_KEYS):
            self.nonfinite.labels(**self.labels).inc()

    def set_signals(self, active: dict[str, bool]) -> None:
        """The monitor's verdict per signal: 1 while it holds, 0 otherwise."""
        for signal, holds in active.items():
            self.suspected.labels(**self.labels, signal=signal).set(1.0 if holds else 0.0)

    def serve(self, port: int, or_any: bool = False, bind: str = "127.0.0.1") -> int:
        """Serve /metrics on `bind`:`port` (0: a free one); returns the port. With `or_any`, a port that is taken
        (another job on this machine has the default) gives way to a free one."""
        try:
            server, _ = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as err:
            if or_any and port != 0:
                return self.serve(0, bind=bind)
            raise UserError(f"spec.metrics.port: cannot serve metrics on port {port} ({err.strerror}); choose "
                            f"another port, 0 for any free one, or set spec.metrics.enabled: false") from None
        return server.server_port


class MetricsServer:
    """The Ray actor around `JobMetrics` (see the module docstring); calls are fire-and-forget."""

    def __init__(self, labels: dict[str, str], total_steps: int, port: int, or_any: bool = False,
                 bind: str = "127.0.0.1") -> None:
        self.metrics = JobMetrics(labels, total_steps)
        self.bind = bind
        self.port = self.metrics.serve(port, or_any, bind)

    def address(self) -> str:
        import ray

        host = ray.util.get_node_ip_address() if self.bind in ("0.0.0.0", "::") else self.bind
        return f"{host}:{self.port}"

    def observe_step(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics.observe_step(step, metrics)

    def set_signals(self, active: dict[str, bool]) -> None:
        self.metrics.set_signals(active)


def job_labels(name: str, namespace: str | None, labels: dict[str, str], algorithm: str) -> dict[str, str]:
    from kuberlhf.telemetry.job_status import STAGE_LABEL

    return {"job": name, "namespace": namespace or "", "stage": labels.get(STAGE_LABEL, MAIN_STAGE),
            "algorithm": algorithm}


def start_metrics_server(labels: dict[str, str], total_steps: int, port: int,
                         or_any: bool = False, bind: str = "127.0.0.1") -> tuple[Any, str]:
    """Start the exporter actor on this (the driver's) node; returns its handle and `host:port`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(MetricsServer).options(num_cpus=0, name=f"{labels['job']}-metrics",
                                              scheduling_strategy=here).remote(labels, total_steps, port,
                                                                                              or_any, bind)
    try:
        return actor, ray.get(actor.address.remote())
    except ray.exceptions.RayError as err:  # the constructor's UserError (port taken) surfaces here
        ray.kill(actor)
        raise user_error_in(err) or err


def bind_address(metrics: Any) -> str:
    """`spec.metrics.bindAddress`, or by default loopback on an embedded local Ray (only this machine may scrape)
    and every interface on a Ray cluster (a KubeRay head pod, which the job's NetworkPolicy guards)."""
    return metrics.bind_address or ("0.0.0.0" if os.environ.get("RAY_ADDRESS") else "127.0.0.1")


def port_may_move(metrics: Any) -> bool:
    """Whether `spec.metrics.port` may give way to a free one when taken: the default may, a named port not."""
    return "port" not in metrics.model_fields_set


def serve_job_metrics(job: Any, total_steps: int, note: Callable[[str], None]) -> Any | None:
    """The job's metrics server (`spec.metrics`), or None when disabled; says where it listens. The default port
    gives way to a free one when taken; a port the job asks for is an error then."""
    metrics = job.spec.metrics
    if not metrics.enabled:
        return None
    labels = job_labels(job.metadata.name, job.metadata.namespace, job.metadata.labels, job.spec.algorithm)
    handle, address = start_metrics_server(labels, total_steps, metrics.port, port_may_move(metrics),
                                           bind_address(metrics))
    moved = metrics.port != 0 and not address.endswith(f":{metrics.port}")
    taken = f" (port {metrics.port} is taken)" if moved else ""
    note(f"Prometheus metrics at http://{address}/metrics{taken}")
    return handle
