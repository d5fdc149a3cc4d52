"""Worker actors' own metrics, through Ray's metrics API (`ray.util.metrics`): Ray's per-node endpoint serves
them (prefixed `ray_`) next to Ray's own, and the Ray dashboard's metrics view shows them. Names are in
`telemetry.catalog.RAY_METRICS`; `role` and `rank` come from the actor's name, `<job>-<role>-<rank>`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class WorkerMetrics:
    def __init__(self, role: str, rank: str) -> None:
        from ray.util.metrics import Gauge

        from kuberlhf.telemetry.catalog import RAY_METRICS

        self.tags = {"role": role, "rank": rank}
        self.memory = Gauge("kuberlhf_worker_memory_bytes", RAY_METRICS["kuberlhf_worker_memory_bytes"],
                            tag_keys=("role", "rank", "device"))
        self.seconds = Gauge("kuberlhf_worker_call_seconds", RAY_METRICS["kuberlhf_worker_call_seconds"],
                             tag_keys=("role", "rank", "method"))

    def record(self, method: str, seconds: float) -> None:
        import psutil
        import torch

        self.seconds.set(seconds, tags={**self.tags, "method": method})
        self.memory.set(psutil.Process().memory_info().rss, tags={**self.tags, "device": "cpu"})
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.memory.set(torch.cuda.max_memory_allocated(), tags={**self.tags, "device": "cuda"})


_metrics: WorkerMetrics | None = None
_outside_ray = False


def _this_worker() -> WorkerMetrics | None:
    """This process's metrics, or None when it is not a named Ray actor (a role used in-process)."""
    global _metrics, _outside_ray
    if _metrics is None and not _outside_ray:
        import ray

        name = ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None
        parts = name.rsplit("-", 2) if name else []
        if len(parts) == 3:
            _metrics = WorkerMetrics(parts[1], parts[2])
        else:
            _outside_ray = True
    return _metrics


def exports_metrics(method: F) -> F:
    """Decorate a worker's batch method: its duration and the process's memory go to Ray's metrics."""

    @functools.wraps(method)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = method(self, *args, **kwargs)
        metrics = _this_worker()
        if metrics is not None:
            metrics.record(method.__name__, time.perf_counter() - started)
        return result

    return timed  # type: ignore[return-value]
